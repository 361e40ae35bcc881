"""Exact search of a whole query batch with one matrix product, for collections below the HNSW threshold.

Qdrant Edge scans an unindexed segment once per query: ~1.4 ms per query at 10k 384-d items, bound
by memory reads, holding the GIL. A worker's batch holds hundreds of queries, so it reads the catalog
hundreds of times. ``ExactMirror`` keeps a copy of the vectors and of the payload fields that filters
and ranking use, and answers the batch with one BLAS product (the catalog read once, every core, GIL
released), then a mask and a top-k per query. It answers exactly what the engine's exact search
answers (a contract test compares the two); the shard stays the store of record and the mirror is
rebuilt from it whenever the store opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xrec.store.base import Hit, HitColumns, ItemFilter, VectorQuery
from xrec.store.points import ITEM_ID_KEY, payload_selection


def use_one_blas_thread() -> None:
    """Run numpy's BLAS on one thread in this process (a worker, or the naive baseline).

    OpenBLAS keeps its idle threads spinning after each product; in a worker they took the second core
    from the Kafka client and the local broker (``xrec bench pipeline`` at half saturation: p99 2.0 s with
    the default threads, 0.33 s with one, same events/s). The mirror's products are small enough for one.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


#: Queries scored in one matrix: bounds the scores (and the partition's indexes) to ~60 MB at the 20k-item
#: threshold, however large a batch a worker takes while it catches up.
QUERY_BLOCK = 256

#: Extra columns of the scan matrix beyond its capacity. Capacities double from 1,024, and a row stride
#: that is a multiple of 4 KiB makes OpenBLAS's product with a few queries ~1.7x slower (cache-set
#: conflicts: 2.25 against 1.31 ms for 6 queries at 10k items on the development machine).
SCAN_PAD = 16

#: Payload fields the mirror holds; a query asking for any other field goes to the engine.
MIRRORED_FIELDS = frozenset({"item_id", "lang", "category", "available", "ts"})


