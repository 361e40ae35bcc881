"""The pieces of ``xrec bench pipeline`` that need no broker: the replayed stream, the naive
baseline's engine (on a real edge store) and the arithmetic that turns output records into figures.
No timings are asserted."""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from xrec.bench.naive import NaiveEngine, profile_from_json, profile_to_json
from xrec.bench.pipeline.cli import parse_levels, worker_counts
from xrec.bench.pipeline.harness import Bench
from xrec.bench.pipeline.inputs import synthetic_profiles
from xrec.bench.pipeline.kafka_io import OutRecord, stamped_by
from xrec.bench.pipeline.measures import (
    batch_phases,
    coverage,
    fresh_rate_within,
    percentiles,
    summarize_collapsed,
)
from xrec.bench.pipeline.process import py_spy_argv, py_spy_format
from xrec.bench.pipeline.report import format_table
from xrec.bench.scale import format_scale
from xrec.bench.sessions import build_workload, load_amazon_sessions
from xrec.config import Settings
from xrec.errors import CommandError
from xrec.events import Interaction
from xrec.metrics import XrecMetrics
from xrec.pipeline import Recommender
from xrec.profile import ProfileParams, UserProfile
from xrec.store import ItemPoint, open_store
from xrec.worker_process import MetricSamples

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
AMAZON = Settings.from_env().shared_data("amazon-m2")


# --- the stream ----------------------------------------------------------------------------------


def test_a_generated_stream_has_the_events_and_users_asked_for_over_catalog_items() -> None:
    w = build_workload(500, 40, 300, dim=16, seed=3, data_dir=None)
    assert len(w.events) == 300
    assert w.users <= 40
    ids = set(w.catalog.ids)
    assert len(ids) == 500
    assert all(e["item_id"] in ids for e in w.events)
    assert len({e["event_id"] for e in w.events}) == 300


def test_events_come_in_event_time_order() -> None:
    w = build_workload(500, 40, 300, dim=16, seed=3, data_dir=None)
    stamps = [e["ts"] for e in w.events]
    assert stamps == sorted(stamps)


def test_the_same_seed_gives_the_same_stream_and_vectors() -> None:
    a = build_workload(300, 20, 100, dim=16, seed=7, data_dir=None, now_ms=1_700_000_000_000)
    b = build_workload(300, 20, 100, dim=16, seed=7, data_dir=None, now_ms=1_700_000_000_000)
    assert a.events == b.events
    assert np.array_equal(a.catalog.vectors(0, 300), b.catalog.vectors(0, 300))


def test_catalog_vectors_are_unit_and_any_slice_matches_the_whole() -> None:
    w = build_workload(1000, 10, 50, dim=16, seed=1, data_dir=None)
    whole = w.catalog.vectors(0, 1000)
    assert np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(w.catalog.vectors(123, 456), whole[123:456])


def test_items_of_one_cluster_are_closer_than_items_of_different_clusters() -> None:
    w = build_workload(2000, 10, 50, dim=64, seed=1, data_dir=None)
    v = w.catalog.vectors(0, 2000)
    clusters = w.catalog.clusters
    sims = v @ v.T
    same = clusters[:, None] == clusters[None, :]
    np.fill_diagonal(same, False)
    other = clusters[:, None] != clusters[None, :]
    assert sims[same].mean() > 0.7
    assert abs(sims[other].mean()) < 0.1


def test_amazon_sessions_are_read_from_both_file_layouts(tmp_path: Path) -> None:
    (tmp_path / "task2_sessions_dev.csv").write_text("locale,prev_items,next_item\nES,A1 A2,A3\n")
    (tmp_path / "sessions_6locales_part1.csv").write_text("prev_items,locale\nB1 B2 B1,JP\n")
    sessions = load_amazon_sessions(tmp_path)
    assert [(s.items, s.lang) for s in sessions] == [(("A1", "A2", "A3"), "es"), (("B1", "B2", "B1"), "ja")]


