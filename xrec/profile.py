"""UserProfile: a user's interests as up to K decayed centroids, plus dislikes, seen items, languages.

PinnerSage-style: each positive event joins the nearest interest (cosine above a threshold) or
starts a new one; an interest's importance is Σ w·e^(−λΔt) in event time, so old interests fade
without a clock. Negative events feed a decayed "dislike" direction and weaken the interest they hit.
Profiles are stored as compact bytes (float32 arrays behind a small header), never JSON floats.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import orjson

from xrec.config import Settings
from xrec.langid import UNDETERMINED
from xrec.ranker import ShownItems
from xrec.space import NeutralSpace

K = TypeVar("K", str, bytes)

_MAGIC = b"XP1"
_HEADER = struct.Struct("<3sBHI")  # magic, version, dim, metadata length


_DEFAULTS = Settings()  # the one source of every default; ProfileParams() equals the settings' defaults


@dataclass(frozen=True)
class ProfileParams:
    """The knobs of the user model, taken from Settings."""

    k: int = _DEFAULTS.interests_k
    threshold: float = _DEFAULTS.interest_threshold
    half_life_hours: float = _DEFAULTS.half_life_hours
    seen_max: int = _DEFAULTS.seen_max
    disliked_max: int = 200

    @classmethod
    def from_settings(cls, s: Settings) -> ProfileParams:
        return cls(
            k=s.interests_k, threshold=s.interest_threshold, half_life_hours=s.half_life_hours, seen_max=s.seen_max
        )

    @property
    def decay_per_ms(self) -> float:
        return math.log(2) / (self.half_life_hours * 3_600_000.0)


@dataclass
class UserProfile:
    """One user's state. Vectors are float32 and L2-normalized; weights are as of ``last_ts``."""

    dim: int
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    anchors: list[str] = field(default_factory=list)  # latest item that fed each interest ("because")
    negative: np.ndarray | None = None  # decayed sum of disliked directions
    negative_weight: float = 0.0
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    disliked: OrderedDict[str, None] = field(default_factory=OrderedDict)
    languages: dict[str, float] = field(default_factory=dict)
    #: Items shown to the user (impression events) and not taken since, with how often: fatigue.
    shown: OrderedDict[str, int] = field(default_factory=OrderedDict)
    #: The latest impression as the learned ranker saw it, for the clicks that follow (None: none, or no
    #: variant learns). Kept here so it follows its user through restarts and partition moves.
    last_impression: ShownItems | None = None
    event_ids: OrderedDict[bytes, None] = field(default_factory=OrderedDict)  # 8-byte event fingerprints
    last_ts: int = 0
    events: int = 0
    #: Interests and dislikes are in the neutral space (``xrec.space``). Profiles written before it
    #: existed hold raw encoder vectors; the engine moves them when it loads one.
    neutral: bool = True

    def __post_init__(self) -> None:
        if self.centroids.size == 0:
            self.centroids = np.zeros((0, self.dim), np.float32)

    # --- reading -----------------------------------------------------------------------------
    @property
    def has_interests(self) -> bool:
        return bool(len(self.weights)) and float(self.weights.max()) > 1e-9

    def importance(self, at_ts: int, params: ProfileParams) -> np.ndarray:
        """Interest weights decayed to ``at_ts`` (event time)."""
        return self.weights * _decay(at_ts - self.last_ts, params)

    def negative_direction(self) -> tuple[np.ndarray | None, float]:
        """Unit dislike direction and its strength in [0, 1) (saturating in accumulated weight)."""
        if self.negative is None or self.negative_weight <= 1e-9:
            return None, 0.0
        norm = float(np.linalg.norm(self.negative))
        if norm == 0.0:
            return None, 0.0
        return (self.negative / norm).astype(np.float32), 1.0 - math.exp(-self.negative_weight)

    def language_affinity(self) -> dict[str, float]:
        """Share of recent positive attention per item language (sums to 1)."""
        total = sum(self.languages.values())
        return {lang: w / total for lang, w in self.languages.items()} if total > 0 else {}

    def times_shown(self, item_ids: list[str]) -> np.ndarray:
        """How often each item was shown to this user without being taken."""
        return np.asarray([self.shown.get(i, 0) for i in item_ids], np.float64)

    def excluded_ids(self) -> list[str]:
        return list(self.seen) + [i for i in self.disliked if i not in self.seen]

    # --- updating ----------------------------------------------------------------------------
    def move_to(self, space: NeutralSpace) -> None:
        """Carry a profile of raw encoder vectors into the neutral space. Which language each interest
        came from is not kept, so its language offsets are projected out (``NeutralSpace.neutral``)."""
        if not space.active:
            return
        if len(self.centroids):
            self.centroids = space.neutral(self.centroids, [UNDETERMINED] * len(self.centroids))
        if self.negative is not None:
            norm = float(np.linalg.norm(self.negative))
            self.negative = space.neutral(self.negative, [UNDETERMINED])[0] * np.float32(norm)
        self.neutral = True

    def remember_event(self, event_id: str, window: int) -> bool:
        """Record an event id; False if it was already seen (a redelivery to absorb).

        Kept in the profile, so the dedup window moves with the user's partition and survives
        restarts through the changelog, exactly like the state it protects.
        """
        fingerprint = event_fingerprint(event_id)
        if fingerprint in self.event_ids:
            return False
        self._remember(self.event_ids, fingerprint, window)
        return True

    def was_shown(self, item_ids: tuple[str, ...], params: ProfileParams) -> None:
        """An impression: each item not taken yet is one more time shown (the oldest forgotten first)."""
        for item_id in item_ids:
            if item_id in self.seen:
                continue
            self.shown[item_id] = self.shown.pop(item_id, 0) + 1
            while len(self.shown) > params.seen_max:
                self.shown.popitem(last=False)

    def observe(
        self,
        vector: np.ndarray,
        weight: float,
        ts: int,
        item_id: str,
        item_lang: str | None,
        params: ProfileParams,
        dislike: bool = False,
    ) -> None:
        """Apply one event: ``weight`` > 0 strengthens an interest, < 0 pushes away from ``vector``."""
        w = self._advance_clock(ts, params) * abs(weight)
        self.events += 1
        self._remember(self.seen, item_id, params.seen_max)
        self.shown.pop(item_id, None)  # taken (or refused): no longer passed over
        if weight > 0:
            self._add_interest(vector, w, item_id, params)
            if item_lang:
                self.languages[item_lang] = self.languages.get(item_lang, 0.0) + w
        elif weight < 0:
            self._add_negative(vector, w, params)
            if dislike:
                self._remember(self.disliked, item_id, params.disliked_max)

    def _advance_clock(self, ts: int, params: ProfileParams) -> float:
        """Decay stored weights to ``ts``; returns the factor for the new event (< 1 if it is late)."""
        if ts >= self.last_ts:
            factor = _decay(ts - self.last_ts, params)
            if self.last_ts and factor < 1.0:
                self.weights = self.weights * factor
                self.negative_weight *= factor
                if self.negative is not None:
                    self.negative = (self.negative * factor).astype(np.float32)
                self.languages = {k: v * factor for k, v in self.languages.items() if v * factor > 1e-6}
            self.last_ts = ts
            return 1.0
        return _decay(self.last_ts - ts, params)  # out-of-order: age the event instead of the profile

    def _add_interest(self, vector: np.ndarray, w: float, item_id: str, params: ProfileParams) -> None:
        if len(self.weights):
            sims = self.centroids @ vector
            best = int(np.argmax(sims))
            if sims[best] >= params.threshold or params.k == 1:  # one interest: the mean of history
                self._blend(best, vector, w)
                self.anchors[best] = item_id
                return
            if len(self.weights) >= params.k:
                self._make_room()
        self.centroids = np.vstack([self.centroids, vector[None, :].astype(np.float32)])
        self.weights = np.append(self.weights, w)
        self.anchors.append(item_id)

    def _blend(self, index: int, vector: np.ndarray, w: float) -> None:
        mass = float(self.weights[index])
        merged = self.centroids[index] * mass + vector * w
        norm = float(np.linalg.norm(merged))
        if norm > 0:
            self.centroids[index] = merged / norm
        self.weights[index] = mass + w

    def _make_room(self) -> None:
        """Full: drop a faded interest (< 5% of the strongest), else merge the two most similar."""
        weakest = int(np.argmin(self.weights))
        if self.weights[weakest] < 0.05 * float(self.weights.max()):
            self._drop(weakest)
            return
        sims = self.centroids @ self.centroids.T
        np.fill_diagonal(sims, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        keep, gone = (a, b) if self.weights[a] >= self.weights[b] else (b, a)
        self._blend(int(keep), self.centroids[gone].copy(), float(self.weights[gone]))
        self._drop(int(gone))

    def _drop(self, index: int) -> None:
        self.centroids = np.delete(self.centroids, index, axis=0)
        self.weights = np.delete(self.weights, index)
        del self.anchors[index]

    def _add_negative(self, vector: np.ndarray, w: float, params: ProfileParams) -> None:
        base = self.negative if self.negative is not None else np.zeros(self.dim, np.float32)
        self.negative = (base + vector * w).astype(np.float32)
        self.negative_weight += w
        if len(self.weights):  # a dislike also weakens the interest it falls into
            sims = self.centroids @ vector
            best = int(np.argmax(sims))
            if sims[best] >= params.threshold:
                self.weights[best] = max(0.0, float(self.weights[best]) - w * float(sims[best]))

    @staticmethod
    def _remember(bounded: OrderedDict[K, None], item_id: K, limit: int) -> None:
        bounded[item_id] = None
        bounded.move_to_end(item_id)
        while len(bounded) > limit:
            bounded.popitem(last=False)

    # --- bytes -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = orjson.dumps(
            {
                "w": self.weights.tolist(),
                "a": self.anchors,
                "nw": self.negative_weight,
                "s": list(self.seen),
                "d": list(self.disliked),
                "x": len(self.event_ids),
                "l": self.languages,
                "sh": list(self.shown.items()),
                "li": self.last_impression.to_json() if self.last_impression is not None else None,
                "t": self.last_ts,
                "e": self.events,
                "n": self.negative is not None,
                "sp": 1 if self.neutral else 0,
            }
        )
        parts = [_HEADER.pack(_MAGIC, 1, self.dim, len(meta)), meta, self.centroids.astype("<f4").tobytes()]
        if self.negative is not None:
            parts.append(self.negative.astype("<f4").tobytes())
        parts.extend(self.event_ids)  # fixed 8-byte fingerprints, oldest first
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserProfile:
        magic, version, dim, meta_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != 1:
            raise ValueError("not a serialized UserProfile (bad magic or version)")
        offset = _HEADER.size
        meta = orjson.loads(data[offset : offset + meta_len])
        offset += meta_len
        k = len(meta["w"])
        centroids = np.frombuffer(data, "<f4", count=k * dim, offset=offset).reshape(k, dim).copy()
        offset += k * dim * 4
        negative = np.frombuffer(data, "<f4", count=dim, offset=offset).copy() if meta["n"] else None
        offset += dim * 4 if meta["n"] else 0
        event_ids = [data[offset + 8 * i : offset + 8 * (i + 1)] for i in range(meta["x"])]
        return cls(
            dim=dim,
            centroids=centroids,
            weights=np.asarray(meta["w"], np.float64),
            anchors=list(meta["a"]),
            negative=negative,
            negative_weight=float(meta["nw"]),
            seen=OrderedDict.fromkeys(meta["s"]),
            disliked=OrderedDict.fromkeys(meta["d"]),
            event_ids=OrderedDict.fromkeys(event_ids),
            languages=dict(meta["l"]),
            shown=OrderedDict((str(i), int(n)) for i, n in meta.get("sh", ())),
            last_impression=ShownItems.from_json(meta["li"]) if meta.get("li") else None,
            last_ts=int(meta["t"]),
            events=int(meta["e"]),
            neutral=bool(meta.get("sp", 0)),
        )


def event_fingerprint(event_id: str) -> bytes:
    """Short, fixed-size (8-byte) form of an event id, kept per profile for duplicate detection."""
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def _decay(delta_ms: int, params: ProfileParams) -> float:
    return math.exp(-params.decay_per_ms * max(0, delta_ms))


def event_weight(event_type: str, rating: float | None, weights: dict[str, float]) -> float:
    """Signed strength of an event; a review's rating (1–5) sets its sign and scale (3 is neutral)."""
    base = weights[event_type]
    if event_type == "review" and rating is not None:
        return abs(base) * (rating - 3.0) / 2.0
    return base


def review_vector(item_vector: np.ndarray, text_vector: np.ndarray | None, text_weight: float) -> np.ndarray:
    """A review's direction: the item, moved toward what the user wrote about it."""
    if text_vector is None:
        return item_vector
    mixed = (1.0 - text_weight) * item_vector + text_weight * text_vector
    norm = float(np.linalg.norm(mixed))
    return (mixed / norm).astype(np.float32) if norm > 0 else item_vector
