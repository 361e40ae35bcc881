"""One language-neutral space: encoder vectors with the language-identity component taken out.

Multilingual encoders place a text by its subject *and* by its language, and left alone the language
wins: multilingual-e5-small puts every text in a narrow cone (the mean of unit news vectors has norm
0.91) whose direction also depends on the language (the mean English and the mean Mandarin news
vector meet at 0.93). On the same 1,110 MIND news in English and in Mandarin, a reader's nearest
items by raw cosine were in the reader's own language 99.7% of the time. Subtracting each
language's mean item vector (its *centre*) removes both the common direction and the language's own
offset; measured on real data (EVALUATION.md, "Cross-lingual"), it is what lets lists cross languages
and it makes them more on-topic too.

How the space is used, so that nothing in the store has to change when the statistics do:

- The store keeps item vectors as encoded. An item's neutral vector, ``unit(x − centre(lang))``, is
  computed when it is needed (a profile update, ranking, MMR) from the current statistics.
- Profiles are built from neutral vectors, so interests live in the neutral space.
- A store query is the interest with the span of the language offsets (centre_L − mean, for every
  language) projected out (``query_directions``). For such a direction d, ``x·d`` differs from
  ``(x − centre_L)·d`` by the same constant for every language L, so the store's plain cosine
  search ranks candidates as the centred comparison would, on the exact mirror, Qdrant's HNSW index
  and a Qdrant server alike; the engine then re-scores the candidates by their neutral vectors. On
  both cross-lingual dev catalogs, re-scoring the top 50 found this way gave exactly the lists of a
  full centred scan.
- A vector of unknown language (``und``) is centred by the catalog mean and projected: the language
  offsets the space knows are removed without a label.

Statistics (``LanguageStats``: per language, the number of items and the sum of their vectors) are
additive, so they travel as deltas and per-partition parts and are summed; who keeps and shares them
is ``streams/``' business (a compacted topic). A language with few items is centred mostly by the
catalog's mean: its centre is (sum + k·mean) / (count + k) with k = ``PRIOR_ITEMS``. Below
``MIN_ITEMS`` items in all, no centre is trusted and vectors are compared as encoded.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from xrec.langid import UNDETERMINED

SpaceMode = Literal["language", "catalog", "raw"]

#: Items below which no mean is trusted: on MIND, 100 items put the catalog mean within 4% of the full
#: catalog's, 10 items within 14% (and the mean of a few items is mostly their own subject).
MIN_ITEMS = 100
#: Weight of the catalog mean in a language's centre, in items. Chosen on the dev catalogs with the
#: centres estimated from 5, 10, 20, 50 and all items per language: k = 5 was best or within 0.01 of the
#: best in every row on both (EVALUATION.md, "Few items in a language").
PRIOR_ITEMS = 5.0
#: Language offsets whose singular value is below this share of the largest are noise, not a language.
_BASIS_TOLERANCE = 1e-3


@dataclass
class LanguageStats:
    """Per language, the number of items and the float64 sum of their unit vectors.

    Additive: the stats of a catalog are the sum of its parts' (partitions, deltas), and an item that
    changes is one ``remove`` and one ``add``.
    """

    dim: int
    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, lang: str, vectors: np.ndarray, sign: int = 1) -> None:
        rows = np.asarray(vectors, np.float64).reshape(-1, self.dim)
        if not len(rows):
            return
        self.counts[lang] = self.counts.get(lang, 0) + sign * len(rows)
        total = self.sums.get(lang)
        self.sums[lang] = (np.zeros(self.dim) if total is None else total) + sign * rows.sum(axis=0)
        if self.counts[lang] <= 0:  # back to nothing: drop rounding residue with it
            del self.counts[lang], self.sums[lang]

    def remove(self, lang: str, vectors: np.ndarray) -> None:
        self.add(lang, vectors, sign=-1)

    def merge(self, other: LanguageStats) -> None:
        for lang, count in other.counts.items():
            self.counts[lang] = self.counts.get(lang, 0) + count
            total = self.sums.get(lang)
            self.sums[lang] = other.sums[lang].copy() if total is None else total + other.sums[lang]
            if self.counts[lang] <= 0:
                del self.counts[lang], self.sums[lang]

    @classmethod
    def total(cls, dim: int, parts: Iterable[LanguageStats]) -> LanguageStats:
        out = cls(dim)
        for part in parts:
            out.merge(part)
        return out

    @property
    def items(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return bool(self.counts)

    # --- bytes: a compacted-topic value -------------------------------------------------------------
    _HEADER = struct.Struct("<3sBHH")  # magic, version, dim, languages
    _MAGIC = b"XLS"

    def to_bytes(self) -> bytes:
        parts = [self._HEADER.pack(self._MAGIC, 1, self.dim, len(self.counts))]
        for lang in sorted(self.counts):
            tag = lang.encode()
            parts += [struct.pack("<B", len(tag)), tag, struct.pack("<q", self.counts[lang])]
            parts.append(np.asarray(self.sums[lang], "<f8").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> LanguageStats:
        magic, version, dim, languages = cls._HEADER.unpack_from(data)
        if magic != cls._MAGIC or version != 1:
            raise ValueError("not serialized LanguageStats (bad magic or version)")
        out = cls(dim)
        offset = cls._HEADER.size
        for _ in range(languages):
            (length,) = struct.unpack_from("<B", data, offset)
            lang = data[offset + 1 : offset + 1 + length].decode()
            offset += 1 + length
            (count,) = struct.unpack_from("<q", data, offset)
            offset += 8
            out.counts[lang] = count
            out.sums[lang] = np.frombuffer(data, "<f8", count=dim, offset=offset).astype(np.float64)
            offset += 8 * dim
        if offset != len(data):
            raise ValueError("serialized LanguageStats has trailing bytes")
        return out


@dataclass(frozen=True)
class CountedStats:
    """One part's statistics with the offset of the last item record they count: a shared-topic value.

    Whoever writes a part publishes it *before* writing the store, so after a crash the reader of its
    own part knows which item records are counted already (those up to ``through``) and does not count
    them twice when they are read again.
    """

    stats: LanguageStats
    through: int  # offset of the last item record counted; -1: none

    _OFFSET = struct.Struct("<q")

    def to_bytes(self) -> bytes:
        return self._OFFSET.pack(self.through) + self.stats.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> CountedStats:
        if len(data) < cls._OFFSET.size:
            raise ValueError("serialized CountedStats is too short")
        (through,) = cls._OFFSET.unpack_from(data)
        return cls(LanguageStats.from_bytes(data[cls._OFFSET.size :]), through)


@dataclass(frozen=True)
class NeutralSpace:
    """The space at one moment: centres and the language subspace, immutable (a batch uses one)."""

    mode: SpaceMode
    dim: int
    mean: np.ndarray | None  # the catalog's mean item vector; None: compare raw vectors
    centres: Mapping[str, np.ndarray]  # per language (``language`` mode only)
    basis: np.ndarray  # (r, dim) orthonormal rows spanning the language offsets; r = 0 outside ``language``

    @property
    def active(self) -> bool:
        return self.mean is not None

    def neutral(self, vectors: np.ndarray, langs: Sequence[str]) -> np.ndarray:
        """Unit rows of each vector minus its language's centre (the catalog mean, projected, for a
        language the space does not know). Raw rows when the space is not active."""
        x = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        if self.mean is None or not len(x):
            return x
        unknown = len(self._centre_rows)
        rows = np.fromiter((self._centre_rows.get(lang, unknown) for lang in langs), np.intp, count=len(x))
        moved = x - self._centre_matrix[rows]
        missing = rows == unknown
        if len(self.basis) and missing.any():
            moved[missing] = self._project(moved[missing])
        return _unit_rows(moved, fallback=x)

    @functools.cached_property
    def _centre_rows(self) -> dict[str, int]:
        return {lang: i for i, lang in enumerate(self.centres)}

    @functools.cached_property
    def _centre_matrix(self) -> np.ndarray:
        """One row per known language, in ``_centre_rows`` order, then the catalog mean (unknown languages)."""
        rows = [*self.centres.values(), self.mean if self.mean is not None else np.zeros(self.dim, np.float32)]
        return np.asarray(rows, np.float32)

    def query_directions(self, vectors: np.ndarray) -> np.ndarray:
        """Unit rows of neutral vectors with every language offset projected out: store queries."""
        x = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        if not len(self.basis) or not len(x):
            return x
        return _unit_rows(self._project(x), fallback=x)

    def _project(self, x: np.ndarray) -> np.ndarray:
        return (x - (x @ self.basis.T) @ self.basis).astype(np.float32)


#: The part of the statistics a process keeps when nobody shares them (evaluation, tests).
LOCAL_PART = "local"


class LanguageSpace:
    """Owns the statistics, by part, and hands out the current ``NeutralSpace`` (rebuilt when they change).

    A part is the catalog share one writer counts (in a worker: one partition of the items topic, as
    indexed into one store); the space is built from the sum of the parts.
    """

    def __init__(
        self,
        dim: int,
        mode: SpaceMode = "language",
        *,
        min_items: int = MIN_ITEMS,
        prior_items: float = PRIOR_ITEMS,
    ) -> None:
        self.dim = dim
        self.mode = mode
        self.min_items = min_items
        self.prior_items = prior_items
        self._parts: dict[str, LanguageStats] = {}
        self._view: NeutralSpace | None = None

    def count(self, part: str, lang: str, vectors: np.ndarray, sign: int = 1) -> None:
        """Count vectors of one language in (sign 1) or out of (sign −1) a part."""
        self._parts.setdefault(part, LanguageStats(self.dim)).add(lang, vectors, sign)
        self._view = None

    def part(self, key: str) -> LanguageStats:
        """A copy of one part's statistics (empty if none)."""
        return LanguageStats.total(self.dim, [self._parts[key]] if key in self._parts else [])

    def set_part(self, key: str, stats: LanguageStats) -> None:
        """Take a part someone else counts (or this process counted before a restart)."""
        self._parts[key] = stats
        self._view = None

    @property
    def stats(self) -> LanguageStats:
        return LanguageStats.total(self.dim, self._parts.values())

    def view(self) -> NeutralSpace:
        if self._view is None:
            self._view = self._build()
        return self._view

    def _build(self) -> NeutralSpace:
        empty = np.zeros((0, self.dim), np.float32)
        stats = self.stats
        total = stats.items
        if self.mode == "raw" or total < self.min_items:
            return NeutralSpace(self.mode, self.dim, None, {}, empty)
        mean64 = np.sum(list(stats.sums.values()), axis=0) / total
        mean = np.asarray(mean64, np.float32)
        if self.mode == "catalog":
            return NeutralSpace(self.mode, self.dim, mean, {}, empty)
        k = self.prior_items
        centres = {
            lang: np.asarray((stats.sums[lang] + k * mean64) / (count + k), np.float32)
            for lang, count in stats.counts.items()
            if count > 0 and lang != UNDETERMINED
        }
        basis = empty
        if len(centres) > 1:
            offsets = np.stack([c - mean for c in centres.values()]).astype(np.float64)
            _, singular, rows = np.linalg.svd(offsets, full_matrices=False)
            keep = singular > _BASIS_TOLERANCE * max(float(singular.max()), 1e-12)
            basis = rows[keep].astype(np.float32)
        return NeutralSpace(self.mode, self.dim, mean, centres, basis)


def _unit_rows(moved: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a row the centring cancelled keeps its original direction."""
    norms = np.sqrt(np.einsum("ij,ij->i", moved, moved))[:, None]
    ok = norms > 1e-6
    return np.where(ok, moved / np.where(ok, norms, 1.0), fallback).astype(np.float32, copy=False)
