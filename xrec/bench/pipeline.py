"""``xrec bench pipeline``: events/s, freshness and cost of a real worker, measured on the output topic.

One run, one broker, one machine:

1. **Catalog.** ``--items`` items with precomputed 384-d vectors (``xrec.bench.sessions``) are written
   straight into an edge store (``EdgeStore.upsert``, then ``optimize()`` when the catalog is above
   ``XREC_STORE_INDEX_THRESHOLD``, as every catalog-loading command does). The worker and the naive
   baseline each open their own copy of that directory: same data, same index.
2. **Saturation.** ``--events`` clicks (Amazon-M2 sessions replayed as users, or a generated stream)
   are written to the events topic *before* the worker starts; the worker (``xrec worker
   --no-encoder``, a subprocess) then drains them. From the recommendations topic: events/s = events
   covered / (last list − first list), where a list covers its user's events up to its trigger id (a
   list can answer several events of one user: coalescing). CPU seconds come from the worker's
   ``/proc/<pid>/stat`` between those two moments, memory from its RSS.
3. **Freshness.** Fresh events are offered at ``--rate`` (default: half the lists/s at saturation), each
   stamped with the wall clock as it is sent; latency = timestamp of the first list that covers the
   event (the worker's producer stamps it as it publishes) − the event's ``ts``.
4. **Memory.** The profile changelog topic is read back: mean serialized profile size × 100k, next to
   the worker's RSS growth while it built those profiles.
5. **Naive baseline.** ``python -m xrec.bench.naive`` processes the first ``--naive-events`` events of
   the same stream one at a time (see that module for exactly what it does), measured the same way.
6. **Review-heavy mix** (``--with-text``): a worker with the encoder drains a stream in which half the
   events are reviews whose text must be encoded.

The broker is ``XREC_KAFKA_BOOTSTRAP`` when set, else a private local broker on a free port that is
stopped at the end. Every run uses its own app id, topics and temp directory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from xrec.bench.sessions import Catalog, Workload, build_workload, stable_fraction
from xrec.bench.texts import mind_news, sample_sentences
from xrec.config import Settings
from xrec.errors import CommandError
from xrec.kafka import read_to_end
from xrec.metrics import CONSUMER_LAG_INTERVAL_S
from xrec.topics import own_topics_env
from xrec.worker_process import EMPTY_METRICS, WORKER_COMMAND, MetricSamples, WorkerProcess

log = logging.getLogger(__name__)

DIM = 384
WORKER_START_TIMEOUT_S = 240.0
STALL_TIMEOUT_S = 90.0
SAMPLE_EVERY_S = 0.1
#: How often the worker's /metrics is read while waiting; rendering it costs the worker CPU, so not too often.
METRICS_POLL_S = 2.0
#: How long a drained worker may take to commit its last events (Faust commits every 2.8 s).
SETTLE_TIMEOUT_S = 60.0
REVIEW_SHARE = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=10_000, help="catalog size (default 10000)")
    parser.add_argument("--users", type=int, default=5_000, help="users in the replayed stream (default 5000)")
    parser.add_argument("--events", type=int, default=20_000, help="events drained at saturation (default 20000)")
    parser.add_argument(
        "--load-levels",
        default="10,30,50,70,90",
        help="offered loads of the latency curve, in percent of the lists/s at saturation (default 10,30,50,70,90)",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="one offered load in events/s instead of --load-levels")
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="length of each level of the latency curve (default 10)"
    )
    parser.add_argument("--plot", type=Path, help="write the latency-vs-load curve here (PNG)")
    parser.add_argument(
        "--naive-events", type=int, default=3_000, help="events the naive baseline processes (default 3000; 0: skip)"
    )
    parser.add_argument(
        "--with-text", action="store_true", help="also run the review-heavy mix (needs the prepared model)"
    )
    parser.add_argument("--text-events", type=int, default=2_000, help="events of the review-heavy mix (default 2000)")
    parser.add_argument(
        "--held-profiles",
        type=int,
        default=-1,
        help="profiles the worker holds before the run, restored from its changelog: returning users U0… with "
        "20 events each (default: half the users; 0: every user is new)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="Amazon-M2 sessions folder (default: XREC_DATA_DIR/amazon-m2)"
    )
    parser.add_argument("--generated", action="store_true", help="use a generated stream even if the data is there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--py-spy", type=Path, help="record the worker with py-spy during saturation into this file")
    parser.add_argument(
        "--py-spy-level",
        type=int,
        help="record the level of the latency curve at this percentage instead of saturation",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, stores) for inspection")
    parser.add_argument(
        "--workers",
        default="1",
        help="several workers in one consumer group, e.g. 2 or 1,2 (each count on fresh topics; see xrec/bench/scale.py)",
    )
    parser.add_argument(
        "--store",
        choices=("edge", "qdrant"),
        default="edge",
        help="with --workers: qdrant starts the Qdrant server binary (XREC_QDRANT_BIN) and every worker shares it",
    )
    parser.add_argument(
        "--kill-one", action="store_true", help="with --workers N>1: SIGKILL one worker during a 50%% level"
    )


# --- process measurement -------------------------------------------------------------------------------


class ProcSampler(threading.Thread):
    """Samples a process's CPU seconds (user+system) and RSS from /proc every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name=f"sampler-{pid}")
        self.pid = pid
        self.samples: list[tuple[float, float, int]] = []  # (wall s, cpu s, rss bytes)
        self.thread_samples: list[tuple[float, dict[str, float]]] = []  # (wall s, cpu s by thread name), every 1 s
        self._halt = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def read(self) -> tuple[float, int] | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            statm = Path(f"/proc/{self.pid}/statm").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime (fields 14, 15 of stat)
        return cpu, int(statm.split()[1]) * self._page

    def read_threads(self) -> dict[str, float]:
        """CPU seconds by thread name (numbered pool threads summed: ``edge-search-3`` → ``edge-search``)."""
        out: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            key = re.sub(r"[-_]\d+$", "", name) or name
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / self._tick
        return out

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            got = self.read()
            if got is None:
                return
            now = time.time()
            self.samples.append((now, got[0], got[1]))
            if n % 10 == 0:
                self.thread_samples.append((now, self.read_threads()))
            n += 1
            self._halt.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)

    def cpu_at(self, wall_s: float) -> float:
        return float(np.interp(wall_s, [s[0] for s in self.samples], [s[1] for s in self.samples]))

    def rss_at(self, wall_s: float) -> int:
        return int(np.interp(wall_s, [s[0] for s in self.samples], [s[2] for s in self.samples]))

    def threads_between(self, start_s: float, end_s: float) -> dict[str, float]:
        """CPU seconds each thread (by name) used between two moments (1 s resolution)."""
        before = [t for t in self.thread_samples if t[0] <= start_s]
        after = [t for t in self.thread_samples if t[0] >= end_s]
        first = before[-1][1] if before else (self.thread_samples[0][1] if self.thread_samples else {})
        last = after[0][1] if after else (self.thread_samples[-1][1] if self.thread_samples else {})
        return {name: last[name] - first.get(name, 0.0) for name in last if last[name] - first.get(name, 0.0) > 0}


