"""The VectorStore protocol: the one small surface the pipeline, evaluation and benchmarks use.

Item ids are the catalog's own strings; backends map them to Qdrant point ids stably (UUIDv5) and
keep the original id in the payload under ``item_id``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from xrec.errors import XrecError

if TYPE_CHECKING:
    from xrec.vectors import VectorSpace

#: Namespace for item-id → point-id mapping; changing it orphans every stored point.
POINT_ID_NAMESPACE = uuid.UUID("6f1c2a0e-5b7d-4c43-9a52-8e2f0b1d3c77")

#: Payload fields with an index, so filters on them stay fast as the catalog grows.
INDEXED_PAYLOAD_FIELDS = ("lang", "category", "available")


@functools.lru_cache(maxsize=1 << 18)
def point_id(item_id: str) -> str:
    """The Qdrant point id of a catalog item id: stable across processes and backends.

    Memoized (a pure function): every query excludes the user's seen items by point id, so without
    it a user with 500 seen items costs 500 uuid5 hashes per interest per list.
    """
    return str(uuid.uuid5(POINT_ID_NAMESPACE, item_id))


@dataclass(frozen=True)
class ItemPoint:
    """One item to upsert: its vector (float32, L2-normalized) and payload (lang, category, …)."""

    item_id: str
    vector: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemFilter:
    """Payload conditions of a query; ``None`` means no condition on that field."""

    langs: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    available_only: bool = True


@dataclass(frozen=True)
class VectorQuery:
    """One nearest-neighbour query of a batch."""

    vector: np.ndarray
    limit: int
    filter: ItemFilter = field(default_factory=ItemFilter)
    exclude_ids: Collection[str] = ()
    #: Payload fields each hit carries (``item_id`` always); None: the whole payload. Turning a
    #: payload into a dict costs per field, and a catalog's payload may hold titles and tags.
    payload_fields: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Hit:
    """A query result: cosine score, payload, and the vector when it was asked for."""

    item_id: str
    score: float
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class HitColumns:
    """A query batch's answers as arrays: what a caller ranking hundreds of lists at once needs,
    without one object per hit.

    Rows are the distinct items any query of the batch hit. ``per_query[i]`` holds query i's rows,
    best first (as many as its hits), ``scores[i]`` their cosines.
    """

    item_ids: list[str]
    vectors: np.ndarray  # (rows, dim) float32, unit length
    payload: dict[str, list[Any]]  # each asked payload field, one value per row (None where absent)
    per_query: list[np.ndarray]  # int64 row numbers
    scores: list[np.ndarray]  # float32

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_hits(
        cls,
        answers: Sequence[Sequence[Hit]],
        dim: int,
        fields: Sequence[str],
        vectors: Mapping[str, np.ndarray] | None = None,
    ) -> HitColumns:
        """Columns of ``query_batch`` answers. Each item's vector comes from ``vectors`` by id when given
        (a caller's cache), else from its hit; a hit with neither is left out. The first hit of an item
        gives its payload values."""
        row_of: dict[str, int] = {}
        item_ids: list[str] = []
        rows: list[np.ndarray] = []
        payload: dict[str, list[Any]] = {f: [] for f in fields}
        per_query: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for hits in answers:  # one pass: this runs for every candidate of every list
            numbers: list[int] = []
            cosines: list[float] = []
            for hit in hits:
                row = row_of.get(hit.item_id)
                if row is None:
                    vector = vectors.get(hit.item_id) if vectors is not None else hit.vector
                    if vector is None:
                        continue
                    row = row_of[hit.item_id] = len(item_ids)
                    item_ids.append(hit.item_id)
                    rows.append(vector)
                    for f in fields:
                        payload[f].append(hit.payload.get(f))
                numbers.append(row)
                cosines.append(hit.score)
            per_query.append(np.asarray(numbers, np.int64))
            scores.append(np.asarray(cosines, np.float32))
        # np.array copies the rows in one C loop; vstack costs ~2 µs per row in Python-level checks.
        matrix = np.array(rows, np.float32) if rows else np.zeros((0, dim), np.float32)
        return cls(item_ids, matrix, payload, per_query, scores)


@dataclass(frozen=True)
class StoredItem:
    item_id: str
    vector: np.ndarray
    payload: dict[str, Any]


class StoreError(XrecError, RuntimeError):
    """A backend operation failed; the message names the operation and the backend."""


def unclaimed(held: Mapping[str, Any] | None, space: VectorSpace, where: str) -> bool:
    """True when ``where`` records no vector space yet (the caller records ``space``); a StoreError when it
    records another one. Nothing is said when it records ``space`` itself."""
    if not held:
        return True
    if held.get("fingerprint") != space.fingerprint:
        raise StoreError(
            f"{where} holds vectors of {held.get('model')} (space {held.get('fingerprint')}, dim {held.get('dim')}); "
            f"this worker's encoder is {space.model} (space {space.fingerprint}, dim {space.dim}). Vectors of two "
            "models are not comparable: give this worker a store of its own (XREC_STORE_PATH or XREC_COLLECTION), "
            "or remove the old one to re-index it in the new space"
        )
    return False


@runtime_checkable
class VectorStore(Protocol):
    """Item vectors and their payloads, searchable by cosine similarity."""

    name: str

    @property
    def reachable(self) -> bool:
        """False while the backend is away (a server's outage): calls wait for it instead of failing."""

    async def ensure_collection(self, dim: int) -> None:
        """Create the collection (cosine, payload indexes) if missing; check ``dim`` if present."""

    async def claim_space(self, space: VectorSpace) -> None:
        """Record the vector space this store holds (``xrec/vectors.py``) after ``ensure_collection``; a
        store that holds another space is refused with a StoreError, so two models never share one."""

    async def upsert(self, points: Sequence[ItemPoint]) -> None:
        """Insert or replace a batch of items."""

    async def delete(self, item_ids: Sequence[str]) -> None:
        """Remove items; unknown ids are ignored."""

    async def fetch(
        self, item_ids: Sequence[str], payload_fields: tuple[str, ...] | None = None
    ) -> dict[str, StoredItem]:
        """Vectors and payloads of the ids that exist (missing ids are absent from the result); with
        ``payload_fields`` each payload holds only those fields (and ``item_id``)."""

    async def query_batch(self, queries: Sequence[VectorQuery], with_vectors: bool = False) -> list[list[Hit]]:
        """Run several queries in one request; results come back in query order, best first."""

    async def query_columns(self, queries: Sequence[VectorQuery]) -> HitColumns | None:
        """The answers ``query_batch(queries, with_vectors=True)`` gives, as columns, when this backend
        can build them without per-hit objects (the edge store's batched exact search); else None, and
        the caller uses ``query_batch``. The columns' payload holds each field any query asks for."""

    async def count(self) -> int:
        """Number of items held."""

    async def optimize(self) -> bool:
        """Merge segments and build the vector index after a bulk load; True if anything changed.

        Expensive (tens of seconds per 20k items on a small machine), so callers decide when: after a
        bulk load, before serving. A backend whose engine optimizes by itself returns False.
        """

    async def close(self) -> None:
        """Flush and release files or connections."""
