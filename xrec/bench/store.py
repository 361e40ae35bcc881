"""``xrec bench store``: upsert rate and query latency of the two store backends, measured in one run.

The vectors are seeded random unit vectors grouped around random topic centres (cosine ≈ 0.86 to their
centre), shaped like text embeddings. Uniformly random 384-d vectors (``--uniform``) have no near
neighbours at all: HNSW recall on them is ~0.4 and its build 4-5× slower, which says nothing about a
catalog. Every query carries an ``available`` + two-language filter and a few excluded ids, as the
recommender's queries do, and asks for the top 10.

``edge`` is measured as a worker sees it: exact search before ``optimize()``, then again after it
(HNSW when the collection is above the index threshold). ``qdrant`` runs in qdrant-client's local
mode: pure Python that evaluates the filter point by point, a testing tool and not the server, so
every measurement stops at a time budget (``--budget-s``) and reports how many requests it timed.
Recall@10 against numpy brute force with the same filter checks that each figure comes from correct
answers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from xrec.config import Settings
from xrec.errors import CommandError
from xrec.store.base import ItemFilter, ItemPoint, VectorQuery, VectorStore

log = logging.getLogger(__name__)

LANGS = ("en", "de", "es", "fr", "ja", "zh")
CATEGORIES = ("news", "sports", "film", "music", "tech", "food", "travel", "health")
UPSERT_BATCH = 1000
WARMUP = 5
LIMIT = 10
EXCLUDED_PER_QUERY = 5
#: Queries per call in the GIL check: long calls, so thread hand-offs (5 ms switch interval) do not blur it.
GIL_CHECK_QUERIES = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="10000,100000", help="collection sizes, comma-separated (default 10000,100000)"
    )
    parser.add_argument("--dim", type=int, default=384, help="vector size (default 384, the default encoder's)")
    parser.add_argument("--queries", type=int, default=200, help="timed requests per measurement (default 200)")
    parser.add_argument("--batch", type=int, default=8, help="queries per batched request (default 8)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=10.0,
        help="stop a latency measurement after this many seconds, having timed at least one request (default 10)",
    )
    parser.add_argument("--uniform", action="store_true", help="uniformly random vectors instead of topic clusters")
    parser.add_argument("--backends", default="edge,qdrant", help="backends to measure (default edge,qdrant)")
    parser.add_argument(
        "--index-threshold",
        type=int,
        default=None,
        help="edge: items below which search stays exact (default: setting)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of vectors, payloads and queries")


@dataclass(frozen=True)
class Workload:
    vectors: np.ndarray  # (n, dim) float32, unit length
    centres: np.ndarray  # (topics, dim) topic centres the vectors spread around
    langs: np.ndarray  # (n,) index into LANGS
    categories: np.ndarray
    available: np.ndarray  # (n,) bool
    item_ids: list[str]

    def points(self, start: int, end: int) -> list[ItemPoint]:
        return [
            ItemPoint(
                self.item_ids[i],
                self.vectors[i],
                {
                    "lang": LANGS[self.langs[i]],
                    "category": CATEGORIES[self.categories[i]],
                    "available": bool(self.available[i]),
                },
            )
            for i in range(start, end)
        ]


#: Topic centres of the clustered workload and the spread of items around them.
TOPICS = 256
SPREAD = 0.6


def make_workload(n: int, dim: int, seed: int, uniform: bool = False) -> Workload:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((TOPICS, dim), dtype=np.float32))
    noise = _unit(rng.standard_normal((n, dim), dtype=np.float32))
    vectors = noise if uniform else _unit(centres[rng.integers(0, TOPICS, n)] + SPREAD * noise)
    return Workload(
        vectors=vectors,
        centres=centres,
        langs=rng.integers(0, len(LANGS), n),
        categories=rng.integers(0, len(CATEGORIES), n),
        available=rng.random(n) < 0.9,
        item_ids=[f"item-{i:07d}" for i in range(n)],
    )


def make_queries(work: Workload, count: int, size: int, seed: int, uniform: bool = False) -> list[VectorQuery]:
    """Interest-like query vectors (a topic plus noise), each with a 2-language filter and exclusions."""
    rng = np.random.default_rng(seed + 1)
    dim = work.vectors.shape[1]
    noise = _unit(rng.standard_normal((count, dim), dtype=np.float32))
    vectors = noise if uniform else _unit(work.centres[rng.integers(0, TOPICS, count)] + SPREAD * noise)
    queries = []
    for v in vectors:
        langs = tuple(str(x) for x in rng.choice(LANGS, size=2, replace=False))
        excluded = {f"item-{i:07d}" for i in rng.integers(0, size, EXCLUDED_PER_QUERY)}
        queries.append(VectorQuery(v, limit=LIMIT, filter=ItemFilter(langs=langs), exclude_ids=excluded))
    return queries


def exact_answer(work: Workload, size: int, query: VectorQuery) -> list[str]:
    """The true top-k under the query's filter and exclusions, by numpy brute force."""
    scores = work.vectors[:size] @ query.vector
    allowed = work.available[:size].copy()
    if query.filter.langs is not None:
        allowed &= np.isin(work.langs[:size], [LANGS.index(x) for x in query.filter.langs])
    for item_id in query.exclude_ids:
        allowed[int(item_id.removeprefix("item-"))] = False
    scores = np.where(allowed, scores, -np.inf)
    top = np.argsort(-scores)[: query.limit]
    return [work.item_ids[i] for i in top]


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise CommandError(f"--sizes {args.sizes!r}: expected comma-separated integers") from None
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"edge", "qdrant"}
    if unknown or not sizes or min(sizes) < LIMIT:
        raise CommandError("--backends takes edge and/or qdrant; --sizes must be at least 10 each")
    threshold = args.index_threshold if args.index_threshold is not None else Settings.from_env().store_index_threshold
    return asyncio.run(_run(sizes, backends, args, threshold))


