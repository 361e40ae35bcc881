"""The ``qdrant`` backend: a Qdrant server through ``qdrant-client``'s AsyncQdrantClient.

For multi-worker deployments: every worker talks to one (sharded, replicated) collection, gRPC
preferred. Over gRPC, searches skip qdrant-client's models and read the server's reply directly
(``_query_chunk``): those models took more than half of a worker's CPU on this path. A server that answered once and then becomes unreachable (a restart, a network cut) is an
outage, not an error of the records at hand: every call waits for it, retrying with a growing pause
and saying so in the log, and ``reachable`` is False meanwhile (the worker's /readyz and
``xrec_store_reachable`` show it); the records stay in Kafka until it is back. A server that never
answered fails the first call at once, so a wrong URL or port is said plainly. The same class runs on qdrant-client's local mode (``QdrantServerStore.local()``), a
pure-Python implementation of the same API that the contract tests and the benchmark use. Local
mode searches by brute force, ignores payload indexes and runs synchronously inside the async
client, so it blocks the event loop: a testing tool, never a deployment.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
from qdrant_client import AsyncQdrantClient
from qdrant_client import grpc as qgrpc
from qdrant_client import models as qm
from qdrant_client.async_qdrant_remote import AsyncQdrantRemote
from qdrant_client.conversions.conversion import GrpcToRest, RestToGrpc, grpc_to_payload
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

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
    unclaimed,
)
from xrec.store.points import (
    as_vector,
    excluded_point_ids,
    fields_selection,
    hit_of,
    item_id_of,
    payload_selection,
    prepare_upsert,
    runnable,
    vector_matrix,
)
from xrec.vectors import VectorSpace

log = logging.getLogger(__name__)

#: Points per upsert request: keeps each gRPC/HTTP message well under the server's size limit.
UPSERT_BATCH = 256
#: Queries per search request. One worker batch can hold thousands (a user per event, a query per
#: interest); sent as one request under a backlog it outlived the client's 5 s deadline on a busy
#: machine and the whole batch's lists were lost (`xrec bench pipeline --store qdrant`, 883 of 20,000
#: events). Chunks run a few at a time, so the server still works on several at once.
QUERY_CHUNK = 256
QUERY_CHUNKS_AT_ONCE = 4
#: Ids per retrieve request, for the same reason.
FETCH_CHUNK = 1024
#: Pauses between tries while an outage lasts: doubling from the first to the last.
OUTAGE_FIRST_PAUSE_S = 0.25
OUTAGE_LAST_PAUSE_S = 5.0
#: While an outage lasts, one WARNING line per this many seconds (each try is logged at DEBUG).
OUTAGE_LOG_EVERY_S = 30.0
#: HTTP statuses a proxy or a starting server answers with while the service is away.
_AWAY_STATUSES = frozenset({502, 503, 504})

T = TypeVar("T")

_FIELD_SCHEMA = {
    "lang": qm.PayloadSchemaType.KEYWORD,
    "category": qm.PayloadSchemaType.KEYWORD,
    "available": qm.PayloadSchemaType.BOOL,
}


#: The collection metadata key naming the vector space of its points.
SPACE_METADATA_KEY = "xrec_space"


class QdrantServerStore:
    """Item vectors in a Qdrant collection reached through AsyncQdrantClient."""

    name = "qdrant"

    def __init__(
        self,
        client: AsyncQdrantClient,
        collection: str,
        *,
        dim: int | None = None,
        where: str = "",
        grpc_queries: bool = False,
    ) -> None:
        self.client = client
        #: Searches go to the server's gRPC service directly and their replies are read as they come
        #: (``_query_chunk``); False: through qdrant-client's models (HTTP, or its local mode).
        self.grpc_queries = grpc_queries
        self.collection = collection
        self.where = where or "qdrant"
        self._dim = dim
        self._ready_done = False
        self._local = where.startswith("local")
        self._answered = False  # the server answered once: from then on, unreachable means an outage
        self._away_since: float | None = None
        self._away_logged = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, dim: int | None = None) -> QdrantServerStore:
        grpc_port = settings.qdrant_grpc_port
        with warnings.catch_warnings():
            # An API key over plain http is the user's choice (a private network, a sidecar); say it once, at start.
            warnings.simplefilter("ignore", UserWarning)
            client = AsyncQdrantClient(
                url=settings.qdrant_url,
                grpc_port=grpc_port,
                api_key=settings.qdrant_api_key or None,
                prefer_grpc=settings.qdrant_prefer_grpc,
                check_compatibility=False,
            )
        where = settings.qdrant_url + (f" (gRPC port {grpc_port})" if settings.qdrant_prefer_grpc else "")
        if settings.qdrant_api_key and settings.qdrant_url.startswith("http://"):
            log.warning("the Qdrant API key is sent over plain http to %s", settings.qdrant_url)
        return cls(client, settings.collection, dim=dim, where=where, grpc_queries=settings.qdrant_prefer_grpc)

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

    @property
    def reachable(self) -> bool:
        """False while an outage lasts (calls are waiting for the server to come back)."""
        return self._away_since is None

    # --- protocol --------------------------------------------------------------------------------
    async def ensure_collection(self, dim: int) -> None:
        if not await self._call("ensure_collection", lambda: self.client.collection_exists(self.collection)):
            await self._create(dim)
        await self._check_and_index(dim)
        self._dim = dim
        self._ready_done = True

    async def claim_space(self, space: VectorSpace) -> None:
        """The collection's metadata (``xrec_space``) says which vector space its points are in."""
        await self._ready()
        info = await self._call("claim_space", lambda: self.client.get_collection(self.collection))
        held = (info.config.metadata or {}).get(SPACE_METADATA_KEY)
        if unclaimed(held, space, f"collection {self.collection} on {self.where}"):
            metadata = {SPACE_METADATA_KEY: space.to_dict()}
            await self._call("claim_space", lambda: self.client.update_collection(self.collection, metadata=metadata))

    async def upsert(self, points: Sequence[ItemPoint]) -> None:
        if not points:
            return
        await self._ready()
        batch = prepare_upsert(points, self._dim)
        for start in range(0, len(batch.ids), UPSERT_BATCH):
            end = start + UPSERT_BATCH
            chunk = qm.Batch(
                ids=list(batch.ids[start:end]), vectors=batch.vectors[start:end], payloads=batch.payloads[start:end]
            )
            await self._call("upsert", partial(self.client.upsert, self.collection, points=chunk, wait=True))

    async def delete(self, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        await self._ready()
        ids: list[Any] = [point_id(i) for i in dict.fromkeys(item_ids)]
        selector = qm.PointIdsList(points=ids)
        await self._call("delete", lambda: self.client.delete(self.collection, points_selector=selector, wait=True))

    async def fetch(
        self, item_ids: Sequence[str], payload_fields: tuple[str, ...] | None = None
    ) -> dict[str, StoredItem]:
        if not item_ids:
            return {}
        await self._ready()
        ids: list[Any] = [point_id(i) for i in dict.fromkeys(item_ids)]
        with_payload = fields_selection(payload_fields)
        records: list[qm.Record] = []
        for start in range(0, len(ids), FETCH_CHUNK):
            retrieve = partial(
                self.client.retrieve,
                self.collection,
                ids[start : start + FETCH_CHUNK],
                with_payload=with_payload,
                with_vectors=True,
            )
            records += await self._call("fetch", retrieve)
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
        at_once = asyncio.Semaphore(QUERY_CHUNKS_AT_ONCE)

        async def chunk(part: list[qm.QueryRequest]) -> list[list[Hit]]:
            async with at_once:
                return await self._call("query", lambda: self._query_chunk(part, with_vectors))

        parts = await asyncio.gather(
            *(chunk(requests[start : start + QUERY_CHUNK]) for start in range(0, len(requests), QUERY_CHUNK))
        )
        answers = [answer for part in parts for answer in part]
        for i, answer in zip(todo, answers, strict=True):
            results[i] = answer
        return results

    async def _query_chunk(self, requests: list[qm.QueryRequest], with_vectors: bool) -> list[list[Hit]]:
        """One search request's answers. Over gRPC the requests go to the server's own service and the
        hits are read straight from its reply: qdrant-client's path deep-copies every request (with its
        list of excluded ids) and builds a pydantic object per hit, which took more than half of a
        worker's CPU on the server path (BENCHMARKS.md, "The server path")."""
        if not self.grpc_queries:
            answers = await self.client.query_batch_points(self.collection, requests=requests)
            return [[_hit(sp, with_vectors) for sp in answer.points] for answer in answers]
        batch = qgrpc.QueryBatchPoints(
            collection_name=self.collection,
            query_points=[RestToGrpc.convert_query_request(r, self.collection) for r in requests],
        )
        deadline = AsyncQdrantRemote.DEFAULT_GRPC_TIMEOUT  # the client's own, as on its path
        reply = await self.client.grpc_points.QueryBatch(batch, timeout=deadline)
        return [[_grpc_hit(sp, with_vectors) for sp in answer.result] for answer in reply.result]

    async def query_columns(self, queries: Sequence[VectorQuery]) -> HitColumns | None:
        """None: a server's answers arrive as one object per hit whatever we do with them."""
        return None

    async def count(self) -> int:
        await self._ready()
        return (await self._call("count", lambda: self.client.count(self.collection, exact=True))).count

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
        if not await self._call("open", lambda: self.client.collection_exists(self.collection)):
            raise StoreError(
                f"{self.where}: collection {self.collection!r} does not exist and no vector size was given"
            )
        self._ready_done = True

    async def _create(self, dim: int) -> None:
        config = qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
        try:
            await self._call(
                "ensure_collection", lambda: self.client.create_collection(self.collection, vectors_config=config)
            )
            log.info("qdrant collection %r created on %s (%d-d, cosine)", self.collection, self.where, dim)
        except StoreError:
            # Another worker may have created it between our check and our create: that is fine.
            if not await self._call("ensure_collection", lambda: self.client.collection_exists(self.collection)):
                raise

    async def _check_and_index(self, dim: int) -> None:
        info = await self._call("ensure_collection", lambda: self.client.get_collection(self.collection))
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
                await self._call(
                    "ensure_collection",
                    partial(
                        self.client.create_payload_index,
                        self.collection,
                        name,
                        field_schema=_FIELD_SCHEMA[name],
                        wait=True,
                    ),
                )

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """One client call; an outage (see the module docstring) is waited out, anything else is a StoreError."""
        pause = OUTAGE_FIRST_PAUSE_S
        while True:
            try:
                result = await call()
            except Exception as exc:
                if not (self._answered and is_unreachable(exc)):
                    raise self._error(op, exc) from exc
                self._away(op, exc, pause)
                await asyncio.sleep(pause)
                pause = min(OUTAGE_LAST_PAUSE_S, pause * 2)
                continue
            self._answered = True
            if self._away_since is not None:
                log.warning(
                    "qdrant at %s answers again after %.1f s away; the waiting calls go on",
                    self.where,
                    time.monotonic() - self._away_since,
                )
                self._away_since = None
            return result

    def _away(self, op: str, exc: BaseException, pause: float) -> None:
        now = time.monotonic()
        if self._away_since is None:
            self._away_since = now
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        if now - self._away_logged >= OUTAGE_LOG_EVERY_S:
            self._away_logged = now
            log.warning(
                "qdrant at %s is unreachable for %.0f s (%s on %r: %s); calls wait and try again, "
                "records stay in Kafka until it is back",
                self.where,
                now - self._away_since,
                op,
                self.collection,
                reason,
            )
        else:
            log.debug("qdrant at %s still unreachable (%s): next try in %.2f s", self.where, reason, pause)

    def _error(self, op: str, exc: BaseException) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        return StoreError(f"{self.where}: {op} on collection {self.collection!r} failed: {type(exc).__name__}: {exc}")


def is_unreachable(exc: BaseException) -> bool:
    """The server could not be reached or said it is away: a transport failure, not an answer to the call."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() == grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, ResponseHandlingException):
        return isinstance(exc.source, httpx.TransportError)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _AWAY_STATUSES
    return isinstance(exc, httpx.TransportError)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.details())
    text = str(exc) or repr(exc)
    return text.splitlines()[0] if text else ""


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


def _grpc_hit(sp: qgrpc.ScoredPoint, with_vectors: bool) -> Hit:
    """A hit as the gRPC reply carries it."""
    vector = GrpcToRest.convert_vectors_output(sp.vectors) if with_vectors and sp.HasField("vectors") else None
    return hit_of(grpc_to_payload(sp.payload), GrpcToRest.convert_point_id(sp.id), sp.score, vector)


def _hit(sp: qm.ScoredPoint, with_vectors: bool) -> Hit:
    """A hit as qdrant-client's models carry it."""
    return hit_of(dict(sp.payload or {}), sp.id, sp.score, sp.vector if with_vectors else None)