class SampledProcess(WorkerProcess):
    """A child of the bench (worker or baseline) whose CPU, memory and threads are sampled while it runs."""

    def start(self, *, own_session: bool = False) -> SampledProcess:
        super().start(own_session=own_session)
        assert self.pid is not None
        self.sampler = ProcSampler(self.pid)
        self.sampler.start()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        code = super().stop(sig, timeout_s)
        self.sampler.stop()
        return code


# --- Kafka helpers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutRecord:
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


async def produce(kwargs: dict[str, Any], topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(linger_ms=20, max_batch_size=1 << 20, **kwargs)
    await producer.start()
    n = 0
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, key=key, value=value))
            n += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


@dataclass(frozen=True)
class Paced:
    """What pacing the offered events achieved: the rate, and when the broker acknowledged each event
    (``acked_at``, wall-clock seconds by event id), so a latency can be split into the producer's part
    (ts → in Kafka) and the worker's (in Kafka → list)."""

    rate: float
    acked_at: dict[str, float]


async def produce_paced(kwargs: dict[str, Any], topic: str, events: list[dict[str, Any]], rate: float) -> Paced:
    """Send ``events`` at ``rate``/s, each stamped with the wall clock as it goes."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(linger_ms=2, **kwargs)
    await producer.start()
    acked_at: dict[str, float] = {}

    def acked(event_id: str) -> Callable[[asyncio.Future[Any]], None]:
        def record(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                acked_at[event_id] = time.time()

        return record

    try:
        started = time.monotonic()
        sent = 0
        while sent < len(events):
            due = min(len(events), int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                event = events[sent]
                event["ts"] = int(time.time() * 1000)
                delivery = await producer.send(topic, key=event["user_id"].encode(), value=orjson.dumps(event))
                delivery.add_done_callback(acked(event["event_id"]))
                sent += 1
            await asyncio.sleep(0.005)
        await producer.flush()
        elapsed = time.monotonic() - started
    finally:
        await producer.stop()
    return Paced(len(events) / elapsed if elapsed > 0 else math.inf, acked_at)


async def read_topic(kwargs: dict[str, Any], topic: str, timeout_s: float = 120.0) -> list[OutRecord]:
    """Every record of ``topic`` up to its end as of when the read starts."""
    out: list[OutRecord] = []
    await read_to_end(kwargs, topic, lambda m: out.append(OutRecord(m.key, m.value, m.timestamp)), timeout_s=timeout_s)
    return out


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


# --- measuring lists -----------------------------------------------------------------------------------


@dataclass
class Coverage:
    """Which published list first answered each event (a list answers its user's events up to its trigger)."""

    covered: int
    first_list_s: float
    last_list_s: float
    lists: int
    answered_at: dict[str, float] = field(default_factory=dict)  # event_id -> wall s of its first list

    @property
    def events_per_s(self) -> float:
        span = self.last_list_s - self.first_list_s
        return self.covered / span if span > 0 else math.nan

    @property
    def lists_per_s(self) -> float:
        span = self.last_list_s - self.first_list_s
        return self.lists / span if span > 0 else math.nan


def coverage(events: list[dict[str, Any]], records: list[OutRecord]) -> Coverage:
    position: dict[str, tuple[str, int]] = {}
    per_user: dict[str, list[str]] = {}
    for e in events:
        seq = per_user.setdefault(e["user_id"], [])
        position[e["event_id"]] = (e["user_id"], len(seq))
        seq.append(e["event_id"])
    done: dict[str, int] = {}  # user -> events answered so far
    answered: dict[str, float] = {}
    times = []
    lists = 0
    for rec in sorted(records, key=lambda r: r.timestamp_ms):
        if rec.value is None:
            continue
        trigger = orjson.loads(rec.value).get("trigger_event_id")
        if trigger not in position:
            continue
        lists += 1
        user, index = position[trigger]
        start = done.get(user, 0)
        if index + 1 > start:
            for event_id in per_user[user][start : index + 1]:
                answered[event_id] = rec.timestamp_ms / 1000.0
            done[user] = index + 1
        times.append(rec.timestamp_ms / 1000.0)
    if not times:
        return Coverage(0, math.nan, math.nan, 0)
    return Coverage(sum(done.values()), min(times), max(times), lists, answered)


def unanswered(
    events: list[dict[str, Any]], cov: Coverage, records: list[OutRecord], limit: int = 20
) -> list[dict[str, Any]]:
    """The first ``limit`` events no list answered, each with where it sat in its user's sequence and
    the triggers of that user's lists: what a run that missed events must show to be diagnosed."""
    triggers: dict[str, list[str]] = {}
    for rec in records:
        if rec.value is not None and rec.key is not None:
            trigger = orjson.loads(rec.value).get("trigger_event_id")
            triggers.setdefault(rec.key.decode(errors="replace"), []).append(str(trigger))
    per_user: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for e in events:
        index = per_user[e["user_id"]] = per_user.get(e["user_id"], -1) + 1
        if e["event_id"] not in cov.answered_at and len(out) < limit:
            out.append({"event_id": e["event_id"], "user_id": e["user_id"], "index_in_user": index, "type": e["type"]})
    for row in out:
        row["user_events"] = per_user[row["user_id"]] + 1
        row["list_triggers"] = triggers.get(row["user_id"], [])[-5:]
    return out


def comma_ints(spec: str, flag: str, example: str, low: int, high: int) -> list[int]:
    """``1,2`` → ``[1, 2]``: a flag's comma-separated whole numbers, each within ``low``..``high``."""
    try:
        values = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"{flag} {spec!r}: expected numbers such as {example}") from None
    if not values or any(not low <= v <= high for v in values):
        raise CommandError(f"{flag} {spec!r}: each must be from {low} to {high}")
    return values


def worker_counts(spec: str) -> list[int]:
    return comma_ints(spec, "--workers", "1,2", 1, 1_000)