def test_replayed_sessions_keep_their_product_ids_and_fill_the_catalog(tmp_path: Path) -> None:
    lines = ["prev_items,locale"] + [f"P{i} P{i + 1} P{i + 2},DE" for i in range(0, 60, 3)]
    (tmp_path / "sessions_6locales_part1.csv").write_text("\n".join(lines) + "\n")
    w = build_workload(100, 10, 40, dim=16, data_dir=tmp_path)
    assert w.source.startswith("amazon-m2")
    assert len(w.catalog) == 100
    assert all(re.fullmatch(r"P\d+", e["item_id"]) for e in w.events)
    products = [i for i in w.catalog.ids if i.startswith("P")]
    assert {e["item_id"] for e in w.events} <= set(products)
    assert len(products) + sum(1 for i in w.catalog.ids if i.startswith("F")) == 100  # the rest are fillers
    assert {w.catalog.langs[w.catalog.ids.index(p)] for p in products} == {"de"}


def test_sessions_that_do_not_fit_the_catalog_are_left_out(tmp_path: Path) -> None:
    lines = ["prev_items,locale"] + [f"Q{i} Q{i + 1},FR" for i in range(0, 40, 2)]
    (tmp_path / "sessions_6locales_part1.csv").write_text("\n".join(lines) + "\n")
    w = build_workload(7, 3, 30, dim=16, data_dir=tmp_path)
    clicked = {e["item_id"] for e in w.events}
    assert clicked <= set(w.catalog.ids)
    assert len(clicked) <= 7
    assert len(w.events) == 30  # the three sessions that fit are replayed again under other users


@pytest.mark.skipif(not AMAZON.is_dir(), reason="../shared/data/amazon-m2 is not here")
def test_the_real_amazon_sessions_replay_as_users() -> None:
    w = build_workload(5000, 300, 1000, dim=16, data_dir=AMAZON)
    assert w.source.startswith("amazon-m2")
    assert len(w.events) == 1000
    assert all(e["item_id"] in set(w.catalog.ids) for e in w.events)
    assert any(re.fullmatch(r"B[0-9A-Z]{9}", e["item_id"]) for e in w.events)


# --- figures from output records -----------------------------------------------------------------


def _list(user: str, trigger: str, ts_ms: int) -> OutRecord:
    return OutRecord(user.encode(), orjson.dumps({"user_id": user, "trigger_event_id": trigger}), ts_ms)


def test_a_list_answers_every_earlier_event_of_its_user() -> None:
    events = [
        {"event_id": "a1", "user_id": "A"},
        {"event_id": "b1", "user_id": "B"},
        {"event_id": "a2", "user_id": "A"},
        {"event_id": "a3", "user_id": "A"},
    ]
    records = [_list("A", "a2", 1_000), _list("B", "b1", 1_500), _list("A", "a3", 3_000)]
    cov = coverage(events, records)
    assert cov.covered == 4
    assert cov.lists == 3
    assert cov.answered_at == {"a1": 1.0, "a2": 1.0, "b1": 1.5, "a3": 3.0}
    assert cov.events_per_s == pytest.approx(4 / 2.0)
    assert cov.lists_per_s == pytest.approx(3 / 2.0)  # one list answered two events of A: coalescing


def test_lists_of_other_runs_and_tombstones_are_not_counted() -> None:
    events = [{"event_id": "x1", "user_id": "X"}]
    records = [OutRecord(b"X", None, 5), _list("X", "old-run", 10), _list("X", "x1", 20)]
    cov = coverage(events, records)
    assert (cov.covered, cov.lists, cov.answered_at) == (1, 1, {"x1": 0.02})


def test_percentiles_of_nothing_are_not_numbers() -> None:
    assert all(np.isnan(v) for v in percentiles([]).values())
    assert percentiles([1.0, 2.0, 3.0])["p50"] == 2.0


