"""What users were shown and passed over: real-time click-through rates per item.

An impression event says which items a user was shown; a click (or any positive event) says which
one they took. ``ClickThrough`` keeps, per item, decayed counts of both and turns them into a rate
shrunk toward its language's rate (and that toward the global one), so an item shown three times
and clicked once is not ranked above one shown a thousand times and clicked a hundred. Ranking uses
the *lift*, log(item rate / language rate): 0 for an item nobody has been shown yet, and 0 for every
item on a deployment that sends no impressions, so then nothing changes.

Counts decay with a half-life in event time (what was clicked last week says little about today's
news). Each worker counts its own users' impressions and clicks (``own``) and publishes what changed
(``take_changes``); it adds what the other workers publish (``report``), so rates are made from every
user's impressions, and a restarted worker takes back what it had published (``restore_own``).
``streams/click_through.py`` carries the counts through a compacted topic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Rate assumed before any impression was counted (a typical feed's click-through rate).
PRIOR_RATE = 0.05
#: What a count is of: one item, one language, or everything (``name`` ""); the published record's kind.
KINDS = ("item", "lang", "total")
#: Counts are re-based to the latest event when their growth factor passes e**this (before floats overflow).
REBASE_AT_GROWTH = 50.0


@dataclass
class Counts:
    shown: float = 0.0
    clicked: float = 0.0

    def scale(self, factor: float) -> None:
        self.shown *= factor
        self.clicked *= factor


@dataclass(frozen=True)
class PublishedCounts:
    """One count as a worker publishes it: decayed impressions and clicks as of event time ``at``;
    ``None`` counts say the worker counts this no more (the item was deleted or dropped)."""

    kind: str
    name: str
    counts: Counts | None
    at: int


class _Tallies:
    """Counts by kind and name, in the frame of the owner's ``epoch``."""

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[str, Counts]] = {kind: {} for kind in KINDS}

    def get(self, kind: str, name: str) -> Counts | None:
        return self.by_kind[kind].get(name)

    def add(self, kind: str, name: str, shown: float, clicked: float) -> None:
        counts = self.by_kind[kind].setdefault(name, Counts())
        counts.shown += shown
        counts.clicked += clicked

    def pop(self, kind: str, name: str) -> Counts | None:
        return self.by_kind[kind].pop(name, None)

    def scale(self, factor: float) -> None:
        for table in self.by_kind.values():
            for counts in table.values():
                counts.scale(factor)


