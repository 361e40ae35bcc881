"""Checks and conversions both backends share, so they reject and accept exactly the same inputs.

Neither engine refuses a zero or NaN vector (both store it and later score it as garbage), so the
checks live here, once, before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xrec.store.base import Hit, ItemFilter, ItemPoint, StoreError, VectorQuery, point_id

#: Payload key that carries the catalog's own id (point ids are UUIDv5 of it).
ITEM_ID_KEY = "item_id"


@dataclass(frozen=True)
class PreparedBatch:
    """An upsert batch in the shapes the engines take: point ids, plain float lists, payloads."""

    ids: list[str]
    vectors: list[list[float]]
    payloads: list[dict[str, Any]]
    matrix: np.ndarray  # the same vectors, checked, one float32 row each


def vector_matrix(vectors: Sequence[np.ndarray], dim: int | None, what: str) -> np.ndarray:
    """Stack vectors into one float32 matrix, refusing wrong sizes, NaN/inf and zero vectors."""
    try:
        matrix = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in vectors])
    except ValueError as exc:
        raise StoreError(f"{what}: vectors of different sizes in one batch ({exc})") from None
    if dim is not None and matrix.shape[1] != dim:
        raise StoreError(f"{what}: vectors have {matrix.shape[1]} dimensions, the collection holds {dim}")
    if not np.isfinite(matrix).all():
        raise StoreError(f"{what}: a vector holds NaN or infinity")
    if not (np.abs(matrix).max(axis=1) > 0).all():
        raise StoreError(f"{what}: a zero vector has no direction and cannot be compared by cosine")
    return matrix


def prepare_upsert(points: Sequence[ItemPoint], dim: int | None) -> PreparedBatch:
    """Point ids, vectors as lists (the fast path into both engines) and payloads with ``item_id``."""
    matrix = vector_matrix([p.vector for p in points], dim, "upsert")
    return PreparedBatch(
        ids=[point_id(p.item_id) for p in points],
        vectors=matrix.tolist(),
        payloads=[{**p.payload, ITEM_ID_KEY: p.item_id} for p in points],
        matrix=matrix,
    )


def can_match(item_filter: ItemFilter) -> bool:
    """False when an empty ``langs``/``categories`` tuple allows nothing: such a query returns no hits."""
    return item_filter.langs != () and item_filter.categories != ()


def runnable(queries: Sequence[VectorQuery]) -> list[int]:
    """Indexes of the queries worth sending to the engine (positive limit, satisfiable filter)."""
    return [i for i, q in enumerate(queries) if q.limit > 0 and can_match(q.filter)]


def payload_selection(query: VectorQuery) -> bool | list[str]:
    """What to ask the engine for: the whole payload, or the query's fields plus ``item_id``."""
    return fields_selection(query.payload_fields)


def fields_selection(fields: tuple[str, ...] | None) -> bool | list[str]:
    """The whole payload (None), or the fields asked for plus ``item_id``."""
    if fields is None:
        return True
    return [ITEM_ID_KEY, *(f for f in fields if f != ITEM_ID_KEY)]


def excluded_point_ids(query: VectorQuery) -> set[str]:
    return {point_id(item_id) for item_id in query.exclude_ids}


def item_id_of(payload: dict[str, Any] | None, fallback: object) -> str:
    """The catalog id stored with a point; a point written by another tool falls back to its point id."""
    if payload and isinstance(payload.get(ITEM_ID_KEY), str):
        return payload[ITEM_ID_KEY]
    return str(fallback)


def as_vector(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def hit_of(payload: dict[str, Any], point: object, score: float, vector: Any) -> Hit:
    """A store's answer as a ``Hit``, whichever engine or wire carried it: its id from the payload (else the
    point id), its vector (if asked for) as float32."""
    return Hit(
        item_id=item_id_of(payload, point),
        score=float(score),
        payload=payload,
        vector=as_vector(vector) if vector is not None else None,
    )
