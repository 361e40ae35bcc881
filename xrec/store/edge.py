"""The ``edge`` backend: Qdrant Edge embedded in the process, persistent on disk (segments + WAL).

Threading. Edge is synchronous Rust; every call runs on one dedicated thread (a single-thread
executor), which keeps writes and reads in submission order and never touches the shard from two
threads. qdrant-edge-py 0.9.0 does *not* release the GIL while it works (``xrec bench store`` checks:
a spinning Python thread advanced at ~2-10% of its idle rate inside exact-search calls, and at <1%
during a 15 s in-process ``optimize()``), so the thread keeps calls off the event loop's stack but
the loop still pauses for each call's duration. Queries and upserts take milliseconds, which is
fine; ``optimize()`` takes tens of seconds to minutes, so it runs in a child process (see below)
while the loop keeps serving Kafka.

Batched exact search. Below ``index_threshold`` the store also keeps an ``ExactMirror``
(``xrec/store/exact.py``) of the vectors and filter fields, rebuilt from the shard on open and updated
with every write, and answers a query batch that asks only for mirrored payload fields with one
matrix product instead of one scan per query (``batch_exact=False``, ``XREC_STORE_BATCH_EXACT``,
turns it off). Above the threshold the mirror is dropped and Qdrant answers every query.

Indexing. Edge runs no background optimizer: points land in an appendable segment that is searched
exactly until ``optimize()`` is called. Measured on 2 busy cores (384-d, filtered top-10): exact
search costs ~3 ms per query at 10k items and ~24 ms at 100k; HNSW gave nothing at 10k (2.8 ms) and
8× at 100k (3.1 ms), while building it took 11 s for 10k and ~5 min for 100k. So collections below
``index_threshold`` items (``XREC_STORE_INDEX_THRESHOLD``, default 20k) are never HNSW-indexed (the
engine's indexing threshold is set from it, so ``optimize()`` on them only merges segments); above
it, callers run ``optimize()`` after a bulk load or at a quiet moment. Nothing optimizes on its own
in the hot path.

``optimize()`` closes the shard, runs ``EdgeShard.optimize`` in a child Python process on the same
directory (the WAL lock allows one opener), then reopens it. Other calls wait in the executor queue
meanwhile; the event loop is free because the executor thread only waits on the child.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import qdrant_edge as qe

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
from xrec.store.combiner import SearchCombiner
from xrec.store.exact import MIRRORED_FIELDS, ExactMirror
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
T = TypeVar("T")

#: Points per Edge update operation: bounds the size of one WAL record and one Python→Rust conversion.
UPSERT_BATCH = 2048

#: Payload index type of each indexed field.
_FIELD_SCHEMA = {
    "lang": qe.PayloadSchemaType.Keyword,
    "category": qe.PayloadSchemaType.Keyword,
    "available": qe.PayloadSchemaType.Bool,
}

#: qdrant-edge-py 0.9.0 turns ``MatchValue(True)`` into the integer 1, which matches no boolean payload
#: (so every "available" query came back empty); a numpy bool reaches the engine as a real bool.
_MATCH_TRUE = qe.MatchValue(np.bool_(True))  # type: ignore[arg-type]

_OPTIMIZE_CHILD = (
    "import sys, qdrant_edge\n"
    "shard = qdrant_edge.EdgeShard.load(sys.argv[1])\n"
    "changed = shard.optimize()\n"
    "shard.flush()\n"
    "shard.close()\n"
    "print('changed' if changed else 'unchanged')\n"
)


@dataclass(frozen=True)
class IndexState:
    """How the shard would answer a query now: ``indexed`` vectors are in HNSW, the rest are scanned."""

    points: int
    indexed_vectors: int
    segments: int

    @property
    def search(self) -> str:
        if self.indexed_vectors == 0:
            return "exact"
        return "hnsw" if self.indexed_vectors >= self.points else "hnsw+exact"


class EdgeStore:
    """Item vectors in an embedded Qdrant Edge shard at ``path``."""

    name = "edge"

    def __init__(
        self, path: str | Path, *, dim: int | None = None, index_threshold: int = 20_000, batch_exact: bool = True
    ) -> None:
        self.path = Path(path)
        self.index_threshold = index_threshold
        self.batch_exact = batch_exact
        self._mirror: ExactMirror | None = None
        self._dim = dim
        self._shard: qe.EdgeShard | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xrec-edge")
        self._searches: SearchCombiner[list[VectorQuery], HitColumns | None] = SearchCombiner(
            lambda groups: self._call("query", self._columns_sync, groups)
        )

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def reachable(self) -> bool:
        """Always: the shard is in this process."""
        return True

    # --- protocol --------------------------------------------------------------------------------
    async def ensure_collection(self, dim: int) -> None:
        await self._call("ensure_collection", self._open_sync, dim)

    async def claim_space(self, space: VectorSpace) -> None:
        """A file beside the shard (``<path>.space.json``) says which vector space its points are in."""
        claim = self.path.with_name(self.path.name + ".space.json")
        try:
            held = orjson.loads(claim.read_bytes()) if claim.exists() else None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StoreError(
                f"edge store {self.path}: cannot read {claim} ({exc}); remove it to claim the store again"
            ) from None
        if unclaimed(held, space, f"edge store {self.path}"):
            partial_claim = claim.with_suffix(".tmp")
            partial_claim.write_bytes(space.to_json())
            partial_claim.replace(claim)  # whole or absent, never half-written

    async def upsert(self, points: Sequence[ItemPoint]) -> None:
        if not points:
            return
        await self._ready()
        await self._call("upsert", self._upsert_sync, list(points))

    async def delete(self, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        await self._ready()
        await self._call("delete", self._delete_sync, list(dict.fromkeys(item_ids)))

    async def fetch(
        self, item_ids: Sequence[str], payload_fields: tuple[str, ...] | None = None
    ) -> dict[str, StoredItem]:
        """Below the index threshold, a fetch that asks only for mirrored payload fields is answered from
        the mirror (a dict lookup and a copy per item, where Qdrant Edge converts every vector)."""
        if not item_ids:
            return {}
        await self._ready()
        unique = list(dict.fromkeys(item_ids))
        mirrored = await self._call("fetch", self._fetch_mirrored_sync, unique, payload_fields)
        if mirrored is not None:
            return mirrored
        ids: list[qe.PointId] = [point_id(i) for i in unique]
        selection = fields_selection(payload_fields)
        records = await self._call(
            "fetch", lambda: self._require().retrieve(ids, with_payload=selection, with_vector=True)
        )
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
        answers = await self._call("query", self._query_sync, [queries[i] for i in todo], with_vectors)
        for i, hits in zip(todo, answers, strict=True):
            results[i] = hits
        return results

    async def query_columns(self, queries: Sequence[VectorQuery]) -> HitColumns | None:
        """Columns from the batched exact search; None past the index threshold (Qdrant's HNSW answers
        there, one object per hit) or when a query asks for payload fields the mirror does not hold.

        Batches asked for while a search runs wait for it and share the next one (one pass over the
        vectors for all of them): a worker whose batches overlap pays for the pass once.
        """
        if not queries:
            return None
        await self._ready()
        return await self._searches.submit(list(queries))

    async def count(self) -> int:
        await self._ready()
        return int(await self._call("count", lambda: self._require().count(qe.CountRequest(exact=True))))

    async def optimize(self) -> bool:
        await self._ready()
        return bool(await self._call("optimize", self._optimize_sync))

    async def close(self) -> None:
        """Flush and close the shard so a later process reopens it with every write in place."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        finally:
            self._executor.shutdown(wait=True)

    # --- edge extras -----------------------------------------------------------------------------
    @property
    def batch_exact_active(self) -> bool:
        """Whether query batches that ask for mirrored payload fields are answered by the mirror now."""
        return self._mirror is not None

    async def index_state(self) -> IndexState:
        """Points, HNSW-indexed vectors and segments: tells whether queries are exact or indexed."""
        await self._ready()
        info = await self._call("info", lambda: self._require().info())
        return IndexState(
            points=info.points_count, indexed_vectors=info.indexed_vectors_count, segments=info.segments_count
        )

    async def flush(self) -> None:
        await self._ready()
        await self._call("flush", lambda: self._require().flush())

    # --- on the edge thread ----------------------------------------------------------------------
    async def _ready(self) -> None:
        """Open lazily: with a known dim, create or check the shard; without, attach to an existing one."""
        if self._shard is None:
            await self._call("open", self._open_sync, self._dim)

    async def _call(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError(f"edge store {self.path}: {op} after close")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"edge store {self.path}: {op} failed: {exc}") from exc

    def _require(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreError(f"edge store {self.path}: not open")
        return self._shard

    def _config(self, dim: int) -> qe.EdgeConfig:
        vector_kb = max(1, (self.index_threshold * dim * 4) // 1024)
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=vector_kb),
        )

    def _exists(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def _open_sync(self, dim: int | None) -> None:
        if self._shard is not None:
            if dim is None or dim == self._dim:
                return
            if self._dim is not None:
                raise StoreError(f"edge store {self.path} holds {self._dim}-d vectors, asked for {dim}-d")
            # Attached without a size: reopen with the config so the engine checks the size on disk.
            self._close_sync()
        if self._exists():
            try:
                shard = qe.EdgeShard.load(str(self.path), self._config(dim) if dim is not None else None)
            except Exception as exc:
                raise StoreError(
                    f"edge store {self.path} cannot be opened for {dim}-d cosine vectors: {exc}. "
                    "Point XREC_STORE_PATH elsewhere or remove that directory to rebuild it."
                    if dim is not None
                    else f"edge store {self.path} cannot be opened: {exc}"
                ) from exc
            log.info("edge store opened at %s (%d items)", self.path, shard.count(qe.CountRequest(exact=True)))
        elif dim is None:
            raise StoreError(f"edge store {self.path} does not exist yet and no vector size was given to create it")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            shard = qe.EdgeShard.create(str(self.path), self._config(dim))
            log.info("edge store created at %s (%d-d, cosine)", self.path, dim)
        missing = [f for f in INDEXED_PAYLOAD_FIELDS if f not in shard.info().payload_schema]
        for name in missing:
            shard.update(qe.UpdateOperation.create_field_index(name, _FIELD_SCHEMA[name]))
        self._shard = shard
        self._dim = dim
        self._open_mirror(shard, dim)

    def _apply_sync(self, ops: list[qe.UpdateOperation]) -> None:
        shard = self._require()
        for op in ops:
            shard.update(op)

    def _delete_sync(self, item_ids: list[str]) -> None:
        self._require().update(qe.UpdateOperation.delete_points([point_id(i) for i in item_ids]))
        if self._mirror is not None:
            self._mirror.delete(item_ids)

    def _open_mirror(self, shard: qe.EdgeShard, dim: int | None) -> None:
        """Read every point into a new mirror (none when turned off, or past the threshold)."""
        self._mirror = None
        if not self.batch_exact or dim is None or shard.count(qe.CountRequest(exact=True)) > self.index_threshold:
            return
        self._mirror = ExactMirror(dim)
        offset: qe.PointId | None = None
        while self._mirror is not None:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=1000, with_payload=True, with_vector=True)
            )
            if records:
                payloads = [dict(rec.payload or {}) for rec in records]
                item_ids = [item_id_of(p, rec.id) for p, rec in zip(payloads, records, strict=True)]
                self._mirror_write(item_ids, np.asarray([as_vector(r.vector) for r in records]), payloads)
            if not records or offset is None:
                break

    def _mirror_write(self, item_ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        """Keep the mirror in step with a write, or drop it for good past the threshold or on array payloads."""
        mirror = self._mirror
        if mirror is None:
            return
        new = len({i for i in item_ids if i not in mirror})
        if len(mirror) + new > self.index_threshold or not all(ExactMirror.mirrors(p) for p in payloads):
            self._mirror = None
            log.info(
                "edge store %s: past %d items (or array payloads); batched exact search is off, Qdrant answers queries",
                self.path,
                self.index_threshold,
            )
            return
        mirror.upsert(item_ids, vectors, payloads)

    def _upsert_sync(self, points: list[ItemPoint]) -> None:
        """Convert and write on the edge thread: building Points costs ~60 µs each, too much for the loop."""
        shard = self._require()
        batch = prepare_upsert(points, self._dim)
        for ids, vecs, pays in _chunks(batch.ids, batch.vectors, batch.payloads, size=UPSERT_BATCH):
            pts = [qe.Point(pid, vec, payload) for pid, vec, payload in zip(ids, vecs, pays, strict=True)]
            shard.update(qe.UpdateOperation.upsert_points(pts))
        self._mirror_write([p.item_id for p in points], batch.matrix, batch.payloads)

    def _query_sync(self, queries: list[VectorQuery], with_vectors: bool) -> list[list[Hit]]:
        shard = self._require()
        matrix = vector_matrix([q.vector for q in queries], self._dim, "query")
        if self._mirror is not None and self._mirror.can_answer(queries):
            return self._mirror.query_batch(queries, matrix, with_vectors)
        requests = [_query_request(q, vec, with_vectors) for q, vec in zip(queries, matrix.tolist(), strict=True)]
        answers = shard.query_batch(qe.QueryBatchRequest(requests))
        return [[_hit(sp, with_vectors) for sp in scored] for scored in answers]

    def _fetch_mirrored_sync(
        self, item_ids: list[str], payload_fields: tuple[str, ...] | None
    ) -> dict[str, StoredItem] | None:
        if self._mirror is None or payload_fields is None or not MIRRORED_FIELDS.issuperset(payload_fields):
            return None
        return {
            item_id: StoredItem(item_id, vector, payload)
            for item_id, (vector, payload) in self._mirror.fetch(item_ids, payload_fields).items()
        }

    def _columns_sync(self, groups: list[list[VectorQuery]]) -> list[HitColumns | None]:
        everything = [q for group in groups for q in group]
        if self._mirror is None or not self._mirror.can_answer(everything):
            return [None for _ in groups]
        matrix = vector_matrix([q.vector for q in everything], self._dim, "query")
        return list(self._mirror.query_columns_many(groups, matrix))

    def _optimize_sync(self) -> bool:
        shard = self._require()
        shard.flush()
        shard.close()
        self._shard = None
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-c", _OPTIMIZE_CHILD, str(self.path)], capture_output=True, text=True, check=False
            )
        finally:
            self._shard = qe.EdgeShard.load(str(self.path))
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise StoreError(f"edge store {self.path}: optimize child exited with {done.returncode}: {tail[0]}")
        info = self._shard.info()
        log.info(
            "edge store optimized in %.1fs: %d points, %d in HNSW, %d segments",
            time.perf_counter() - started,
            info.points_count,
            info.indexed_vectors_count,
            info.segments_count,
        )
        return done.stdout.strip() == "changed"

    def _close_sync(self) -> None:
        self._mirror = None
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None