async def _run(sizes: list[int], backends: list[str], args: argparse.Namespace, threshold: int) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    load_before = os.getloadavg()[0]
    work = make_workload(max(sizes), args.dim, args.seed, args.uniform)
    runs: list[dict[str, Any]] = []
    gil: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="xrec-bench-store-") as tmp:
        for size in sizes:
            queries = make_queries(work, args.queries + WARMUP, size, args.seed, args.uniform)
            truth = [exact_answer(work, size, q) for q in queries[WARMUP:]]
            for backend in backends:
                if backend == "edge":
                    edge_runs, gil_here = await _bench_edge(work, size, queries, truth, args, Path(tmp), threshold)
                    runs += edge_runs
                    gil = gil_here  # the largest collection's: its exact calls last longest
                else:
                    runs.append(await _bench_local(work, size, queries, truth, args))
    return {
        "dim": args.dim,
        "sizes": sizes,
        "queries": args.queries,
        "batch": args.batch,
        "limit": LIMIT,
        "excluded_per_query": EXCLUDED_PER_QUERY,
        "edge_index_threshold": threshold,
        "cpus": len(os.sched_getaffinity(0)),
        "seed": args.seed,
        "vectors": "uniform" if args.uniform else f"{TOPICS} topic clusters, spread {SPREAD}",
        "budget_s": args.budget_s,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "runs": runs,
        "edge_gil": gil,
        "total_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(_cpu_seconds() - cpu_started, 1),
    }


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the optimize child): shows contention."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