def parse_levels(spec: str) -> list[int]:
    """Offered loads in percent of saturation (above 0, at most 200)."""
    return comma_ints(spec, "--load-levels", "10,30,50", 1, 200)


def batch_phases(before: MetricSamples, after: MetricSamples) -> dict[str, Any]:
    """Where the worker's batches spent their time between two readings of its metrics: batches, mean
    events per batch, and the mean seconds of each phase (``xrec_batch_seconds``) per batch."""
    from xrec.metrics import BATCH_PHASES

    def delta(name: str, **labels: str) -> float:
        return after.sum(name, **labels) - before.sum(name, **labels)

    batches = delta("xrec_batch_events_count")
    out: dict[str, Any] = {
        "batches": batches,
        "events_per_batch": delta("xrec_batch_events_sum") / batches if batches else math.nan,
    }
    for phase in BATCH_PHASES:
        count = delta("xrec_batch_seconds_count", phase=phase)
        out[f"{phase}_ms"] = 1000.0 * delta("xrec_batch_seconds_sum", phase=phase) / count if count else math.nan
    return out


#: The freshness a user asks of a list: the bench reports the fresh rate a worker serves within it.
FRESH_P99_MS = 100.0


def fresh_rate_within(curve: list[dict[str, Any]], p99_ms: float = FRESH_P99_MS) -> dict[str, Any]:
    """The offered rate of fresh events up to which the list's p99 stays within ``p99_ms``, from one
    latency curve: interpolated between the last level within it and the first level above it.

    The levels are shares of the backlog's saturation, where batches are large and cheap; fresh events
    come a few at a time, so this is the figure to size workers by (README, "Fresh events never wait").
    """
    levels = sorted(curve, key=lambda c: c["offered_rate"])
    out: dict[str, Any] = {"p99_ms": p99_ms, "events_per_s": None, "bound": "none"}
    if not levels:
        return out

    def within(level: dict[str, Any]) -> bool:  # an unanswered event is a list that never came
        return level["answered"] == level["events"] and level["latency_ms"]["p99"] <= p99_ms

    for i, level in enumerate(levels):
        if within(level):
            continue
        if i == 0:
            return {**out, "events_per_s": level["offered_rate"], "bound": "below"}  # even the lowest level misses
        low = levels[i - 1]
        r0, r1 = low["offered_rate"], level["offered_rate"]
        q0, q1 = low["latency_ms"]["p99"], level["latency_ms"]["p99"]
        rate = r0 + (p99_ms - q0) * (r1 - r0) / (q1 - q0) if q1 > p99_ms else r0  # else: it lost events
        return {**out, "events_per_s": rate, "bound": "about"}
    return {**out, "events_per_s": levels[-1]["offered_rate"], "bound": "at least"}  # every level within it


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan}
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


