"""``xrec bench restart``: how soon a worker holding many profiles serves again after a restart.

One run, one broker: ``--profiles`` profiles (returning users U0…, 20 events each, as ``xrec bench
pipeline --held-profiles`` writes them) go into a fresh app's profile changelog; a catalog of ``--items``
items is loaded into an edge store. Then, for each table store (``--table-stores``, default
``memory,rocksdb``), a worker (``xrec worker --no-encoder``, the same app id each time) is started twice
on a state directory of that store: a **cold** start (nothing on disk: the changelog is read) and, after a clean stop (SIGTERM),
a **warm** start. Each start is timed to the first list it publishes for a held user's click
sent as the worker starts (the figure a user feels after a deploy), with the worker's RSS then and the
profiles it says it holds (``xrec_profiles``: exact in memory, RocksDB's estimate on disk), so a
fast start that lost the profiles would show.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from xrec.bench.pipeline.harness import DIM, Bench
from xrec.bench.pipeline.kafka_io import produce, run_async
from xrec.bench.pipeline.process import SampledProcess
from xrec.bench.sessions import build_workload
from xrec.config import Settings
from xrec.errors import CommandError
from xrec.kafka import read_to_end

log = logging.getLogger(__name__)

TABLE_STORES = ("memory", "rocksdb")
FIRST_LIST_TIMEOUT_S = 3_600.0
POLL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profiles", type=int, default=100_000, help="profiles the worker holds (default 100000)")
    parser.add_argument("--items", type=int, default=10_000, help="catalog size (default 10000)")
    parser.add_argument(
        "--table-stores", default="memory,rocksdb", help="XREC_TABLE_STORE values to compare (default memory,rocksdb)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="Amazon-M2 sessions folder (default: shared data)")
    parser.add_argument("--generated", action="store_true", help="use a generated catalog even if the data is there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, state) for inspection")


def first_list_after(bench: Bench, child: SampledProcess, topic: str, event_id: str, started: float) -> dict[str, Any]:
    """Seconds from ``started`` until a list answering ``event_id`` is on ``topic``, and the RSS then."""
    deadline = time.monotonic() + FIRST_LIST_TIMEOUT_S
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.failure(f"exited with {child.exited()}")
        found: list[float] = []

        def look(message: Any, found: list[float] = found) -> None:
            if message.value and orjson.loads(message.value).get("trigger_event_id") == event_id:
                found.append(message.timestamp / 1000.0)

        run_async(read_to_end(bench.kafka_kwargs, topic, look, timeout_s=120))
        if found:
            at = min(found)
            held = child.metrics_or_empty().sum("xrec_profiles")  # set as that list was published
            return {"first_list_s": at - started, "rss_mb": child.sampler.rss_at(at) / 2**20, "profiles_held": held}
        time.sleep(POLL_S)
    raise child.failure(f"published no list for {event_id} within {FIRST_LIST_TIMEOUT_S:.0f} s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    stores = [s.strip() for s in args.table_stores.split(",") if s.strip()]
    if not stores or any(s not in TABLE_STORES for s in stores):
        raise CommandError(f"--table-stores: a comma-separated list of {', '.join(TABLE_STORES)}")
    if args.profiles < 1:
        raise CommandError("--profiles must be at least 1")
    settings = Settings.from_env()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="xrec-bench-restart-"))
    bench_args = argparse.Namespace(seed=args.seed, held_profiles=args.profiles, py_spy=None)
    bench = Bench(bench_args, settings, tmp)
    rows: list[dict[str, Any]] = []
    try:
        work = build_workload(
            args.items,
            100,
            100,
            dim=DIM,
            seed=args.seed,
            data_dir=None if args.generated else (args.data_dir or settings.shared_data("amazon-m2")),
        )
        bench.start_broker()
        catalog = bench.build_store(work.catalog, ["restart"])
        worker_settings, env = bench.worker_settings("restart")  # one app and changelog for every table store
        bench.topics_for(worker_settings)
        seeded = bench.seed_profiles(worker_settings, work.catalog, args.profiles)
        probe_item = work.catalog.ids[0]
        for store in stores:
            env = {**env, "XREC_TABLE_STORE": store, "XREC_STATE_DIR": str(tmp / f"state-{store}")}
            for start in ("cold", "warm"):
                event_id = f"probe-{store}-{start}"
                probe: dict[str, Any] = {"event_id": event_id, "user_id": "U1", "item_id": probe_item, "type": "click"}
                began = time.time()
                child = bench.start_worker(f"{store}-{start}", env, with_encoder=False)
                try:
                    probe["ts"] = int(time.time() * 1000)
                    run_async(produce(bench.kafka_kwargs, worker_settings.topic_events, [(b"U1", orjson.dumps(probe))]))
                    timing = first_list_after(bench, child, worker_settings.topic_recommendations, event_id, began)
                finally:
                    code = child.stop()
                log.info("%s %s start: first list after %.1f s", store, start, timing["first_list_s"])
                rows.append({"table_store": store, "start": start, **timing, "stop_exit": code})
    finally:
        bench.close(keep=args.keep)
    return {
        "profiles": args.profiles,
        "items": len(work.catalog),
        "catalog": catalog,
        "seed": seeded,
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "seconds": time.perf_counter() - started,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"restart    {result['profiles']} held profiles, {result['items']} items ({result['seconds']:.0f} s in all)",
        "table store  start  first list after start  RSS then  profiles held then",
    ]
    by: dict[tuple[str, str], float] = {}
    for row in result["rows"]:
        by[(row["table_store"], row["start"])] = row["first_list_s"]
        lines.append(
            f"{row['table_store']:<12} {row['start']:<6} {row['first_list_s']:>20.1f} s {row['rss_mb']:>7.0f} MB "
            f"{row['profiles_held']:>19,.0f}"
        )
    for store in dict.fromkeys(r["table_store"] for r in result["rows"]):
        cold, warm = by.get((store, "cold")), by.get((store, "warm"))
        if cold and warm:
            lines.append(f"{store}: a warm restart serves {cold / warm:.1f}× sooner than a cold start")
    return "\n".join(lines)