async def _bench_edge(
    work: Workload,
    size: int,
    queries: list[VectorQuery],
    truth: list[list[str]],
    args: argparse.Namespace,
    tmp: Path,
    threshold: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from xrec.store.edge import EdgeStore

    store = EdgeStore(tmp / f"edge-{size}", dim=args.dim, index_threshold=threshold)
    try:
        upsert_rate = await _load(store, work, size)
        state = await store.index_state()
        log.info("edge %d: loaded at %s items/s; timing %s queries", size, upsert_rate["upsert_per_s"], state.search)
        exact = await _measure(store, queries, truth, args)
        gil = await _gil_check(store, queries[WARMUP : WARMUP + GIL_CHECK_QUERIES])
        log.info("edge %d: optimizing (HNSW above %d items)", size, threshold)
        runs = [
            {
                "backend": "edge",
                "size": size,
                "phase": "before optimize",
                "search": state.search,
                **upsert_rate,
                **exact,
            }
        ]
        t0 = time.perf_counter()
        changed = await store.optimize()
        optimize_s = time.perf_counter() - t0
        state = await store.index_state()
        after: dict[str, Any] = {"backend": "edge", "size": size, "phase": "after optimize", "search": state.search}
        after |= {"optimize_s": round(optimize_s, 2), "optimize_changed": changed}
        after |= {"indexed_vectors": state.indexed_vectors, "segments": state.segments}
        after |= await _measure(store, queries, truth, args)
        runs.append(after)
        return runs, gil
    finally:
        await store.close()


async def _bench_local(
    work: Workload, size: int, queries: list[VectorQuery], truth: list[list[str]], args: argparse.Namespace
) -> dict[str, Any]:
    from xrec.store.qdrant import QdrantServerStore

    store = QdrantServerStore.local(f"bench_{size}", dim=args.dim)
    try:
        upsert_rate = await _load(store, work, size)
        log.info("qdrant local %d: loaded at %s items/s; timing queries", size, upsert_rate["upsert_per_s"])
        measured = await _measure(store, queries, truth, args)
        return {
            "backend": "qdrant local",
            "size": size,
            "phase": "in memory",
            "search": "brute force",
            **upsert_rate,
            **measured,
        }
    finally:
        await store.close()


async def _load(store: VectorStore, work: Workload, size: int) -> dict[str, Any]:
    await store.ensure_collection(work.vectors.shape[1])
    t0 = time.perf_counter()
    for start in range(0, size, UPSERT_BATCH):
        await store.upsert(work.points(start, min(size, start + UPSERT_BATCH)))
    elapsed = time.perf_counter() - t0
    held = await store.count()
    if held != size:
        raise CommandError(f"{store.name}: holds {held} items after loading {size}")
    return {"upsert_per_s": round(size / elapsed), "upsert_s": round(elapsed, 2)}


async def _measure(
    store: VectorStore, queries: list[VectorQuery], truth: list[list[str]], args: argparse.Namespace
) -> dict[str, Any]:
    """Latency of single-query and of ``batch``-query requests, plus recall@10 of the singles.

    Each of the two stops after ``args.queries`` requests or ``args.budget_s`` seconds, whichever
    comes first (and times at least one request).
    """
    for q in queries[:WARMUP]:
        await store.query_batch([q])
    timed = queries[WARMUP:]
    single_ms, hits = await _timed([partial(store.query_batch, [q]) for q in timed], args.budget_s)
    recall = float(
        np.mean(
            [len({h.item_id for h in got[0]} & set(want)) / len(want) for got, want in zip(hits, truth, strict=False)]
        )
    )
    batch = args.batch
    groups = [[timed[(i * batch + j) % len(timed)] for j in range(batch)] for i in range(len(timed))]
    batch_ms, _ = await _timed([partial(store.query_batch, g) for g in groups], args.budget_s)
    return {
        "single_n": len(single_ms),
        "batch_n": len(batch_ms),
        "single_p50_ms": _pct(single_ms, 50),
        "single_p99_ms": _pct(single_ms, 99),
        "batch_p50_ms": _pct(batch_ms, 50),
        "batch_p99_ms": _pct(batch_ms, 99),
        "batch_per_query_ms": round(_pct(batch_ms, 50) / batch, 3),
        "recall_at_10": round(recall, 4),
    }


async def _timed(calls: list[Callable[[], Awaitable[Any]]], budget_s: float) -> tuple[list[float], list[Any]]:
    times: list[float] = []
    results: list[Any] = []
    started = time.perf_counter()
    for call in calls:
        if times and time.perf_counter() - started > budget_s:
            break
        t0 = time.perf_counter()
        results.append(await call())
        times.append((time.perf_counter() - t0) * 1e3)
    return times, results


async def _gil_check(store: VectorStore, queries: list[VectorQuery], rounds: int = 3) -> dict[str, Any]:
    """How fast a pure-Python thread spins *while an edge call runs*, relative to spinning alone.

    Each round times the spinner alone for 0.2 s, then inside one exact-search call (before optimize,
    16 queries, so the call is long enough to see); the median over rounds resists a busy machine's
    drift. Near 1: the engine releases the GIL while it works; near 0: it holds it, and the event
    loop and every other Python thread wait for each call to return.
    """
    spins = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            spins[0] += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    fractions, call_ms = [], []
    try:
        await asyncio.sleep(0.1)
        for _ in range(rounds):
            s0, t0 = spins[0], time.perf_counter()
            await asyncio.sleep(0.2)
            alone = (spins[0] - s0) / (time.perf_counter() - t0)
            s0, t0 = spins[0], time.perf_counter()
            await store.query_batch(queries)
            inside = time.perf_counter() - t0
            fractions.append((spins[0] - s0) / (alone * inside) if alone else 0.0)
            call_ms.append(inside * 1e3)
    finally:
        stop.set()
        thread.join()
    fraction = float(np.median(fractions))
    verdict = "holds the GIL" if fraction < 0.4 else "releases the GIL" if fraction > 0.7 else "unclear (busy machine?)"
    return {
        "spin_rate_fraction": round(fraction, 3),
        "rounds": rounds,
        "queries_per_call": len(queries),
        "ms_per_call": round(float(np.median(call_ms)), 2),
        "verdict": verdict,
    }


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def _unit(m: np.ndarray) -> np.ndarray:
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


def format_table(result: dict[str, Any]) -> str:
    b50, b99 = f"{result['batch']}q p50", f"{result['batch']}q p99"
    head = (
        f"{'backend':<13} {'items':>7} {'phase':<16} {'search':<11} {'upsert/s':>9} {'optimize':>9} "
        f"{'n':>7} {'1q p50':>8} {'1q p99':>8} {b50:>8} {b99:>8} {'ms/q@b':>7} {'recall':>6}"
    )
    lines = [
        f"xrec bench store: dim {result['dim']}, top-{result['limit']}, filter available + 2 of 6 languages, "
        f"{result['excluded_per_query']} excluded ids, {result['cpus']} CPUs; latencies in ms",
        head,
        "-" * len(head),
    ]
    for r in result["runs"]:
        upsert = f"{r['upsert_per_s']:,}" if "upsert_per_s" in r else ""
        optimize = f"{r['optimize_s']:.1f}s" if "optimize_s" in r else ""
        lines.append(
            f"{r['backend']:<13} {r['size']:>7,} {r['phase']:<16} {r['search']:<11} {upsert:>9} {optimize:>9} "
            f"{str(r['single_n']) + '/' + str(r['batch_n']):>7} {r['single_p50_ms']:>8.2f} {r['single_p99_ms']:>8.2f} "
            f"{r['batch_p50_ms']:>8.2f} {r['batch_p99_ms']:>8.2f} {r['batch_per_query_ms']:>7.2f} {r['recall_at_10']:>6.3f}"
        )
    if result.get("edge_gil"):
        g = result["edge_gil"]
        lines.append(
            f"edge GIL: a Python thread spun at {g['spin_rate_fraction']:.0%} of its idle rate inside exact "
            f"{g['queries_per_call']}-query calls ({g['ms_per_call']} ms each): Qdrant Edge {g['verdict']}"
        )
    lines.append(
        f"n: timed single/batched requests (budget {result['budget_s']:g}s each); vectors: {result['vectors']}; "
        f"edge index threshold {result['edge_index_threshold']:,} items; "
        f"load avg {result['load_avg_1m'][0]}→{result['load_avg_1m'][1]}; "
        f"total {result['total_s']}s wall, {result['cpu_s']}s CPU"
    )
    return "\n".join(lines)
