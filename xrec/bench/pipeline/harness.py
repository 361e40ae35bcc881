"""The run: a broker, a catalog store, worker processes, saturation and the latency curve, memory, the naive
baseline and the review-heavy mix, in one ``Bench``; ``run`` puts them together."""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from xrec.bench.pipeline.cli import parse_levels, worker_counts
from xrec.bench.pipeline.inputs import catalog_points, hash_index, review_texts, synthetic_profiles
from xrec.bench.pipeline.kafka_io import encoded_events, produce, produce_paced, read_topic, run_async, stamped_by
from xrec.bench.pipeline.measures import (
    Coverage,
    batch_phases,
    cost,
    coverage,
    fresh_rate_within,
    percentiles,
    summarize_collapsed,
    unanswered,
)
from xrec.bench.pipeline.process import SampledProcess, py_spy_argv, py_spy_format
from xrec.bench.pipeline.report import workload_summary, write_plot
from xrec.bench.sessions import Catalog, Workload, build_workload, stable_fraction
from xrec.config import Settings
from xrec.errors import CommandError
from xrec.metrics import CONSUMER_LAG_INTERVAL_S
from xrec.topics import own_topics_env
from xrec.worker_process import EMPTY_METRICS, WORKER_COMMAND, MetricSamples

log = logging.getLogger(__name__)


DIM = 384
WORKER_START_TIMEOUT_S = 240.0
STALL_TIMEOUT_S = 90.0
#: How often the worker's /metrics is read while waiting; rendering it costs the worker CPU, so not too often.
METRICS_POLL_S = 2.0
#: How long a drained worker may take to commit its last events (Faust commits every 2.8 s).
SETTLE_TIMEOUT_S = 60.0
REVIEW_SHARE = 0.5
#: The bench's lists topic keeps the broker's append time as each record's timestamp: a list's latency ends
#: when a subscriber could read it, after the worker's producer has lingered and sent it (with the default
#: create time it ended when the worker handed the list to its producer, a few milliseconds sooner).
LIST_TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime"}


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
        """xrec's topics for this run, its lists topic stamped by the broker (``LIST_TOPIC_CONFIG``)."""
        from xrec.kafka import KafkaConnection, create_topics
        from xrec.topics import topic_specs

        specs = [
            replace(spec, config={**spec.config, **LIST_TOPIC_CONFIG})
            if spec.name == settings.topic_recommendations
            else spec
            for spec in topic_specs(settings)
        ]
        run_async(create_topics(KafkaConnection.from_settings(settings, self.bootstrap), specs))

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
        fmt = py_spy_format(out)
        argv = py_spy_argv(exe, pid, seconds, out, gil=self.args.py_spy_gil)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
            "list_timestamps": stamped_by(out),
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