def cost(child: SampledProcess, cov: Coverage) -> dict[str, Any]:
    """CPU per 1,000 events and RSS growth of ``child`` between the first and the last list."""
    s = child.sampler
    if len(s.samples) < 2 or not cov.covered or math.isnan(cov.first_list_s):
        return {"cpu_s_per_1k_events": math.nan, "cpu_util": math.nan, "rss_mb_end": math.nan}
    cpu = s.cpu_at(cov.last_list_s) - s.cpu_at(cov.first_list_s)
    span = cov.last_list_s - cov.first_list_s
    threads = s.threads_between(cov.first_list_s, cov.last_list_s)
    total = sum(threads.values())
    return {
        "cpu_s_per_1k_events": 1000.0 * cpu / cov.covered,
        "cpu_util": cpu / span if span > 0 else math.nan,
        "cpu_share_by_thread": {k: v / total for k, v in sorted(threads.items(), key=lambda kv: -kv[1])}
        if total
        else {},
        "rss_mb_start": s.rss_at(cov.first_list_s) / 2**20,
        "rss_mb_end": s.rss_at(cov.last_list_s) / 2**20,
    }


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    settings: Settings
    tmp: Path
    bootstrap: str = ""
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    broker: Any = None
    profile: dict[str, Any] | None = None  # top costs from --py-spy FILE.txt

    @property
    def kafka_kwargs(self) -> dict[str, Any]:
        from xrec.kafka import aiokafka_kwargs

        return aiokafka_kwargs(self.settings, self.bootstrap)

    @property
    def connection(self) -> Any:
        from xrec.kafka import KafkaConnection

        return KafkaConnection.from_settings(self.settings, self.bootstrap)

    # broker ----------------------------------------------------------------------------------------
    def start_broker(self) -> None:
        if self.settings.kafka_bootstrap:
            self.bootstrap = self.settings.kafka_bootstrap
            log.info("using the Kafka cluster at %s (XREC_KAFKA_BOOTSTRAP)", self.bootstrap)
            return
        from xrec.broker import LocalBroker, default_cache_dir, free_port

        self.broker = LocalBroker(
            port=free_port(), data_dir=self.tmp / "kafka", cache_dir=default_cache_dir(self.settings)
        )
        log.info("starting a private Kafka broker for this run in %s", self.tmp / "kafka")
        self.broker.start()
        self.bootstrap = self.broker.bootstrap

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()

    def close(self, *, keep: bool) -> None:
        """Stop the private broker; remove the temp directory unless asked to keep it."""
        self.stop_broker()
        if keep:
            log.info("kept %s", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # names -----------------------------------------------------------------------------------------
    def worker_settings(self, name: str) -> tuple[Settings, dict[str, str]]:
        """Settings and environment of one worker: its own app id, topics, store and web port."""
        from xrec.broker import free_port

        tag = f"{self.tag}-{name}"
        env = {
            "XREC_KAFKA_BOOTSTRAP": self.bootstrap,
            "XREC_APP_ID": f"xrec-bench-{tag}",
            "XREC_STORE_PATH": str(self.tmp / f"store-{name}"),
            "XREC_WEB_PORT": str(free_port()),
            **own_topics_env(f"bench-{tag}"),
        }
        return Settings.from_env({**os.environ, **env}), env

    # catalog ---------------------------------------------------------------------------------------
    def build_store(self, catalog: Catalog, names: list[str]) -> dict[str, float]:
        """Load the catalog into one edge store, optimize it if large, then copy it for each of ``names``."""
        from xrec.store.edge import EdgeStore

        first, _ = self.worker_settings(names[0])
        path = first.store_dir / first.collection
        store = EdgeStore(path, dim=catalog.dim, index_threshold=self.settings.store_index_threshold)
        ts = int(time.time() * 1000) - 86_400_000

        async def load() -> tuple[float, float]:
            t0 = time.perf_counter()
            await store.ensure_collection(catalog.dim)
            step = 10_000
            for start in range(0, len(catalog), step):
                await store.upsert(catalog_points(catalog, start, min(len(catalog), start + step), ts))
            loaded = time.perf_counter() - t0
            t1 = time.perf_counter()
            if len(catalog) >= self.settings.store_index_threshold:
                await store.optimize()
            optimized = time.perf_counter() - t1
            state = await store.index_state()
            await store.close()
            search.append(state.search)
            log.info(
                "catalog: %d items loaded in %.1fs, optimize %.1fs, search %s",
                len(catalog),
                loaded,
                optimized,
                state.search,
            )
            return loaded, optimized

        search: list[str] = []
        loaded, optimized = run_async(load())
        self.publish_language_stats(first, catalog)
        for name in names[1:]:
            other, _ = self.worker_settings(name)
            shutil.copytree(first.store_dir, other.store_dir)
        return {"load_s": loaded, "optimize_s": optimized, "search": search[0]}

    def publish_language_stats(self, settings: Settings, catalog: Catalog) -> None:
        """What an indexer would have published for this catalog: the statistics of the neutral space
        (``streams/language_stats.py``), so the worker ranks in it as it would after indexing the items."""
        from xrec.space import CountedStats, LanguageStats
        from xrec.topics import items_group_id, stats_part_key
        from xrec.vectors import VectorSpace

        stats = LanguageStats(catalog.dim)
        langs = np.asarray(catalog.langs)
        for start in range(0, len(catalog), 10_000):
            stop = min(len(catalog), start + 10_000)
            vectors = catalog.vectors(start, stop)
            for lang in np.unique(langs[start:stop]):
                stats.add(str(lang), vectors[langs[start:stop] == lang])
        self.topics_for(settings)
        space = VectorSpace.precomputed(catalog.dim)  # the bench's workers run without an encoder
        key = stats_part_key(items_group_id(settings, space), 0).encode()
        run_async(
            produce(self.kafka_kwargs, settings.topic_language_stats, [(key, CountedStats(stats, -1).to_bytes())])
        )

    def topics_for(self, settings: Settings) -> None:
        from xrec.topics import prepare_topics

        run_async(prepare_topics(settings, self.bootstrap))

    # workers ---------------------------------------------------------------------------------------
    def start_worker(self, name: str, env: dict[str, str], *, with_encoder: bool) -> SampledProcess:
        argv = [*WORKER_COMMAND, *([] if with_encoder else ["--no-encoder", "--dim", str(DIM)])]
        log_path = self.tmp / f"worker-{name}.log"
        log_path.unlink(missing_ok=True)
        child = SampledProcess(
            {**os.environ, **env}, log_path, int(env["XREC_WEB_PORT"]), argv, name=f"worker {name}"
        ).start()
        log.info("started worker %s (pid %s), log %s", name, child.pid, child.log_path)
        return child

    def wait_for_events(self, child: SampledProcess, target: int, startup: bool = False) -> MetricSamples:
        """Poll the worker's metrics until it has handled ``target`` events (processed, duplicate or DLQ)."""
        restore_s = self.args.held_profiles / 500.0  # a worker restores its changelog (~1k profiles/s here) first
        deadline = time.monotonic() + (WORKER_START_TIMEOUT_S + restore_s if startup else STALL_TIMEOUT_S)
        last = -1.0
        while True:
            if not child.alive():
                raise child.failure(f"exited with {child.exited()}")
            metrics = child.metrics_or_empty()
            done = metrics.sum("xrec_events_total")
            if metrics.samples and done >= target:
                return self._settled(child, metrics)
            if done > last:
                last = done
                deadline = max(deadline, time.monotonic() + STALL_TIMEOUT_S)
            if time.monotonic() > deadline:
                lag = {
                    f"{labels.get('topic')}[{labels.get('partition')}]": value
                    for name, labels, value in metrics.samples
                    if name == "xrec_consumer_lag" and value
                }
                log.warning(
                    "%s handled %d of %d events and stopped making progress (consumer lag: %s); from %s:\n%s",
                    child.name,
                    done,
                    target,
                    lag or "0 on every partition",
                    child.log_path,
                    child.first_error(),
                )
                return metrics
            time.sleep(METRICS_POLL_S)

    def _settled(self, child: SampledProcess, metrics: MetricSamples) -> MetricSamples:
        """Events are counted before their lists are in Kafka: wait until the worker's group has committed
        every event it read (``xrec_consumer_lag``, from the broker, is 0 on each partition it owns). A
        worker commits an event only once its batch's lists are written, so the topic then holds them all;
        a fixed pause after the count stopped moving missed the last list on a slow machine."""
        handled_at = time.monotonic()
        fresh_after = handled_at + CONSUMER_LAG_INTERVAL_S + 0.5  # a lag reading taken after every event was handled
        while time.monotonic() < handled_at + SETTLE_TIMEOUT_S:
            scrape = child.metrics_or_empty()
            if scrape.samples:
                metrics = scrape
                lags = [value for name, _, value in scrape.samples if name == "xrec_consumer_lag"]
                if lags and not any(lags) and time.monotonic() >= fresh_after:
                    return metrics
            time.sleep(METRICS_POLL_S)
        log.warning(
            "%s: its consumer lag did not reach 0 within %.0f s; lists still on their way are not counted",
            child.name,
            SETTLE_TIMEOUT_S,
        )
        return metrics

    @contextmanager
    def py_spy(self, pid: int, seconds: float) -> Iterator[None]:
        """Record the worker for ``seconds`` into ``--py-spy``'s file; 0 records nothing (another phase or level
        is the one profiled, and its file must not be overwritten)."""
        if self.args.py_spy is None or seconds <= 0:
            yield
            return
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise CommandError("--py-spy: py-spy is not installed (pip install -e '.[dev]')")
        out = Path(self.args.py_spy)
        fmt = "speedscope" if out.suffix == ".json" else "raw" if out.suffix in (".txt", ".folded") else "flamegraph"
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                fmt,
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            yield
        finally:
            try:
                _, err = proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                log.warning("py-spy failed (%s): %s", proc.returncode, err.decode(errors="replace").strip()[-300:])
            else:
                log.info("py-spy profile of the worker written to %s", out)
                if fmt == "raw":
                    self.profile = summarize_collapsed(out)

    # phases ----------------------------------------------------------------------------------------
    def saturation_and_latency(self, work: Workload) -> dict[str, Any]:
        settings, env = self.worker_settings("xrec")
        self.topics_for(settings)
        kw = self.kafka_kwargs
        if self.args.held_profiles:
            held = self.seed_profiles(settings, work.catalog, self.args.held_profiles)
        t0 = time.perf_counter()
        run_async(produce(kw, settings.topic_events, encoded_events(work.events)))
        preload_s = time.perf_counter() - t0
        log.info("preloaded %d events in %.1fs; starting the worker", len(work.events), preload_s)
        started_at = time.time()
        worker = self.start_worker("xrec", env, with_encoder=False)
        try:
            budget = max(30.0, len(work.events) / 200.0)
            before = EMPTY_METRICS
            with self.py_spy(worker.pid or 0, budget if self.args.py_spy and self.args.py_spy_level is None else 0):
                metrics = self.wait_for_events(worker, len(work.events), startup=True)
            out = run_async(read_topic(kw, settings.topic_recommendations))
            sat = coverage(work.events, out)
            if not sat.covered:
                raise worker.failure("published no list")
            missed = unanswered(work.events, sat, out)
            if missed:
                log.warning(
                    "%d of %d events got no list (handled by outcome: %s); first: %s; from %s:\n%s",
                    len(work.events) - sat.covered,
                    len(work.events),
                    metrics.by_label("xrec_events_total", "outcome"),
                    missed[:3],
                    worker.log_path,
                    worker.first_error(),
                )
            result: dict[str, Any] = {
                "events": len(work.events),
                "covered": sat.covered,
                "lists": sat.lists,
                "events_per_s": sat.events_per_s,
                "lists_per_s": sat.lists_per_s,
                "seconds": sat.last_list_s - sat.first_list_s,
                "dlq": metrics.sum("xrec_events_total", outcome="dlq"),
                "handled": metrics.by_label("xrec_events_total", "outcome"),
                "unanswered": missed,
                "preload_s": preload_s,
                "first_list_after_start_s": sat.first_list_s - started_at,
                **cost(worker, sat),
                "stages_s": {
                    stage: metrics.sum("xrec_stage_seconds_sum", stage=stage)
                    for stage in ("decode", "encode", "profile", "query", "rank", "publish")
                },
                "batches": batch_phases(before, metrics),
            }
            if self.args.held_profiles:
                result["held_profiles"] = held
            curve = self.load_curve(worker, settings, work, sat.lists_per_s, len(work.events))
            memory = self.memory(worker, settings, sat, work)
        finally:
            worker.stop()
            shutil.rmtree(settings.worker_state_dir, ignore_errors=True)
        out = {"saturation": result, "load_curve": curve, "fresh": fresh_rate_within(curve), "memory": memory}
        if self.profile is not None:
            out["profile"] = self.profile
        return out

    def load_curve(
        self, worker: SampledProcess, settings: Settings, work: Workload, lists_per_s: float, handled: int
    ) -> list[dict[str, Any]]:
        """Freshness at several offered loads, in percent of the lists/s at saturation: fresh traffic gets
        one list per event, and under a backlog a worker coalesces (one list per user per batch), so the
        events/s of saturation would overstate what it can be offered."""
        levels = (
            [(None, self.args.rate)]
            if self.args.rate
            else [(p, p / 100.0 * lists_per_s) for p in parse_levels(self.args.load_levels)]
        )
        curve = []
        used = 0
        for percent, rate in levels:
            rate = max(1.0, rate)
            n = max(1, int(rate * self.args.latency_seconds))
            source = [work.events[(used + i) % len(work.events)] for i in range(n)]
            used += n
            events = [{**e, "event_id": f"L{percent}-{i}"} for i, e in enumerate(source)]
            profile_this = self.args.py_spy is not None and self.args.py_spy_level == percent
            with self.py_spy(worker.pid or 0, self.args.latency_seconds if profile_this else 0):
                level = self.offer(worker, settings, events, rate, handled)
            handled += n
            level["percent_of_saturation"] = percent
            curve.append(level)
            log.info(
                "offered %.0f events/s (%s%% of saturation): p50 %.0f ms, p99 %.0f ms, %d/%d answered",
                rate,
                percent,
                level["latency_ms"]["p50"],
                level["latency_ms"]["p99"],
                level["answered"],
                n,
            )
        return curve

    def offer(
        self, worker: SampledProcess, settings: Settings, events: list[dict[str, Any]], rate: float, handled: int
    ) -> dict[str, Any]:
        """Send ``events`` at ``rate``, each stamped as it goes, and measure when its list came."""
        n = len(events)
        cpu0 = worker.sampler.read()
        wall0 = time.time()
        before = worker.metrics_or_empty()
        paced = run_async(produce_paced(self.kafka_kwargs, settings.topic_events, events, rate))
        cpu_sent = worker.sampler.read()
        wall_sent = time.time()
        after_send = worker.metrics_or_empty()
        self.wait_for_events(worker, handled + n)
        cpu1 = worker.sampler.read()
        wanted = {e["event_id"] for e in events}
        out = [
            r
            for r in run_async(read_topic(self.kafka_kwargs, settings.topic_recommendations))
            if r.value is not None and orjson.loads(r.value).get("trigger_event_id") in wanted
        ]
        cov = coverage(events, out)
        answered = [e for e in events if e["event_id"] in cov.answered_at]
        delays = [1000.0 * (cov.answered_at[e["event_id"]] - e["ts"] / 1000.0) for e in answered]
        in_kafka = [e for e in answered if e["event_id"] in paced.acked_at]
        return {
            "offered_rate": rate,
            "achieved_rate": paced.rate,
            "events": n,
            "answered": len(delays),
            "lists": cov.lists,
            "latency_ms": percentiles(delays),
            # the two parts of it: the bench's producer until the broker acknowledged, then the worker
            "producer_ms": percentiles([1000.0 * (paced.acked_at[e["event_id"]] - e["ts"] / 1000.0) for e in in_kafka]),
            "worker_ms": percentiles(
                [1000.0 * (cov.answered_at[e["event_id"]] - paced.acked_at[e["event_id"]]) for e in in_kafka]
            ),
            "cpu_s_per_1k_events": 1000.0 * (cpu1[0] - cpu0[0]) / n if cpu0 and cpu1 else math.nan,
            "cpu_util": (cpu_sent[0] - cpu0[0]) / (wall_sent - wall0) if cpu0 and cpu_sent else math.nan,
            "batches": batch_phases(before, after_send),
        }

    def memory(self, worker: SampledProcess, settings: Settings, sat: Coverage, work: Workload) -> dict[str, Any]:
        changelog = f"{settings.app_id}-profiles-changelog"
        latest: dict[bytes, int] = {}
        for rec in run_async(read_topic(self.kafka_kwargs, changelog)):
            if rec.key is not None:
                if rec.value is None:
                    latest.pop(rec.key, None)
                else:
                    latest[rec.key] = len(rec.value)
        profiles = len(latest)
        mean = sum(latest.values()) / profiles if profiles else math.nan
        rss = cost(worker, sat)
        grown = (rss["rss_mb_end"] - rss["rss_mb_start"]) if "rss_mb_start" in rss else math.nan
        new_users = work.users
        now = worker.sampler.read()
        return {
            "profiles": profiles,
            "profile_bytes_mean": mean,
            "profile_mb_per_100k": mean * 100_000 / 2**20,
            "rss_growth_mb": grown,
            "rss_mb_per_100k_new_profiles": grown * 100_000 / new_users if new_users else math.nan,
            "rss_mb_now": now[1] / 2**20 if now else math.nan,
        }

    def seed_profiles(self, settings: Settings, catalog: Catalog, count: int) -> dict[str, Any]:
        """Write ``count`` profiles into the worker's changelog so it starts holding them (users U0…)."""
        from xrec.kafka import TopicSpec, create_topics

        changelog = f"{settings.app_id}-profiles-changelog"
        run_async(create_topics(self.connection, [TopicSpec(changelog, settings.partitions, compacted=True)]))
        t0 = time.perf_counter()
        sizes = 0

        def records() -> Iterator[tuple[bytes, bytes]]:
            nonlocal sizes
            for user, raw in synthetic_profiles(catalog, count, self.args.seed):
                sizes += len(raw)
                yield user.encode(), raw

        run_async(produce(self.kafka_kwargs, changelog, records()))
        seconds = time.perf_counter() - t0
        log.info("seeded %d profiles (%.0f MB) into %s in %.1fs", count, sizes / 2**20, changelog, seconds)
        return {"count": count, "bytes_mean": sizes / count, "seed_s": seconds}

    def naive(self, work: Workload) -> dict[str, Any]:
        settings, env = self.worker_settings("naive")
        n = min(self.args.naive_events, len(work.events))
        events = work.events[:n]
        from xrec.kafka import TopicSpec, create_topics

        run_async(
            create_topics(
                self.connection,
                [
                    TopicSpec(settings.topic_events, settings.partitions),
                    TopicSpec(settings.topic_recommendations, settings.partitions),
                ],
            )
        )
        run_async(produce(self.kafka_kwargs, settings.topic_events, encoded_events(events)))
        argv = [
            sys.executable, "-m", "xrec.bench.naive",
            "--bootstrap", self.bootstrap,
            "--events-topic", settings.topic_events,
            "--output-topic", settings.topic_recommendations,
            "--group", f"{settings.app_id}-naive",
            "--dim", str(DIM),
            "--stop-after", str(n),
        ]  # fmt: skip
        log_path = self.tmp / "naive.log"
        log_path.unlink(missing_ok=True)
        child = SampledProcess({**os.environ, **env}, log_path, argv=argv, name="naive baseline").start()
        log.info("naive baseline (pid %s) processing %d events", child.pid, n)
        try:
            code = child.wait(timeout_s=max(600.0, n / 2.0))
        except subprocess.TimeoutExpired:
            child.stop()
            raise child.failure("did not finish") from None
        child.stop()
        if code != 0:
            raise child.failure(f"exited with {code}")
        out = run_async(read_topic(self.kafka_kwargs, settings.topic_recommendations))
        cov = coverage(events, out)
        return {
            "events": n,
            "covered": cov.covered,
            "lists": cov.lists,
            "events_per_s": cov.events_per_s,
            "seconds": cov.last_list_s - cov.first_list_s,
            **cost(child, cov),
        }

    def review_mix(self, work: Workload) -> dict[str, Any]:
        from xrec.encoder import encoder_identity
        from xrec.modelhub import resolve_model

        try:
            model_dir = resolve_model(self.settings)
        except Exception as exc:  # the result says why; the other figures stand
            log.error("review-heavy mix not run: the text model is not available: %s", exc)
            return {"status": "not run", "reason": f"text model not available: {exc}"}
        settings, env = self.worker_settings("text")
        self.topics_for(settings)
        texts = review_texts(self.args.seed, self.settings.shared_data("mind-xmind"))
        n = min(self.args.text_events, len(work.events))
        events = []
        for e in work.events[:n]:
            if stable_fraction(e["event_id"], "review") < REVIEW_SHARE:
                rating = 1 + int(stable_fraction(e["event_id"], "rating") * 5)
                e = {**e, "type": "review", "rating": rating, "text": texts[hash_index(e["event_id"], len(texts))]}
            events.append(e)
        run_async(produce(self.kafka_kwargs, settings.topic_events, encoded_events(events)))
        worker = self.start_worker("text", env, with_encoder=True)
        try:
            metrics = self.wait_for_events(worker, n, startup=True)
            out = run_async(read_topic(self.kafka_kwargs, settings.topic_recommendations))
            cov = coverage(events, out)
            reviews = sum(1 for e in events if e["type"] == "review")
            return {
                "status": "ok",
                "model": str(model_dir),
                "encoder": "-".join(encoder_identity(settings)),  # what the worker's settings resolve to
                "events": n,
                "reviews": reviews,
                "covered": cov.covered,
                "events_per_s": cov.events_per_s,
                "encode_s": metrics.sum("xrec_stage_seconds_sum", stage="encode"),
                "seconds": cov.last_list_s - cov.first_list_s,
                **cost(worker, cov),
            }
        finally:
            worker.stop()
            shutil.rmtree(settings.worker_state_dir, ignore_errors=True)


#: Frames of a thread that waits rather than works: left out of a profile's shares.
IDLE_FRAMES = ("select (selectors.py", "wait (threading.py", "_find_and_load", "epoll")


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the busiest functions in a py-spy raw (collapsed-stack) profile.

    Waiting and importing frames are left out, so shares are of the time the worker's Python threads
    worked. Native threads without Python frames (Qdrant Edge's ``edge-search``) are not in it.
    """
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit() or any(f in stack for f in IDLE_FRAMES):
            continue
        n = int(count)
        busy += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            within[f] = within.get(f, 0) + n
    if not busy:
        return {"busy_samples": 0, "self": [], "inclusive_xrec": []}

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, n / busy) for f, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    entry = (
        "<module>",
        "<listcomp>",
        "<setcomp>",
        "<dictcomp>",
        "(xrec/cli.py)",
        "(xrec/commands/",
        "(streams/worker.py)",
    )
    xrec_frames = {
        f: n for f, n in within.items() if ("(xrec/" in f or "(streams/" in f) and not any(e in f for e in entry)
    }
    return {"busy_samples": busy, "self": ranked(own), "inclusive_xrec": ranked(xrec_frames)}


def encoded_events(events: list[dict[str, Any]]) -> Iterator[tuple[bytes, bytes]]:
    for e in events:
        yield e["user_id"].encode(), orjson.dumps(e)


def hash_index(key: str, n: int) -> int:
    return int(stable_fraction(key, "text") * n)


def review_texts(seed: int, mind_dir: Path) -> list[str]:
    """Review-length texts in several languages: MIND titles/abstracts when present, else the project's sample."""
    out = [f"{title}. {abstract}".strip(". ") for title, abstract in mind_news(mind_dir, per_file=2000)]
    if not out:
        sentences = sample_sentences()
        rng = random.Random(seed)
        out = [" ".join(rng.choice(sentences) for _ in range(rng.choice((1, 2, 3)))) for _ in range(500)]
    return out


def catalog_points(catalog: Catalog, start: int, stop: int, ts: int) -> list[Any]:
    """Items ``start``..``stop`` of the catalog as store points, with the payload an indexer writes."""
    from xrec.store.base import ItemPoint

    vecs = catalog.vectors(start, stop)
    return [
        ItemPoint(
            catalog.ids[i],
            vecs[i - start],
            {
                "item_id": catalog.ids[i],
                "title": f"product {catalog.ids[i]}",
                "lang": catalog.langs[i],
                "category": f"c{int(catalog.clusters[i])}",
                "tags": [],
                "available": True,
                "ts": ts,
            },
        )
        for i in range(start, stop)
    ]


def synthetic_profiles(catalog: Catalog, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Profiles like a replayed user's after a few sessions: 1–4 interests, 20 seen items, 20 event ids."""
    from collections import OrderedDict

    from xrec.profile import UserProfile

    rng = np.random.default_rng([seed, 0x5E])
    now = int(time.time() * 1000)
    centres = catalog.centres
    n_items = len(catalog)
    chunk = 10_000
    for base in range(0, count, chunk):
        m = min(chunk, count - base)
        ks = rng.integers(1, 5, size=m)
        clusters = rng.integers(0, catalog.n_clusters, size=(m, 4))
        noise = rng.standard_normal((m, 4, catalog.dim)).astype(np.float32) * (0.3 / math.sqrt(catalog.dim))
        cents = centres[clusters] + noise
        cents /= np.linalg.norm(cents, axis=2, keepdims=True)
        seen = rng.integers(0, n_items, size=(m, 20))
        fps = rng.bytes(m * 20 * 8)
        weights = rng.uniform(0.5, 3.0, size=(m, 4))
        for j in range(m):
            k = int(ks[j])
            ids = [catalog.ids[i] for i in seen[j]]
            p = UserProfile(
                dim=catalog.dim,
                centroids=cents[j, :k].copy(),
                weights=weights[j, :k].copy(),
                anchors=ids[:k],
                seen=OrderedDict.fromkeys(ids),
                languages={catalog.langs[int(seen[j][0])]: 1.0},
                event_ids=OrderedDict.fromkeys(fps[(j * 20 + i) * 8 : (j * 20 + i + 1) * 8] for i in range(20)),
                last_ts=now - 3_600_000,
                events=20,
                neutral=False,  # built from raw vectors: the worker moves them into its neutral space on load
            )
            yield f"U{base + j}", p.to_bytes()


def run(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("items", "users", "events"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name} must be at least 1")
    settings = Settings.from_env()
    if settings.store_backend != "edge":
        raise CommandError(
            "xrec bench pipeline sets each worker's store itself (--store edge|qdrant): unset XREC_STORE_BACKEND"
        )
    if args.kill_one and max(worker_counts(args.workers)) < 2:
        raise CommandError("--kill-one needs --workers with a count of at least 2")
    if args.held_profiles < 0:
        args.held_profiles = args.users // 2  # returning users with a history, and new ones
    parse_levels(args.load_levels)  # a bad spec fails before anything starts
    worker_counts(args.workers)
    started = time.perf_counter()
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="xrec-bench-pipeline-"))
    bench = Bench(args, settings, tmp)
    try:
        work = build_workload(
            args.items,
            args.users,
            args.events,
            dim=DIM,
            seed=args.seed,
            data_dir=None if args.generated else (args.data_dir or settings.shared_data("amazon-m2")),
        )
        log.info(
            "workload: %s, %d items, %d users, %d events", work.source, len(work.catalog), work.users, len(work.events)
        )
        bench.start_broker()
        if args.workers != "1" or args.store != "edge":
            from xrec.bench.scale import run_scale

            return {
                "workload": workload_summary(work),
                "settings": {"partitions": settings.partitions, "held_profiles": args.held_profiles},
                "scale": run_scale(args, bench, work),
                "machine": {"cpus": os.cpu_count(), "load_avg_at_start": load, "load_avg_at_end": os.getloadavg()},
                "seconds": time.perf_counter() - started,
            }
        names = ["xrec"] + (["naive"] if args.naive_events else []) + (["text"] if args.with_text else [])
        catalog = bench.build_store(work.catalog, names)
        xrec = bench.saturation_and_latency(work)
        naive = bench.naive(work) if args.naive_events else {"status": "not run (--naive-events 0)"}
        text = bench.review_mix(work) if args.with_text else {"status": "not run (pass --with-text)"}
    finally:
        bench.close(keep=args.keep)
    sat = xrec["saturation"]["events_per_s"]
    naive_rate = float(naive.get("events_per_s", math.nan))
    out: dict[str, Any] = {
        "workload": workload_summary(work),
        "catalog": catalog,
        "settings": {
            "partitions": settings.partitions,
            "event_batch_size": settings.event_batch_size,
            "held_profiles": args.held_profiles,
            "interests_k": settings.interests_k,
            "candidates_per_interest": settings.candidates_per_interest,
            "store_index_threshold": settings.store_index_threshold,
        },
        "xrec": xrec,
        "naive": naive,
        "ratio": sat / naive_rate if naive_rate and not math.isnan(naive_rate) else math.nan,
        "cpu_ratio": float(naive.get("cpu_s_per_1k_events", math.nan)) / xrec["saturation"]["cpu_s_per_1k_events"],
        "review_mix": text,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": load, "load_avg_at_end": os.getloadavg()},
        "seconds": time.perf_counter() - started,
    }
    if args.plot:
        out["plot"] = write_plot(out, args.plot)
    return out


def workload_summary(work: Workload) -> dict[str, Any]:
    return {
        "source": work.source,
        "items": len(work.catalog),
        "users": work.users,
        "events": len(work.events),
        "sessions": work.sessions,
        "session_repeats": work.session_repeats,
    }


def format_table(result: dict[str, Any]) -> str:
    if "scale" in result:
        from xrec.bench.scale import format_scale

        w = result["workload"]
        head = f"workload   {w['source']}: {w['items']} items, {w['users']} users, {w['events']} events"
        return "\n".join([head, *format_scale(result["scale"])])
    w, x = result["workload"], result["xrec"]
    sat, curve, mem = x["saturation"], x["load_curve"], x["memory"]
    naive, text = result["naive"], result["review_mix"]
    lines = [
        f"workload   {w['source']}: {w['items']} items, {w['users']} users, {w['events']} events",
        f"catalog    load {result['catalog']['load_s']:.1f}s, optimize {result['catalog']['optimize_s']:.1f}s, "
        f"search {result['catalog']['search']}",
        f"xrec       {sat['events_per_s']:.0f} events/s at saturation ({sat['covered']} events, {sat['lists']} lists "
        f"= {sat['lists_per_s']:.0f}/s, {sat['seconds']:.1f}s), CPU {sat['cpu_s_per_1k_events']:.2f} s per 1k events, "
        f"{sat['cpu_util']:.2f} cores",
        "latency    offered        p50      p95      p99      max  to Kafka p50/p99  answered  cores  "
        "per batch: events, fetch/queue/apply/lists/delivery ms",
    ]
    for level in curve:
        ms, b = level["latency_ms"], level["batches"]
        to_kafka = level.get("producer_ms") or {"p50": math.nan, "p99": math.nan}
        share = f"{level['percent_of_saturation']}%" if level["percent_of_saturation"] is not None else "--rate"
        lines.append(
            f"  {share:>6} {level['offered_rate']:>6.0f}/s {ms['p50']:>6.0f}ms {ms['p95']:>6.0f}ms {ms['p99']:>6.0f}ms "
            f"{ms['max']:>6.0f}ms  {to_kafka['p50']:>6.0f}/{to_kafka['p99']:<6.0f}ms  "
            f"{level['answered']:>5}/{level['events']:<5} {level['cpu_util']:>5.2f}  "
            f"{b['events_per_batch']:.1f}, {b['fetch_ms']:.1f}/{b['queue_ms']:.1f}/{b['apply_ms']:.1f}/"
            f"{b['lists_ms']:.1f}/{b['delivery_ms']:.1f}"
        )
    fresh = x.get("fresh")
    if fresh and fresh["events_per_s"] is not None:
        rate, limit = fresh["events_per_s"], fresh["p99_ms"]
        lines.append(
            f"fresh      p99 within {limit:.0f} ms "
            + {
                "about": f"up to about {rate:.0f} fresh events/s (interpolated between levels)",
                "at least": f"at every level, up to {rate:.0f} events/s offered",
                "below": f"at no level: already above it at {rate:.0f} events/s",
            }[fresh["bound"]]
        )
    lines += [
        f"memory     {mem['profiles']} profiles, {mem['profile_bytes_mean']:.0f} B each = "
        f"{mem['profile_mb_per_100k']:.0f} MB per 100k (serialized); RSS grew {mem['rss_growth_mb']:.0f} MB "
        f"= {mem['rss_mb_per_100k_new_profiles']:.0f} MB per 100k new profiles",
    ]
    if "held_profiles" in sat:
        held = sat["held_profiles"]
        lines.append(
            f"held       {held['count']} profiles restored from the changelog ({held['bytes_mean']:.0f} B each); "
            f"first list {sat['first_list_after_start_s']:.0f}s after the worker started, RSS then "
            f"{sat['rss_mb_start']:.0f} MB"
        )
    if "events_per_s" in naive:
        lines.append(
            f"naive      {naive['events_per_s']:.0f} events/s ({naive['covered']} events), "
            f"CPU {naive['cpu_s_per_1k_events']:.2f} s per 1k events"
        )
        lines.append(
            f"ratio      xrec / naive = {result['ratio']:.1f}x events/s, {result['cpu_ratio']:.1f}x less CPU per event"
        )
    else:
        lines.append(f"naive      {naive['status']}")
    if text.get("status") == "ok":
        lines.append(
            f"reviews    {text['events_per_s']:.0f} events/s with {text['reviews']} of {text['events']} events "
            f"encoded ({text.get('encoder', '?')}), CPU {text['cpu_s_per_1k_events']:.2f} s per 1k events"
        )
    else:
        lines.append(f"reviews    {text['status']}: {text.get('reason', '')}".rstrip(": "))
    m = result["machine"]
    lines.append(
        f"machine    {m['cpus']} CPUs, load {m['load_avg_at_start'][0]:.1f} at start, {m['load_avg_at_end'][0]:.1f} at end; run {result['seconds']:.0f}s"
    )
    if result.get("plot"):
        lines.append(f"plot       {result['plot']}")
    return "\n".join(lines)


def write_plot(result: dict[str, Any], path: Path) -> str:
    """Latency percentiles against offered load (percent of saturation), from one run."""
    from xrec.plotting import pyplot

    plt = pyplot()
    curve = [c for c in result["xrec"]["load_curve"] if c["percent_of_saturation"] is not None]
    sat = result["xrec"]["saturation"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [c["offered_rate"] for c in curve]
    for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^-")):
        ax.plot(x, [c["latency_ms"][key] for c in curve], style, label=key)
    for c in curve:
        ax.annotate(
            f"{c['percent_of_saturation']}%",
            (c["offered_rate"], c["latency_ms"]["p99"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
    ax.set_xlabel(f"offered events/s (saturation {sat['lists_per_s']:.0f} lists/s, {sat['events_per_s']:.0f} events/s)")
    ax.set_ylabel("event → list latency (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    w = result["workload"]
    ax.set_title(
        f"xrec bench pipeline: {w['items']} items, {w['users']} users, {result['settings']['held_profiles']} held profiles",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
