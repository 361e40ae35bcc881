"""The ``qdrant`` backend: a Qdrant server through ``qdrant-client``'s AsyncQdrantClient.

For multi-worker deployments: every worker talks to one (sharded, replicated) collection, gRPC
preferred. The same class runs on qdrant-client's local mode (``QdrantServerStore.local()``), a
pure-Python implementation of the same API that the contract tests and the benchmark use. Local
mode searches by brute force, ignores payload indexes and runs synchronously inside the async
client, so it blocks the event loop: a testing tool, never a deployment.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm

from xrec.config import Settings
from xrec.store.base import (
    INDEXED_PAYLOAD_FIELDS,
    Hit,
    HitColumns,
    ItemPoint,
    StoredItem,
    StoreError,
    VectorQuery,
    point_id,
)
from xrec.store.points import (
    as_vector,
    excluded_point_ids,
    fields_selection,
    item_id_of,
    payload_selection,
    prepare_upsert,
    runnable,
    vector_matrix,
)

log = logging.getLogger(__name__)

#: Points per upsert request: keeps each gRPC/HTTP message well under the server's size limit.
UPSERT_BATCH = 256

_FIELD_SCHEMA = {
    "lang": qm.PayloadSchemaType.KEYWORD,
    "category": qm.PayloadSchemaType.KEYWORD,
    "available": qm.PayloadSchemaType.BOOL,
}


class QdrantServerStore:
    """Item vectors in a Qdrant collection reached through AsyncQdrantClient."""

    name = "qdrant"

    def __init__(self, client: AsyncQdrantClient, collection: str, *, dim: int | None = None, where: str = "") -> None:
        self.client = client
        self.collection = collection
        self.where = where or "qdrant"
        self._dim = dim
        self._ready_done = False
        self._local = where.startswith("local")

    @classmethod
    def from_settings(cls, settings: Settings, dim: int | None = None) -> QdrantServerStore:
        client = AsyncQdrantClient(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key or None,
            prefer_grpc=settings.qdrant_prefer_grpc,
        )
        return cls(client, settings.collection, dim=dim, where=settings.qdrant_url)

    @classmethod
    def local(cls, collection: str, *, path: str | Path | None = None, dim: int | None = None) -> QdrantServerStore:
        """qdrant-client's local mode: in memory, or persisted under ``path``."""
        if path is None:
            client = AsyncQdrantClient(location=":memory:")
            where = "local :memory:"
        else:
            client = AsyncQdrantClient(path=str(path))
            where = f"local {path}"
        return cls(client, collection, dim=dim, where=where)

    @property
    def dim(self) -> int | None:
        return self._dim

    # --- protocol --------------------------------------------------------------------------------
    async def ensure_collection(self, dim: int) -> None:
        try:
            if not await self.client.collection_exists(self.collection):
                await self._create(dim)
            await self._check_and_index(dim)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error("ensure_collection", exc) from exc
        self._dim = dim
        self._ready_done = True

    async def upsert(self, points: Sequence[ItemPoint]) -> None:
        if not points:
            return
        await self._ready()
        batch = prepare_upsert(points, self._dim)
        try:
            for start in range(0, len(batch.ids), UPSERT_BATCH):
                end = start + UPSERT_BATCH
                await self.client.upsert(
                    self.collection,
                    points=qm.Batch(
                        ids=list(batch.ids[start:end]),
                        vectors=batch.vectors[start:end],
                        payloads=batch.payloads[start:end],
                    ),
                    wait=True,
                )
        except Exception as exc:
            raise self._error("upsert", exc) from exc

    async def delete(self, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        await self._ready()
        ids: list[Any] = [point_id(i) for i in dict.fromkeys(item_ids)]
        try:
            await self.client.delete(self.collection, points_selector=qm.PointIdsList(points=ids), wait=True)
        except Exception as exc:
            raise self._error("delete", exc) from exc

    async def fetch(
        self, item_ids: Sequence[str], payload_fields: tuple[str, ...] | None = None
    ) -> dict[str, StoredItem]:
        if not item_ids:
            return {}
        await self._ready()
        ids: list[Any] = [point_id(i) for i in dict.fromkeys(item_ids)]
        try:
            records = await self.client.retrieve(
                self.collection, ids, with_payload=fields_selection(payload_fields), with_vectors=True
            )
        except Exception as exc:
            raise self._error("fetch", exc) from exc
        out: dict[str, StoredItem] = {}
        for rec in records:
            payload = dict(rec.payload or {})
            item_id = item_id_of(payload, rec.id)
            out[item_id] = StoredItem(item_id=item_id, vector=as_vector(rec.vector), payload=payload)
        return out

    async def query_batch(self, queries: Sequence[VectorQuery], with_vectors: bool = False) -> list[list[Hit]]:
        results: list[list[Hit]] = [[] for _ in queries]
        todo = runnable(queries)
        if not todo:
            return results
        await self._ready()
        matrix = vector_matrix([queries[i].vector for i in todo], self._dim, "query")
        requests = [_query_request(queries[i], vec, with_vectors) for i, vec in zip(todo, matrix.tolist(), strict=True)]
        try:
            answers = await self.client.query_batch_points(self.collection, requests=requests)
        except Exception as exc:
            raise self._error("query", exc) from exc
        for i, answer in zip(todo, answers, strict=True):
            results[i] = [_hit(sp, with_vectors) for sp in answer.points]
        return results

    async def query_columns(self, queries: Sequence[VectorQuery]) -> HitColumns | None:
        """None: a server's answers arrive as one object per hit whatever we do with them."""
        return None

    async def count(self) -> int:
        await self._ready()
        try:
            return (await self.client.count(self.collection, exact=True)).count
        except Exception as exc:
            raise self._error("count", exc) from exc

    async def optimize(self) -> bool:
        """The server optimizes and indexes in the background by itself; local mode has no index."""
        return False

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception as exc:
            raise self._error("close", exc) from exc

    # --- internals -------------------------------------------------------------------------------
    async def _ready(self) -> None:
        """With a known dim, create or check the collection once; without, require that it exists."""
        if self._ready_done:
            return
        if self._dim is not None:
            await self.ensure_collection(self._dim)
            return
        try:
            exists = await self.client.collection_exists(self.collection)
        except Exception as exc:
            raise self._error("open", exc) from exc
        if not exists:
            raise StoreError(
                f"{self.where}: collection {self.collection!r} does not exist and no vector size was given"
            )
        self._ready_done = True

    async def _create(self, dim: int) -> None:
        try:
            await self.client.create_collection(
                self.collection, vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
            )
            log.info("qdrant collection %r created on %s (%d-d, cosine)", self.collection, self.where, dim)
        except Exception:
            # Another worker may have created it between our check and our create: that is fine.
            if not await self.client.collection_exists(self.collection):
                raise

    async def _check_and_index(self, dim: int) -> None:
        info = await self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        if not isinstance(vectors, qm.VectorParams):
            raise StoreError(
                f"{self.where}: collection {self.collection!r} uses named vectors; xrec needs one unnamed vector"
            )
        if vectors.size != dim or vectors.distance != qm.Distance.COSINE:
            raise StoreError(
                f"{self.where}: collection {self.collection!r} holds {vectors.size}-d {vectors.distance.value} vectors, "
                f"the encoder makes {dim}-d cosine ones; use another XREC_COLLECTION or recreate it"
            )
        missing = [f for f in INDEXED_PAYLOAD_FIELDS if f not in (info.payload_schema or {})]
        with warnings.catch_warnings():
            if self._local:
                # Local mode answers every payload index with a warning that it has no effect; we know.
                warnings.simplefilter("ignore", UserWarning)
            for name in missing:
                await self.client.create_payload_index(
                    self.collection, name, field_schema=_FIELD_SCHEMA[name], wait=True
                )

    def _error(self, op: str, exc: BaseException) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        return StoreError(f"{self.where}: {op} on collection {self.collection!r} failed: {type(exc).__name__}: {exc}")


def _query_request(query: VectorQuery, vector: list[float], with_vectors: bool) -> qm.QueryRequest:
    f = query.filter
    must: list[qm.Condition] = []
    if f.available_only:
        must.append(qm.FieldCondition(key="available", match=qm.MatchValue(value=True)))
    if f.langs is not None:
        must.append(qm.FieldCondition(key="lang", match=qm.MatchAny(any=list(f.langs))))
    if f.categories is not None:
        must.append(qm.FieldCondition(key="category", match=qm.MatchAny(any=list(f.categories))))
    excluded = sorted(excluded_point_ids(query))
    must_not: list[qm.Condition] = [qm.HasIdCondition(has_id=list(excluded))] if excluded else []
    flt = qm.Filter(must=must or None, must_not=must_not or None) if (must or must_not) else None
    return qm.QueryRequest(
        query=vector, limit=query.limit, filter=flt, with_payload=payload_selection(query), with_vector=with_vectors
    )


def _hit(sp: qm.ScoredPoint, with_vectors: bool) -> Hit:
    payload = dict(sp.payload or {})
    vector = sp.vector if with_vectors else None
    return Hit(
        item_id=item_id_of(payload, sp.id),
        score=float(sp.score),
        payload=payload,
        vector=as_vector(vector) if vector is not None else None,
    )