def test_a_profile_summary_counts_work_and_leaves_waiting_out(tmp_path: Path) -> None:
    raw = tmp_path / "worker.txt"
    raw.write_text(
        "main (xrec/cli.py:5);handle (streams/agents.py:9);rank (xrec/ranking.py:20) 6\n"
        "main (xrec/cli.py:5);handle (streams/agents.py:9);_hit (xrec/store/edge.py:300) 2\n"
        "main (xrec/cli.py:5);run_forever (asyncio/base_events.py:1);select (selectors.py:468) 90\n"
    )
    summary = summarize_collapsed(raw)
    assert summary["busy_samples"] == 8
    assert summary["self"] == [("rank (xrec/ranking.py)", 0.75), ("_hit (xrec/store/edge.py)", 0.25)]
    assert ("handle (streams/agents.py)", 1.0) in summary["inclusive_xrec"]
    assert all("cli.py" not in f for f, _ in summary["inclusive_xrec"])


def test_synthetic_profiles_are_real_profile_bytes() -> None:
    w = build_workload(300, 5, 10, dim=16, data_dir=None)
    out = list(synthetic_profiles(w.catalog, 25, seed=0))
    assert [u for u, _ in out] == [f"U{i}" for i in range(25)]
    for _, raw in out:
        p = UserProfile.from_bytes(raw)
        assert p.dim == 16 and 1 <= len(p.weights) <= 4 and len(p.seen) <= 20


# --- the naive baseline --------------------------------------------------------------------------


def test_profiles_survive_the_naive_json_form() -> None:
    p = UserProfile(dim=8)
    params = ProfileParams()
    rng = np.random.default_rng(0)
    for i in range(12):
        v = rng.standard_normal(8).astype(np.float32)
        p.remember_event(f"e{i}", 64)
        p.observe(v / np.linalg.norm(v), 1.0 if i % 4 else -1.0, 1_700_000_000_000 + i, f"i{i}", "de", params)
    raw = profile_to_json(p)
    assert isinstance(orjson.loads(raw)["centroids"][0][0], float)  # floats, not bytes
    assert profile_from_json(raw).to_bytes() == p.to_bytes()


@dataclass
class Clock:
    now: float = 1_700_000_100_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_naive_engine_builds_the_same_lists_as_the_batch_engine_one_event_at_a_time(
    tmp_path: Path,
) -> None:
    dim = 16
    w = build_workload(200, 6, 40, dim=dim, seed=5, data_dir=None, now_ms=1_700_000_000_000)
    vecs = w.catalog.vectors(0, len(w.catalog))
    points = [
        ItemPoint(i, vecs[n], {"item_id": i, "lang": w.catalog.langs[n], "available": True, "ts": 0})
        for n, i in enumerate(w.catalog.ids)
    ]
    settings = Settings(store_backend="edge")
    clock = Clock()
    stores = []
    for name in ("batch", "naive"):
        s = open_store(settings.replace(store_path=str(tmp_path / name)), dim=dim)
        await s.ensure_collection(dim)
        await s.upsert(points)
        stores.append(s)
    batch = Recommender(settings, stores[0], None, dim=dim, clock_ms=clock)
    naive = NaiveEngine(settings, stores[1], dim, clock_ms=clock)
    table: dict[bytes, bytes] = {}
    try:
        for e in w.events:
            event = Interaction(e["event_id"], e["user_id"], e["item_id"], "click", e["ts"])
            clock.now += 1000
            expected = (await batch.handle_events([event], table)).lists
            got = await naive.process(event)
            assert got is not None and len(expected) == 1
            assert [(i.item_id, i.because) for i in got.items] == [(i.item_id, i.because) for i in expected[0].items]
            assert [i.score for i in got.items] == pytest.approx([i.score for i in expected[0].items], abs=1e-5)
        assert naive.counts.processed == len(w.events)
        assert await naive.process(event) is None  # a redelivery is absorbed, as in the worker
        assert naive.counts.duplicates == 1
    finally:
        for s in stores:
            await s.close()


def test_load_levels_and_worker_counts_are_read_from_commas_and_refused_plainly_out_of_range() -> None:
    assert parse_levels("10,30, 50") == [10, 30, 50]
    assert worker_counts("1,2") == [1, 2]
    for bad in ("", "x", "0", "201", "50,-5"):
        with pytest.raises(CommandError, match="--load-levels"):
            parse_levels(bad)
    for bad in ("", "two", "0"):
        with pytest.raises(CommandError, match="--workers"):
            worker_counts(bad)