class ClickThrough:
    """Decayed impressions and clicks per item, per language and overall; rates shrunk to a prior."""

    def __init__(self, half_life_hours: float, prior_impressions: float, max_items: int = 100_000) -> None:
        self.decay_per_ms = math.log(2) / (half_life_hours * 3_600_000.0)
        self.prior_impressions = prior_impressions
        self.max_items = max_items
        self.merged = _Tallies()  # every worker's counts: what rates are made of
        self.own = _Tallies()  # this worker's: what it publishes
        self.reported: dict[tuple[str, str], dict[str, Counts]] = {}  # (kind, name) -> other worker -> counts
        self.changed: set[tuple[str, str]] = set()  # own counts not yet taken by ``take_changes``
        self.epoch = 0  # counts are stored relative to this time, so adding never decays everything
        self.latest = 0  # the latest event time counted: rates are taken as of then

    @property
    def impressions(self) -> float:
        """Every worker's decayed impressions (in the stored frame): 0 until the first one."""
        total = self.merged.get("total", "")
        return total.shown if total else 0.0

    # --- this worker's events ------------------------------------------------------------------
    def shown(self, item_ids: Sequence[str], langs: Sequence[str], ts: int) -> None:
        """One impression: each item shown once."""
        grow = self._growth(ts)
        for item_id, lang in zip(item_ids, langs, strict=True):
            self._count("item", item_id, grow, 0.0)
            self._count("lang", lang, grow, 0.0)
        self._count("total", "", grow * len(item_ids), 0.0)
        self._bound_items()

    def clicked(self, item_id: str, lang: str, ts: int) -> None:
        """A positive event on an item. Counted only once the item has been shown (here or at another
        worker): a deployment without impressions (or a click from search) must not make rates out of
        clicks alone."""
        if self.merged.get("item", item_id) is None:
            return
        grow = self._growth(ts)
        self._count("item", item_id, 0.0, grow)
        self._count("lang", lang, 0.0, grow)
        self._count("total", "", 0.0, grow)

    def discard(self, item_id: str) -> None:
        """The item left the catalog: its counts go, everywhere (published as gone)."""
        self.merged.pop("item", item_id)
        self.reported.pop(("item", item_id), None)
        if self.own.pop("item", item_id) is not None:
            self.changed.add(("item", item_id))

    # --- sharing with other workers ------------------------------------------------------------
    def take_changes(self) -> list[PublishedCounts]:
        """This worker's counts that changed since the last call, to publish (as of its latest event)."""
        now = math.exp(-self.decay_per_ms * (self.latest - self.epoch))
        out = []
        for kind, name in self.changed:
            counts = self.own.get(kind, name)
            as_of_now = None if counts is None else Counts(counts.shown * now, counts.clicked * now)
            out.append(PublishedCounts(kind, name, as_of_now, self.latest))
        self.changed.clear()
        return out

    def put_back(self, changes: Sequence[PublishedCounts]) -> None:
        """Changes that could not be published: taken again by the next ``take_changes``."""
        self.changed.update((r.kind, r.name) for r in changes)

    def report(self, source: str, record: PublishedCounts) -> None:
        """Another worker's latest counts of one thing, replacing what it reported before."""
        if record.kind not in KINDS:
            return
        key = (record.kind, record.name)
        by_source = self.reported.setdefault(key, {})
        before = by_source.pop(source, None)
        if before is not None:
            self.merged.add(record.kind, record.name, -before.shown, -before.clicked)
        if record.counts is None:
            if not by_source:
                del self.reported[key]
            return
        counts = self._into_frame(record)
        by_source[source] = counts
        self.merged.add(record.kind, record.name, counts.shown, counts.clicked)
        if record.kind == "item":
            self._bound_items()

    def restore_own(self, record: PublishedCounts) -> None:
        """What this worker published before it restarted: added to what it has counted since."""
        if record.kind not in KINDS or record.counts is None:
            return
        counts = self._into_frame(record)
        self._count(record.kind, record.name, counts.shown, counts.clicked)

    # --- rates ---------------------------------------------------------------------------------
    def lift(self, item_ids: Sequence[str], langs: Sequence[str]) -> np.ndarray:
        """log(rate of each item / rate of its language), each rate shrunk by ``prior_impressions``."""
        out = np.zeros(len(item_ids))
        rates = self._rates()
        if rates is None:
            return out
        items = self.merged.by_kind["item"]
        for j, (item_id, lang) in enumerate(zip(item_ids, langs, strict=True)):
            counts = items.get(item_id)
            if counts is not None:
                base = rates.of_language(lang)
                out[j] = math.log(rates.shrunk(counts, base) / base)
        return out

    def explain(self, item_id: str, lang: str) -> dict[str, float | str | None]:
        """An item's counts (all workers' and this one's, decayed to the latest event) and its rates."""
        rates = self._rates()
        counts = self.merged.get("item", item_id) or Counts()
        own = self.own.get("item", item_id) or Counts()
        now = rates.now if rates else 1.0
        out: dict[str, float | str | None] = {
            "item_id": item_id,
            "lang": lang,
            "impressions": counts.shown * now,
            "clicks": counts.clicked * now,
            "impressions_here": own.shown * now,
            "clicks_here": own.clicked * now,
            "rate": None,
            "language_rate": None,
            "overall_rate": None,
            "lift": 0.0,
        }
        if rates is not None:
            base = rates.of_language(lang)
            rate = rates.shrunk(counts, base)
            out.update(rate=rate, language_rate=base, overall_rate=rates.overall, lift=math.log(rate / base))
        return out

    def _rates(self) -> _Rates | None:
        """The rates as of the latest event (None before any impression)."""
        total = self.merged.get("total", "")
        if total is None or total.shown <= 0:
            return None
        return _Rates(self, total, math.exp(-self.decay_per_ms * (self.latest - self.epoch)))

    # --- internals -----------------------------------------------------------------------------
    def _count(self, kind: str, name: str, shown: float, clicked: float) -> None:
        self.own.add(kind, name, shown, clicked)
        self.merged.add(kind, name, shown, clicked)
        self.changed.add((kind, name))

    def _bound_items(self) -> None:
        """At most ``max_items`` items (with some slack, so this runs rarely): the least shown go."""
        items = self.merged.by_kind["item"]
        if len(items) > self.max_items * 1.2:
            for item_id in sorted(items, key=lambda i: items[i].shown)[: len(items) - self.max_items]:
                self.discard(item_id)

    def _into_frame(self, record: PublishedCounts) -> Counts:
        """Counts published as of ``record.at`` in this worker's frame."""
        assert record.counts is not None
        if not self.epoch:
            self.epoch = self.latest = record.at
        self._growth(record.at)
        factor = math.exp(self.decay_per_ms * (record.at - self.epoch))
        return Counts(record.counts.shown * factor, record.counts.clicked * factor)

    def _growth(self, ts: int) -> float:
        """The weight of an event at ``ts`` relative to ``epoch`` (re-based before exp overflows)."""
        if not self.epoch:
            self.epoch = self.latest = ts
        self.latest = max(self.latest, ts)
        growth = self.decay_per_ms * (ts - self.epoch)
        if growth > REBASE_AT_GROWTH:
            factor = math.exp(-growth)
            for tallies in (self.merged, self.own):
                tallies.scale(factor)
            for by_source in self.reported.values():
                for counts in by_source.values():
                    counts.scale(factor)
            self.epoch = ts
            growth = 0.0
        return math.exp(growth)


class _Rates:
    """Rates with the counts taken as of the latest event (so the prior weighs the same whenever the
    epoch was), each shrunk toward the next broader one by ``prior_impressions``."""

    def __init__(self, ctr: ClickThrough, total: Counts, now: float) -> None:
        self.ctr = ctr
        self.now = now
        self.m = ctr.prior_impressions
        self.overall = (total.clicked * now + self.m * PRIOR_RATE) / (total.shown * now + self.m)
        self.by_lang: dict[str, float] = {}

    def shrunk(self, counts: Counts, toward: float) -> float:
        return (counts.clicked * self.now + self.m * toward) / (counts.shown * self.now + self.m)

    def of_language(self, lang: str) -> float:
        rate = self.by_lang.get(lang)
        if rate is None:
            rate = self.by_lang[lang] = self.shrunk(self.ctr.merged.get("lang", lang) or Counts(), self.overall)
        return rate