def _chunks(*columns: list[Any], size: int) -> list[tuple[list[Any], ...]]:
    n = len(columns[0])
    return [tuple(col[i : i + size] for col in columns) for i in range(0, n, size)]


def _query_request(query: VectorQuery, vector: list[float], with_vectors: bool) -> qe.QueryRequest:
    f = query.filter
    must: list[qe.ConditionType] = []
    if f.available_only:
        must.append(qe.FieldCondition("available", match=_MATCH_TRUE))
    if f.langs is not None:
        must.append(qe.FieldCondition("lang", match=qe.MatchAny(list(f.langs))))
    if f.categories is not None:
        must.append(qe.FieldCondition("category", match=qe.MatchAny(list(f.categories))))
    excluded = excluded_point_ids(query)
    must_not: list[qe.ConditionType] = [qe.HasIdCondition(set(excluded))] if excluded else []
    flt = qe.Filter(must=must or None, must_not=must_not or None) if (must or must_not) else None
    return qe.QueryRequest(
        limit=query.limit,
        query=qe.Query.Nearest(vector),
        filter=flt,
        with_payload=payload_selection(query),
        with_vector=with_vectors,
    )


def _hit(sp: qe.ScoredPoint, with_vectors: bool) -> Hit:
    return hit_of(dict(sp.payload or {}), sp.id, sp.score, sp.vector if with_vectors else None)