def level(rate: float, p99: float, answered: int = 100, events: int = 100) -> dict:
    return {"offered_rate": rate, "latency_ms": {"p99": p99}, "answered": answered, "events": events}


def test_the_fresh_rate_within_100_ms_is_read_where_the_curve_crosses_it() -> None:
    curve = [level(300.0, 140.0), level(100.0, 20.0), level(200.0, 60.0)]  # levels in any order
    fresh = fresh_rate_within(curve)
    assert fresh["bound"] == "about"
    assert fresh["events_per_s"] == pytest.approx(200.0 + 40.0 / 80.0 * 100.0)  # 250 events/s


def test_the_fresh_rate_says_when_every_level_or_none_stays_within_it() -> None:
    assert fresh_rate_within([level(50.0, 12.0), level(150.0, 90.0)]) == {
        "p99_ms": 100.0,
        "events_per_s": 150.0,
        "bound": "at least",
    }
    assert fresh_rate_within([level(50.0, 130.0), level(150.0, 90.0)])["bound"] == "below"
    assert fresh_rate_within([])["events_per_s"] is None


def test_a_level_that_left_events_unanswered_is_not_within_the_limit_whatever_its_p99() -> None:
    fresh = fresh_rate_within([level(100.0, 20.0), level(200.0, 40.0, answered=97)])
    assert (fresh["bound"], fresh["events_per_s"]) == ("about", 100.0)


def test_a_levels_batches_commits_and_collector_pauses_are_what_happened_between_two_readings() -> None:
    metrics = XrecMetrics()
    metrics.batch(9, apply=0.5)
    before = MetricSamples.parse(metrics.render()[0].decode())
    metrics.batch(2, apply=0.004, lists=0.010)
    metrics.batch(4, apply=0.002, lists=0.020)
    metrics.commit(0.006)
    metrics.gc_pause(0, 0.001)
    metrics.gc_pause(2, 0.030)
    metrics.gc_pause(2, 0.010)
    after = MetricSamples.parse(metrics.render()[0].decode())
    b = batch_phases(before, after)
    assert b["batches"] == 2 and b["events_per_batch"] == pytest.approx(3.0)
    assert b["apply_ms"] == pytest.approx(3.0) and b["lists_ms"] == pytest.approx(15.0)
    assert b["commits"] == 1 and b["commit_ms"] == pytest.approx(6.0)
    assert b["full_gcs"] == 2 and b["full_gc_ms"] == pytest.approx(20.0)  # generation 2 only
    assert b["gc_ms"] == pytest.approx(41.0)  # every generation's pauses


def test_a_level_without_a_full_collection_prints_zero_also_when_read_back_from_json() -> None:
    batches = {"events_per_batch": 1.0, "commits": 3.0, "commit_ms": 5.0, "full_gcs": 0.0, "full_gc_ms": math.nan}
    batches |= {"fetch_ms": 1.0, "queue_ms": 0.0, "apply_ms": 0.5, "lists_ms": 4.0, "delivery_ms": 1.0, "gc_ms": 0.4}
    level = {
        "percent_of_saturation": 10,
        "offered_rate": 9.0,
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
        "producer_ms": {"p50": 1.0, "p99": 2.0},
        "answered": 9,
        "events": 9,
        "cpu_util": 0.5,
        "batches": batches,
        "list_timestamps": "broker append",
    }
    result = table_input(load_curve=[level])
    printed = format_table(orjson.loads(orjson.dumps(result)))  # NaN comes back from --json as null
    assert "; 3 × 5.0; 0 (0)" in printed
    assert printed == format_table(result)


