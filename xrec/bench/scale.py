"""``xrec bench pipeline --workers N[,M…] [--store qdrant]``: several workers in one consumer group.

What a user adding workers asks: how many lists/s do N workers serve, how fresh are their lists at a
given load, what does losing one cost, and where does the CPU go (each worker, the Qdrant server).
Each worker count runs on fresh topics: the workers start first and share the partitions before any
event is sent (preloaded events would all go to the first worker up), then one flood measures
saturation, paced levels measure event-to-list latency, and with ``--kill-one`` one worker is killed
with SIGKILL halfway through a paced level while the others take over its partitions.

With ``--store qdrant`` the bench starts the Qdrant server binary (``XREC_QDRANT_BIN``) on free ports
and every worker queries one collection there; with ``edge`` each worker has its own copy.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson

from xrec.bench.pipeline.cli import parse_levels, worker_counts
from xrec.bench.pipeline.harness import METRICS_POLL_S, SETTLE_TIMEOUT_S, STALL_TIMEOUT_S, WORKER_START_TIMEOUT_S, Bench
from xrec.bench.pipeline.inputs import catalog_points
from xrec.bench.pipeline.kafka_io import encoded_events, produce, produce_paced, read_topic, run_async, stamped_by
from xrec.bench.pipeline.measures import Coverage, coverage, percentiles, unanswered
from xrec.bench.pipeline.process import ProcSampler, SampledProcess
from xrec.bench.pipeline.report import latency_span
from xrec.bench.sessions import Catalog, Workload
from xrec.errors import CommandError
from xrec.metrics import CONSUMER_LAG_INTERVAL_S
from xrec.worker_process import MetricSamples

log = logging.getLogger(__name__)

#: How long a paced level with a kill lasts at least, so the rebalance falls inside it.
KILL_LEVEL_MIN_S = 20.0


@dataclass
class Group:
    """N workers of one app id: one consumer group sharing the events partitions."""

    workers: list[SampledProcess]
    events_topic: str
    recommendations_topic: str
    partitions: int

    def alive(self) -> list[SampledProcess]:
        return [w for w in self.workers if w.alive()]

    def scrape(self) -> list[MetricSamples]:
        return [w.metrics_or_empty() for w in self.alive()]

    def owned(self, worker: SampledProcess) -> set[str]:
        return {
            labels["partition"]
            for name, labels, _ in worker.metrics_or_empty().samples
            if name == "xrec_consumer_lag" and labels.get("topic") == self.events_topic
        }

    def wait_spread(self, timeout_s: float) -> float:
        """Until the live workers own every events partition between them, each at least one; seconds taken."""
        started = time.monotonic()
        deadline = started + timeout_s
        live = self.alive()
        while time.monotonic() < deadline:
            owned = [self.owned(w) for w in live]
            union = set().union(*owned)
            if len(union) == self.partitions and all(owned) and sum(map(len, owned)) == self.partitions:
                return time.monotonic() - started
            time.sleep(0.5)
        raise CommandError(
            f"the events partitions were not spread over {len(live)} workers within {timeout_s:.0f} s: "
            f"{[sorted(self.owned(w)) for w in live]}"
        )

    def handled(self) -> float:
        return sum(m.sum("xrec_events_total") for m in self.scrape())

    def wait_handled(self, target: float, what: str) -> None:
        """Until the live workers have handled ``target`` events in all, then until every event they read is
        committed (each commits only once its batch's lists are in Kafka)."""
        deadline = time.monotonic() + STALL_TIMEOUT_S
        last = -1.0
        while (done := self.handled()) < target:
            if done > last:
                last, deadline = done, time.monotonic() + STALL_TIMEOUT_S
            if time.monotonic() > deadline:
                raise CommandError(f"{what}: the workers handled {done:.0f} of {target:.0f} events and stopped")
            time.sleep(METRICS_POLL_S)
        self.wait_committed()

    def wait_committed(self) -> None:
        """Until a lag reading taken from now on is 0 on every partition each live worker owns."""
        fresh_after = time.monotonic() + CONSUMER_LAG_INTERVAL_S + 0.5
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            lags = [v for m in self.scrape() for name, _, v in m.samples if name == "xrec_consumer_lag"]
            if lags and not any(lags) and time.monotonic() >= fresh_after:
                return
            time.sleep(METRICS_POLL_S)
        log.warning(
            "consumer lag did not reach 0 within %.0f s; lists still on their way are not counted", SETTLE_TIMEOUT_S
        )

    def lists_by_worker(self) -> list[float]:
        return [w.metrics_or_empty().sum("xrec_lists_published_total") for w in self.workers]


def sampled_rate(sampler: ProcSampler, cov: Coverage) -> float:
    """Cores a sampled process used between the first and the last list."""
    if len(sampler.samples) < 2 or math.isnan(cov.first_list_s) or cov.last_list_s <= cov.first_list_s:
        return math.nan
    return (sampler.cpu_at(cov.last_list_s) - sampler.cpu_at(cov.first_list_s)) / (cov.last_list_s - cov.first_list_s)


class ScaleRun:
    """One worker count, measured on its own topics."""

    def __init__(self, bench: Bench, work: Workload, count: int, store_env: dict[str, str], server: Any) -> None:
        self.bench = bench
        self.work = work
        self.count = count
        self.store_env = store_env
        self.server = server
        self.name = f"scale{count}"
        self.settings, self.env = bench.worker_settings(self.name)

    def run(self) -> dict[str, Any]:
        bench, args = self.bench, self.bench.args
        bench.topics_for(self.settings)
        bench.publish_language_stats(self.settings, self.work.catalog)
        if args.held_profiles:
            bench.seed_profiles(self.settings, self.work.catalog, args.held_profiles)
        group = self.start_group()
        server_cpu = ProcSampler(self.server.pid) if self.server is not None and self.server.pid else None
        if server_cpu is not None:
            server_cpu.start()
        try:
            saturation = self.saturation(group, server_cpu)
            curve = [
                self.level(group, percent, saturation["lists_per_s"], server_cpu)
                for percent in parse_levels(args.load_levels)
            ]
            kill = self.kill_one(group, saturation["lists_per_s"]) if args.kill_one and self.count > 1 else None
        finally:
            for worker in group.workers:
                worker.stop()
            if server_cpu is not None:
                server_cpu.stop()
            for i in range(self.count):
                shutil.rmtree(self.bench.tmp / f"{self.name}-state-{i}", ignore_errors=True)
        out: dict[str, Any] = {"workers": self.count, "saturation": saturation, "load_curve": curve}
        if kill is not None:
            out["kill_one"] = kill
        return out

    def start_group(self) -> Group:
        from xrec.broker import free_port

        workers = []
        for i in range(self.count):
            env = {
                **self.env,
                **self.store_env,
                "XREC_WEB_PORT": str(free_port()),
                "XREC_STATE_DIR": str(self.bench.tmp / f"{self.name}-state-{i}"),
            }
            if self.store_env.get("XREC_STORE_BACKEND") != "qdrant":
                env["XREC_STORE_PATH"] = str(self.bench.tmp / f"store-{self.name}-{i}")
            workers.append(self.bench.start_worker(f"{self.name}-{i}", env, with_encoder=False))
        restore_s = self.bench.args.held_profiles / 500.0
        group = Group(
            workers, self.settings.topic_events, self.settings.topic_recommendations, self.settings.partitions
        )
        try:
            for worker in workers:
                worker.wait_ready(WORKER_START_TIMEOUT_S + restore_s)
            group.wait_spread(WORKER_START_TIMEOUT_S)
        except BaseException:
            for worker in workers:
                worker.stop()
            raise
        return group

    def saturation(self, group: Group, server_cpu: ProcSampler | None) -> dict[str, Any]:
        """Every workload event at once: lists/s while the workers drain the backlog together."""
        before = group.lists_by_worker()
        events = self.work.events
        run_async(produce(self.bench.kafka_kwargs, group.events_topic, encoded_events(events)))
        group.wait_handled(len(events), "saturation")
        records = run_async(read_topic(self.bench.kafka_kwargs, group.recommendations_topic))
        cov = coverage(events, records)
        lists = [after - b for after, b in zip(group.lists_by_worker(), before, strict=True)]
        missed = unanswered(events, cov, records)
        if missed:
            outcomes = [m.by_label("xrec_events_total", "outcome") for m in group.scrape()]
            log.warning(
                "%d events got no list (handled by outcome: %s); first: %s; from the workers' logs:\n%s",
                len(events) - cov.covered,
                outcomes,
                missed[:3],
                "\n".join(w.first_error() for w in group.workers),
            )
        log.info(
            "%d worker(s), saturation: %.0f lists/s, %d/%d events answered, lists per worker %s",
            self.count,
            cov.lists_per_s,
            cov.covered,
            len(events),
            lists,
        )
        return {
            "events": len(events),
            "covered": cov.covered,
            "lists": cov.lists,
            "events_per_s": cov.events_per_s,
            "lists_per_s": cov.lists_per_s,
            "seconds": cov.last_list_s - cov.first_list_s,
            "unanswered": missed,
            "per_worker": [
                {"lists": n, "cpu_util": sampled_rate(w.sampler, cov)}
                for n, w in zip(lists, group.workers, strict=True)
            ],
            "qdrant_cpu_util": sampled_rate(server_cpu, cov) if server_cpu is not None else None,
        }

    def level(
        self, group: Group, percent: int, lists_per_s: float, server_cpu: ProcSampler | None, kill_at_s: float = 0.0
    ) -> dict[str, Any]:
        """Fresh traffic at ``percent`` of the saturation lists/s (one list per event); with ``kill_at_s``
        the last worker is killed with SIGKILL that many seconds in."""
        rate = max(1.0, percent / 100.0 * lists_per_s)
        seconds = max(self.bench.args.latency_seconds, KILL_LEVEL_MIN_S if kill_at_s else 0.0)
        n = max(1, int(rate * seconds))
        source = self.work.events
        tag = f"K{percent}" if kill_at_s else f"L{percent}"
        events = [{**source[i % len(source)], "event_id": f"{self.name}-{tag}-{i}"} for i in range(n)]
        handled0 = group.handled()
        killed: dict[str, Any] = {}
        killer = threading.Thread(target=self._kill_last, args=(group, kill_at_s, killed), daemon=True)
        if kill_at_s:
            killer.start()
        paced = run_async(produce_paced(self.bench.kafka_kwargs, group.events_topic, events, rate))
        if kill_at_s:
            killer.join()
            if "error" in killed:
                raise CommandError(str(killed["error"]))
            group.wait_committed()
        else:
            group.wait_handled(handled0 + n, f"{percent}% of saturation")
        wanted = {e["event_id"] for e in events}
        out = [
            r
            for r in run_async(read_topic(self.bench.kafka_kwargs, group.recommendations_topic))
            if r.value is not None and _trigger(r.value) in wanted
        ]
        cov = coverage(events, out)
        delays = [
            1000.0 * (cov.answered_at[e["event_id"]] - e["ts"] / 1000.0)
            for e in events
            if e["event_id"] in cov.answered_at
        ]
        result: dict[str, Any] = {
            "percent_of_saturation": percent,
            "offered_rate": rate,
            "achieved_rate": paced.rate,
            "events": n,
            "answered": len(delays),
            "latency_ms": percentiles(delays),
            "list_timestamps": stamped_by(out),
            "cpu_util": [sampled_rate(w.sampler, cov) for w in group.workers],
            "qdrant_cpu_util": sampled_rate(server_cpu, cov) if server_cpu is not None else None,
        }
        log.info(
            "%d worker(s), %d%% of saturation (%.0f events/s)%s: p50 %.0f ms, p99 %.0f ms, %d/%d answered",
            self.count,
            percent,
            rate,
            f", one killed {kill_at_s:.0f}s in" if kill_at_s else "",
            result["latency_ms"]["p50"],
            result["latency_ms"]["p99"],
            len(delays),
            n,
        )
        if kill_at_s:
            after = [
                1000.0 * (cov.answered_at[e["event_id"]] - e["ts"] / 1000.0)
                for e in events
                if e["event_id"] in cov.answered_at and e["ts"] / 1000.0 >= killed["at"]
            ]
            result["killed_at_s"] = kill_at_s
            result["rebalance_s"] = killed["rebalance_s"]
            result["latency_ms_after_kill"] = percentiles(after)
        return result

    @staticmethod
    def _kill_last(group: Group, after_s: float, killed: dict[str, Any]) -> None:
        """SIGKILL the last worker ``after_s`` into a level, then time until the others own its partitions
        (Kafka notices a killed member after XREC_SESSION_TIMEOUT_S)."""
        time.sleep(after_s)
        killed["at"] = time.time()
        group.workers[-1].stop(signal.SIGKILL, timeout_s=10)
        try:
            killed["rebalance_s"] = group.wait_spread(WORKER_START_TIMEOUT_S)
        except CommandError as exc:  # raised again by the level, which waits for this thread
            killed["error"] = exc

    def kill_one(self, group: Group, lists_per_s: float) -> dict[str, Any]:
        """A paced level at 50% of saturation during which the last worker is killed halfway through."""
        seconds = max(self.bench.args.latency_seconds, KILL_LEVEL_MIN_S)
        return self.level(group, 50, lists_per_s, None, kill_at_s=seconds / 2)


def _trigger(value: bytes) -> Any:
    return orjson.loads(value).get("trigger_event_id")


def load_catalog_into_server(bench: Bench, catalog: Catalog, store_env: dict[str, str]) -> dict[str, float]:
    """The catalog upserted once into the server's collection, as an indexer would have."""
    import os

    from xrec.config import Settings
    from xrec.store import open_store

    settings = Settings.from_env({**os.environ, **store_env})
    store = open_store(settings, dim=catalog.dim)
    ts = int(time.time() * 1000) - 86_400_000

    async def load() -> float:
        t0 = time.perf_counter()
        await store.ensure_collection(catalog.dim)
        for start in range(0, len(catalog), 1_000):
            await store.upsert(catalog_points(catalog, start, min(len(catalog), start + 1_000), ts))
        await store.close()
        return time.perf_counter() - t0

    return {"load_s": run_async(load())}


def run_scale(args: argparse.Namespace, bench: Bench, work: Workload) -> dict[str, Any]:
    """Each worker count of ``--workers`` in turn, on the store of ``--store``; lists/s ratios to the first."""
    counts = worker_counts(args.workers)
    server = None
    store_env: dict[str, str] = {}
    try:
        if args.store == "qdrant":
            from xrec.store.local_server import LocalQdrantServer, QdrantServerError

            binary = bench.settings.qdrant_binary()
            try:
                server = LocalQdrantServer(binary, bench.tmp / "qdrant").start()
            except QdrantServerError as exc:
                raise CommandError(f"--store qdrant needs a Qdrant server binary: {exc}") from exc
            store_env = {
                "XREC_STORE_BACKEND": "qdrant",
                "XREC_QDRANT_URL": server.url,
                "XREC_QDRANT_GRPC_PORT": str(server.grpc_port),
                "XREC_COLLECTION": f"bench-{bench.tag}",
            }
            catalog = load_catalog_into_server(bench, work.catalog, store_env)
        else:
            catalog = bench.build_store(work.catalog, [f"scale{n}-{i}" for n in counts for i in range(n)])
            catalog = {"load_s": catalog["load_s"]}
        runs = [ScaleRun(bench, work, n, store_env, server).run() for n in counts]
    finally:
        if server is not None:
            server.stop()
    first = runs[0]["saturation"]["lists_per_s"]
    for r in runs:
        r["lists_per_s_ratio_to_first"] = r["saturation"]["lists_per_s"] / first if first else math.nan
    return {"store": args.store, "catalog": catalog, "runs": runs}


def format_scale(scale: dict[str, Any]) -> list[str]:
    lines = [f"store      {scale['store']}, catalog loaded in {scale['catalog']['load_s']:.1f}s"]
    for r in scale["runs"]:
        sat = r["saturation"]
        cores = ", ".join(f"{w['cpu_util']:.2f}" for w in sat["per_worker"])
        qcpu = sat.get("qdrant_cpu_util")
        lines.append(
            f"{r['workers']} worker(s) {sat['lists_per_s']:.0f} lists/s at saturation ({sat['covered']}/{sat['events']} "
            f"events answered, {sat['lists']} lists, x{r['lists_per_s_ratio_to_first']:.2f} the first count); "
            f"cores per worker {cores}" + (f", Qdrant server {qcpu:.2f} cores" if qcpu is not None else "")
        )
        if r["load_curve"]:
            lines.append(f"  (latency: {latency_span(r['load_curve'])})")
        for level in r["load_curve"]:
            p = level["latency_ms"]
            lines.append(
                f"  {level['percent_of_saturation']:>3}% ({level['offered_rate']:.0f} events/s): p50 {p['p50']:.0f} ms, "
                f"p99 {p['p99']:.0f} ms, max {p['max']:.0f} ms, {level['answered']}/{level['events']} answered"
            )
        kill = r.get("kill_one")
        if kill:
            p, q = kill["latency_ms"], kill["latency_ms_after_kill"]
            lines.append(
                f"  kill -9 of one worker {kill['killed_at_s']:.0f}s into {kill['offered_rate']:.0f} events/s: "
                f"{kill['answered']}/{kill['events']} answered, partitions moved in {kill['rebalance_s']:.1f}s, "
                f"p99 {p['p99']:.0f} ms over the level, after the kill p50 {q['p50']:.0f} / p99 {q['p99']:.0f} / "
                f"max {q['max']:.0f} ms"
            )
    return lines