class ExactMirror:
    """Unit vectors and filterable payload of every point, in insertion order, with swap-remove deletes.

    The vectors are kept twice: as rows (what answers hand out) and as the columns of ``_scan`` (what a
    batch of queries is multiplied by). A batch of a few queries, the usual one at moderate load, runs
    1.4-1.7x faster against a dim x items matrix than against the rows' transpose; the copy costs
    dim x 4 bytes per item (31 MB at the 20k-item index threshold).
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vectors = np.zeros((1024, dim), np.float32)
        self._scan = np.zeros((dim, 1024 + SCAN_PAD), np.float32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._payloads: list[dict[str, Any]] = []  # the mirrored fields of each point's payload
        self._lang = np.zeros(1024, np.int32)  # keyword codes; -1: absent (matches no language filter)
        self._category = np.zeros(1024, np.int32)
        self._available = np.zeros(1024, bool)
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def can_answer(self, queries: Sequence[VectorQuery]) -> bool:
        """True when every query asks only for mirrored payload fields."""
        return all(q.payload_fields is not None and MIRRORED_FIELDS.issuperset(q.payload_fields) for q in queries)

    @staticmethod
    def mirrors(payload: dict[str, Any]) -> bool:
        """False for a payload whose filter fields are not plain scalars (arrays match per element in
        Qdrant): the store stops mirroring rather than answer such points differently."""
        return all(
            payload.get(key) is None or isinstance(payload[key], str) for key in ("lang", "category")
        ) and isinstance(payload.get("available", False), bool)

    # --- writes ----------------------------------------------------------------------------------
    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        """Add or replace points; ``vectors`` are checked (finite, non-zero) rows, normalized here as
        Qdrant normalizes cosine vectors on upsert."""
        if not len(item_ids):
            return
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        for item_id, vector, payload in zip(item_ids, unit, payloads, strict=True):
            row = self._row.get(item_id)
            if row is None:
                row = len(self._ids)
                self._grow(row + 1)
                self._row[item_id] = row
                self._ids.append(item_id)
                self._payloads.append({})
            self._vectors[row] = vector
            self._scan[:, row] = vector
            self._payloads[row] = {k: payload[k] for k in MIRRORED_FIELDS if k in payload}
            self._lang[row] = self._code(payload.get("lang"))
            self._category[row] = self._code(payload.get("category"))
            self._available[row] = payload.get("available") is True

    def delete(self, item_ids: Sequence[str]) -> None:
        for item_id in item_ids:
            row = self._row.pop(item_id, None)
            if row is None:
                continue
            last = len(self._ids) - 1
            if row != last:  # move the last point into the hole
                moved = self._ids[last]
                self._ids[row], self._payloads[row] = moved, self._payloads[last]
                self._vectors[row] = self._vectors[last]
                self._scan[:, row] = self._scan[:, last]
                self._lang[row], self._category[row] = self._lang[last], self._category[last]
                self._available[row] = self._available[last]
                self._row[moved] = row
            self._ids.pop()
            self._payloads.pop()

    # --- reads -----------------------------------------------------------------------------------
    def fetch(self, item_ids: Sequence[str], fields: Sequence[str]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        """Vector (a copy) and the asked mirrored payload fields of each id held; missing ids are absent."""
        out = {}
        for item_id in item_ids:
            row = self._row.get(item_id)
            if row is not None:
                payload = self._payloads[row]
                wanted = {k: payload[k] for k in fields if k in payload}
                wanted[ITEM_ID_KEY] = item_id
                out[item_id] = (self._vectors[row].copy(), wanted)
        return out

    def query_batch(self, queries: Sequence[VectorQuery], matrix: np.ndarray, with_vectors: bool) -> list[list[Hit]]:
        """Top hits of each query: cosine scores, filter, exclusions, ``limit``; best first.

        ``matrix`` holds the queries' vectors, checked (finite, non-zero, ``dim`` wide), one per row.
        """
        results = []
        for query, (rows, scores) in zip(queries, self.top_rows(queries, matrix), strict=True):
            keys = payload_selection(query)
            assert not isinstance(keys, bool), "can_answer: every query names its payload fields"
            hits = []
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
                payload = self._payloads[row]
                vector = self._vectors[row].copy() if with_vectors else None
                hits.append(Hit(self._ids[row], score, {k: payload[k] for k in keys if k in payload}, vector))
            results.append(hits)
        return results

    def query_columns(self, queries: Sequence[VectorQuery], matrix: np.ndarray) -> HitColumns:
        """The same answers as ``query_batch`` (vectors included), as columns over the distinct items hit."""
        return self.columns_of(queries, self.top_rows(queries, matrix))

    def query_columns_many(self, groups: Sequence[Sequence[VectorQuery]], matrix: np.ndarray) -> list[HitColumns]:
        """``query_columns`` of several query batches (``matrix`` holds all their vectors, in order) from
        one pass over the catalog: the pass costs the same for a few queries as for a hundred (it is
        bound by reading the vectors), so batches that arrive while one runs share the next."""
        everything = [q for group in groups for q in group]
        tops = self.top_rows(everything, matrix)
        out = []
        start = 0
        for group in groups:
            out.append(self.columns_of(group, tops[start : start + len(group)]))
            start += len(group)
        return out

    def columns_of(self, queries: Sequence[VectorQuery], tops: list[tuple[np.ndarray, np.ndarray]]) -> HitColumns:
        """Columns over the distinct items of the queries' answers (``top_rows``)."""
        hit_rows = np.concatenate([rows for rows, _ in tops]) if tops else np.zeros(0, np.int64)
        distinct, numbers = np.unique(hit_rows, return_inverse=True)
        ends = np.cumsum([len(rows) for rows, _ in tops])
        fields = sorted({f for q in queries for f in q.payload_fields or () if f != ITEM_ID_KEY})
        payloads = [self._payloads[row] for row in distinct.tolist()]
        return HitColumns(
            item_ids=[self._ids[row] for row in distinct.tolist()],
            vectors=self._vectors[distinct],
            payload={f: [p.get(f) for p in payloads] for f in fields},
            per_query=np.split(numbers, ends[:-1]),
            scores=[scores for _, scores in tops],
        )

    def top_rows(self, queries: Sequence[VectorQuery], matrix: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each query's best rows and their cosines, best first, ``QUERY_BLOCK`` queries at a time."""
        tops: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(queries), QUERY_BLOCK):
            tops += self._top_rows(queries[start : start + QUERY_BLOCK], matrix[start : start + QUERY_BLOCK])
        return tops

    def _top_rows(self, queries: Sequence[VectorQuery], matrix: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Filters, exclusions and top-k applied to a block's whole score matrix at once: a few numpy calls
        per distinct filter and limit, not per query."""
        n = len(self._ids)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if not queries or n == 0:
            return [empty for _ in queries]
        unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        scores = unit @ self._scan[:, :n]  # the one pass over the catalog
        by_filter: dict[ItemFilter, list[int]] = {}
        by_limit: dict[int, list[int]] = {}
        hidden_q: list[int] = []
        hidden_row: list[int] = []
        hidden_rows: dict[int, list[int]] = {}  # one user's queries share their exclusions: look them up once
        for i, query in enumerate(queries):
            by_filter.setdefault(query.filter, []).append(i)
            by_limit.setdefault(min(query.limit, n), []).append(i)
            rows = hidden_rows.get(id(query.exclude_ids))
            if rows is None:
                rows = hidden_rows[id(query.exclude_ids)] = [
                    r for r in map(self._row.get, query.exclude_ids) if r is not None
                ]
            hidden_q += [i] * len(rows)
            hidden_row += rows
        for item_filter, members in by_filter.items():
            out_rows = np.flatnonzero(~self._mask(item_filter, n))
            if len(out_rows):
                scores[np.ix_(np.asarray(members), out_rows)] = -np.inf
        scores[hidden_q, hidden_row] = -np.inf
        results = [empty for _ in queries]
        for k, members in by_limit.items():
            if k <= 0:
                continue
            block = scores if len(members) == len(queries) else scores[members]  # no copy in the usual case
            # The k largest sit after position n − k of a partition: no negated copy of the block.
            top = (
                np.argpartition(block, n - k, axis=1)[:, n - k :] if k < n else np.tile(np.arange(n), (len(members), 1))
            )
            top_scores = np.take_along_axis(block, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
            found = (top_scores > -np.inf).sum(axis=1)  # fewer matching points than the limit
            for i, rows, row_scores, m in zip(members, top, top_scores, found.tolist(), strict=True):
                results[i] = (rows[:m], row_scores[:m])
        return results

    def _mask(self, item_filter: ItemFilter, n: int) -> np.ndarray:
        mask = self._available[:n].copy() if item_filter.available_only else np.ones(n, bool)
        if item_filter.langs is not None:
            mask &= np.isin(self._lang[:n], self._codes_of(item_filter.langs))
        if item_filter.categories is not None:
            mask &= np.isin(self._category[:n], self._codes_of(item_filter.categories))
        return mask

    # --- internals -------------------------------------------------------------------------------
    def _code(self, value: Any) -> int:
        if not isinstance(value, str):
            return -1
        return self._codes.setdefault(value, len(self._codes))

    def _codes_of(self, values: Sequence[str]) -> np.ndarray:
        return np.asarray([self._codes[v] for v in values if v in self._codes], np.int32)

    def _grow(self, size: int) -> None:
        if size <= len(self._vectors):
            return
        capacity = max(size, 2 * len(self._vectors))
        self._vectors = np.resize(self._vectors, (capacity, self.dim))
        scan = np.zeros((self.dim, capacity + SCAN_PAD), np.float32)
        scan[:, : self._scan.shape[1]] = self._scan
        self._scan = scan
        self._lang = np.resize(self._lang, capacity)
        self._category = np.resize(self._category, capacity)
        self._available = np.resize(self._available, capacity)