def table_input(load_curve: list[dict[str, object]], fresh: dict[str, object] | None = None) -> dict[str, object]:
    """A result as ``format_table`` reads it, with one figure everywhere but the latency curve."""
    return {
        "workload": {"source": "s", "items": 1, "users": 1, "events": 1},
        "catalog": {"load_s": 0.0, "optimize_s": 0.0, "search": "exact"},
        "xrec": {
            "saturation": {
                "events_per_s": 1.0,
                "covered": 1,
                "lists": 1,
                "lists_per_s": 1.0,
                "seconds": 1.0,
                "cpu_s_per_1k_events": 1.0,
                "cpu_util": 1.0,
            },
            "load_curve": load_curve,
            "fresh": fresh,
            "memory": {
                "profiles": 1,
                "profile_bytes_mean": 1.0,
                "profile_mb_per_100k": 1.0,
                "rss_growth_mb": 1.0,
                "rss_mb_per_100k_new_profiles": 1.0,
            },
        },
        "naive": {"status": "not run"},
        "review_mix": {"status": "not run"},
        "machine": {"cpus": 2, "load_avg_at_start": [0.0], "load_avg_at_end": [0.0]},
        "seconds": 1.0,
    }


def test_the_table_prints_the_fresh_rate_line() -> None:
    fresh = {"p99_ms": 100.0, "events_per_s": 251.4, "bound": "about"}
    table = format_table(table_input(load_curve=[], fresh=fresh))
    assert "fresh      p99 within 100 ms up to about 251 fresh events/s" in table


def scale_run(stamps: list[str]) -> dict[str, object]:
    """One --workers run as ``format_scale`` reads it, with a load level per timestamp kind."""
    levels = [
        {
            "percent_of_saturation": 50,
            "offered_rate": 10.0,
            "latency_ms": {"p50": 1.0, "p99": 2.0, "max": 3.0},
            "answered": 1,
            "events": 1,
            "list_timestamps": stamp,
        }
        for stamp in stamps
    ]
    saturation = {"lists_per_s": 1.0, "covered": 1, "events": 1, "lists": 1, "per_worker": [{"cpu_util": 1.0}]}
    return {"workers": 1, "saturation": saturation, "lists_per_s_ratio_to_first": 1.0, "load_curve": levels}


def test_the_several_workers_table_says_what_its_latencies_span() -> None:
    def table(*runs: dict[str, object]) -> str:
        return "\n".join(format_scale({"store": "edge", "catalog": {"load_s": 0.0}, "runs": list(runs)}))

    assert "(latency: event sent → its list appended in Kafka)" in table(scale_run(["broker append"] * 2))
    mixed = table(scale_run(["broker append", "producer"]))
    assert "handed to the worker's producer" in mixed and "appended in Kafka" not in mixed
    assert "latency:" not in table(scale_run([]))


def test_a_phase_that_is_not_the_profiled_one_leaves_the_profile_file_alone(tmp_path: Path) -> None:
    out = tmp_path / "worker.txt"
    out.write_text("the profiled level's stacks\n")
    args = argparse.Namespace(py_spy=out, py_spy_level=50, py_spy_gil=False)
    bench = Bench(args=args, settings=Settings(), tmp=tmp_path)
    with bench.py_spy(pid=os.getpid(), seconds=0):
        pass
    assert out.read_text() == "the profiled level's stacks\n" and bench.profile is None


def test_py_spy_samples_only_the_thread_holding_the_interpreter_lock_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "worker.txt"
    plain = py_spy_argv("py-spy", 42, 15, out)
    held = py_spy_argv("py-spy", 42, 15, out, gil=True)
    assert "--gil" not in plain and "--gil" in held
    assert [a for a in held if a != "--gil"] == plain
    assert plain[plain.index("--format") + 1] == "raw" and plain[plain.index("--pid") + 1] == "42"
    assert py_spy_format(tmp_path / "w.json") == "speedscope" and py_spy_format(tmp_path / "w.svg") == "flamegraph"


def test_latencies_end_at_the_brokers_append_only_when_every_list_was_stamped_by_it() -> None:
    broker = OutRecord(b"u", b"{}", 1_000, broker_stamped=True)
    producer = OutRecord(b"u", b"{}", 1_000)
    assert stamped_by([broker, broker]) == "broker append"
    assert stamped_by([broker, producer]) == "producer"  # one list stamped by its producer: no claim for the rest
    assert stamped_by([]) == "producer"
