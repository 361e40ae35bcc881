"""What users were shown and passed over: real-time click-through rates per item.

An impression event says which items a user was shown; a click (or any positive event) says which
one they took. ``ClickThrough`` keeps, per item, decayed counts of both and turns them into a rate
shrunk toward its language's rate (and that toward the global one), so an item shown three times
and clicked once is not ranked above one shown a thousand times and clicked a hundred. Ranking uses
the *lift*, log(item rate / language rate): 0 for an item nobody has been shown yet, and 0 for every
item on a deployment that sends no impressions, so then nothing changes.

Counts decay with a half-life in event time (what was clicked last week says little about today's
news) and are kept in the worker, like the trending counts: each worker sees the impressions of its
users' partitions, a sample of everyone's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Rate assumed before any impression was counted (a typical feed's click-through rate).
PRIOR_RATE = 0.05


@dataclass
class _Counts:
    shown: float = 0.0
    clicked: float = 0.0


class ClickThrough:
    """Decayed impressions and clicks per item, per language and overall; rates shrunk to a prior."""

    def __init__(self, half_life_hours: float, prior_impressions: float, max_items: int = 100_000) -> None:
        self.decay_per_ms = math.log(2) / (half_life_hours * 3_600_000.0)
        self.prior_impressions = prior_impressions
        self.max_items = max_items
        self.items: dict[str, _Counts] = {}
        self.langs: dict[str, _Counts] = {}
        self.total = _Counts()
        self.epoch = 0  # counts are stored relative to this time, so adding never decays everything

    def shown(self, item_ids: Sequence[str], langs: Sequence[str], ts: int) -> None:
        """One impression: each item shown once."""
        grow = self._growth(ts)
        for item_id, lang in zip(item_ids, langs, strict=True):
            self.items.setdefault(item_id, _Counts()).shown += grow
            self.langs.setdefault(lang, _Counts()).shown += grow
        self.total.shown += grow * len(item_ids)
        if len(self.items) > self.max_items * 1.2:
            for item_id in sorted(self.items, key=lambda i: self.items[i].shown)[: len(self.items) - self.max_items]:
                del self.items[item_id]

    def clicked(self, item_id: str, lang: str, ts: int) -> None:
        """A positive event on an item. Counted only once the item has been shown: a deployment without
        impressions (or a click from search) must not make rates out of clicks alone."""
        counts = self.items.get(item_id)
        if counts is None:
            return
        grow = self._growth(ts)
        counts.clicked += grow
        self.langs.setdefault(lang, _Counts()).clicked += grow
        self.total.clicked += grow

    def discard(self, item_id: str) -> None:
        self.items.pop(item_id, None)

    def lift(self, item_ids: Sequence[str], langs: Sequence[str]) -> np.ndarray:
        """log(rate of each item / rate of its language), each rate shrunk by ``prior_impressions``."""
        out = np.zeros(len(item_ids))
        if not self.total.shown:
            return out
        m = self.prior_impressions
        overall = (self.total.clicked + m * PRIOR_RATE) / (self.total.shown + m)
        by_lang: dict[str, float] = {}
        for j, (item_id, lang) in enumerate(zip(item_ids, langs, strict=True)):
            counts = self.items.get(item_id)
            if counts is None:
                continue
            base = by_lang.get(lang)
            if base is None:
                lc = self.langs.get(lang, _Counts())
                base = by_lang[lang] = (lc.clicked + m * overall) / (lc.shown + m)
            out[j] = math.log((counts.clicked + m * base) / (counts.shown + m) / base)
        return out

    def _growth(self, ts: int) -> float:
        """The weight of an event at ``ts`` relative to ``epoch`` (re-based before exp overflows)."""
        if not self.epoch:
            self.epoch = ts
        growth = self.decay_per_ms * (ts - self.epoch)
        if growth > 50:
            factor = math.exp(-growth)
            for counts in (*self.items.values(), *self.langs.values(), self.total):
                counts.shown *= factor
                counts.clicked *= factor
            self.epoch = ts
            growth = 0.0
        return math.exp(growth)
