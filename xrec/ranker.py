"""The online-learned ranker: the weights of the score's terms, learned from what users were shown
and what they took.

The score is a weighted sum of terms the engine already has (``ranking.FEATURES``: interest
similarity, dislikes, language affinity, freshness, trend, click-through lift, fatigue). The fixed
ranker uses the hand-set weights of the settings. The learned ranker starts from exactly those and
moves them by pairwise logistic regression (SGD): when a user takes an item from an impression, the
item should have scored above the items of the same impression they passed over, with the terms as
they were when the impression was shown. With positions, only the items shown above the taken one
and the one right after it count as passed over (a user who clicks the second item has seen the
first, not necessarily the tenth). An L2 pull toward the hand-set weights keeps a quiet deployment
where it started.

Learning is additive: what a worker learned is a *delta* on the hand-set weights, and the weights in
use are the hand-set ones plus the deltas of every worker (``streams/ranker_weights.py`` shares them
through a compacted topic), so each worker learns from its own users and all rank alike. Served
weights are divided by the interest term's weight, so scores stay on the scale MMR expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Memory of the running mean square of margins, per update (about the last hundred clicks).
MARGIN_MEMORY = 0.99
#: The interest term's weight never falls below this share of its hand-set value when served.
MIN_INTEREST_WEIGHT = 0.05


@dataclass
class ShownItems:
    """A user's latest impression as the ranker saw it: the items, their terms, their positions."""

    item_ids: list[str]
    features: np.ndarray  # (items, FEATURES)
    positions: tuple[int, ...] | None
    taken: set[str] = field(default_factory=set)

    def passed_over(self, item_id: str) -> np.ndarray:
        """The rows of the items passed over when ``item_id`` was taken (skip-above and next with positions)."""
        index = self.item_ids.index(item_id)
        others = [j for j, other in enumerate(self.item_ids) if other not in self.taken and j != index]
        if self.positions is not None:
            at = self.positions[index]
            below = [self.positions[j] for j in others if self.positions[j] > at]
            nearest = min(below) if below else None
            others = [j for j in others if self.positions[j] < at or self.positions[j] == nearest]
        return np.asarray(others, np.int64)

    def to_json(self) -> dict[str, Any]:
        """For the profile's bytes (so it follows its user through restarts and partition moves)."""
        return {
            "i": self.item_ids,
            "f": self.features.astype(np.float32).tolist(),
            "p": list(self.positions) if self.positions is not None else None,
            "k": sorted(self.taken),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ShownItems:
        positions = obj.get("p")
        return cls(
            [str(i) for i in obj["i"]],
            np.asarray(obj["f"], np.float64).reshape(len(obj["i"]), -1),
            tuple(int(p) for p in positions) if positions is not None else None,
            {str(i) for i in obj.get("k", ())},
        )


class OnlineRanker:
    """Hand-set weights plus learned deltas (this worker's and the others'), updated pair by pair."""

    def __init__(self, initial: np.ndarray, learning_rate: float, l2: float, frozen: bool = False) -> None:
        self.initial = initial.astype(np.float64)
        self.learning_rate = learning_rate
        self.l2 = l2
        self.frozen = frozen
        self.own = np.zeros_like(self.initial)  # what this worker learned
        self.others = np.zeros_like(self.initial)  # the sum of every other worker's delta
        self.updates = 0  # pairs this worker learned from
        self.margin_square: float | None = None  # running mean square of score margins (``learn``)

    @property
    def raw(self) -> np.ndarray:
        return self.initial + self.own + self.others

    def weights(self) -> np.ndarray:
        """The weights to score with: the learned ones, scaled so the interest term's weight is its hand-set one."""
        raw = self.raw
        interest = max(float(raw[0]), MIN_INTEREST_WEIGHT * float(self.initial[0]))
        return raw * (self.initial[0] / interest)

    def set_others(self, deltas: Mapping[str, np.ndarray]) -> None:
        """The deltas the other workers published (read from the shared topic)."""
        total = np.zeros_like(self.initial)
        for delta in deltas.values():
            if delta.shape == total.shape and np.all(np.isfinite(delta)):
                total += delta
        self.others = total

    def taken(self, shown: ShownItems | None, item_id: str) -> bool:
        """A user took an item: learn from it if their latest impression (``shown``, kept in their profile)
        showed it. True if it did."""
        if shown is None or item_id not in shown.item_ids or item_id in shown.taken:
            return False
        passed = shown.passed_over(item_id)
        shown.taken.add(item_id)
        if not len(passed) or self.frozen or shown.features.shape[1] != len(self.initial):
            return False  # (terms of another version's ranker: nothing to learn from them)
        self.learn(shown.features[shown.item_ids.index(item_id)], shown.features[passed])
        return True

    def learn(self, taken: np.ndarray, passed: np.ndarray) -> None:
        """One step of pairwise logistic regression: ``taken`` should outscore each row of ``passed``.

        Margins are divided by their running RMS. The scores of one impression's items differ by
        hundredths, and a logistic fed margins that small is linear: every pair pulls alike, and the
        weights drift toward the mean feature difference between taken and passed items (set against
        L2) instead of toward ordering the pairs right (on MIND that ranked worse than not learning)."""
        diff = taken[None, :] - passed
        margin = diff @ self.raw
        square = float(np.mean(margin**2))
        if self.margin_square is None:
            self.margin_square = square
        self.margin_square = MARGIN_MEMORY * self.margin_square + (1.0 - MARGIN_MEMORY) * square
        sharpness = 1.0 / max(float(np.sqrt(self.margin_square)), 1e-6)
        pull = 1.0 / (1.0 + np.exp(np.clip(sharpness * margin, -30, 30)))  # 1 − σ: how wrong the order was
        gradient = sharpness * (pull[:, None] * diff).mean(axis=0) - self.l2 * self.own
        self.own = self.own + self.learning_rate * gradient
        self.updates += 1

    def reset(self) -> None:
        self.margin_square = None
        self.own = np.zeros_like(self.initial)
        self.others = np.zeros_like(self.initial)
        self.updates = 0
