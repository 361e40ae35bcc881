"""``xrec bench pipeline`` end to end on the test broker, tiny sizes: it must produce figures.

Speeds are never asserted (the machine is shared); what is checked is that every figure comes from
real lists on the output topic: all events are answered, rates and percentiles are numbers, the
naive baseline ran, and the review-heavy mix either ran with the model or says plainly why not.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import qdrant_binary_or_skip
from xrec.bench.pipeline.report import format_table
from xrec.config import Settings
from xrec.modelhub import default_model_dir, is_complete

pytestmark = pytest.mark.slow


def run_bench(kafka_bootstrap: str, *args: str, **extra_env: str) -> dict[str, Any]:
    env = {**os.environ, "XREC_KAFKA_BOOTSTRAP": kafka_bootstrap, **extra_env}
    done = subprocess.run(
        [sys.executable, "-m", "xrec.cli", "bench", "pipeline", "--json", *args],
        env=env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    sys.stderr.write(done.stderr.decode(errors="replace"))  # the bench's log: pytest shows it when a test fails
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def test_the_pipeline_bench_reports_throughput_a_latency_curve_cost_and_the_naive_ratio(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    model_ready = is_complete(default_model_dir(Settings.from_env()))
    args = ["--items", "400", "--users", "40", "--events", "240", "--naive-events", "60"]
    args += ["--latency-seconds", "3", "--load-levels", "30,60", "--generated", "--plot", str(tmp_path / "curve.png")]
    if model_ready:
        args += ["--with-text", "--text-events", "30"]
    result = run_bench(kafka_bootstrap, *args)

    sat = result["xrec"]["saturation"]
    assert sat["covered"] == sat["events"] == 240, (sat["handled"], sat["unanswered"])
    assert sat["unanswered"] == []
    assert sat["events_per_s"] > 0 and sat["cpu_s_per_1k_events"] > 0
    assert 0 < sat["lists"] <= 240
    assert sat["dlq"] == 0

    assert result["settings"]["held_profiles"] == 20  # half the users return with a history
    curve = result["xrec"]["load_curve"]
    assert [level["percent_of_saturation"] for level in curve] == [30, 60]
    for level in curve:
        assert level["answered"] == level["events"] > 0
        assert level["list_timestamps"] == "broker append"  # a latency ends when a subscriber could read the list
        p = level["latency_ms"]
        assert 0 <= p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
        assert level["batches"]["batches"] > 0 and level["batches"]["apply_ms"] >= 0
        assert level["batches"]["commits"] > 0 and level["batches"]["commit_ms"] > 0  # Faust commits each second
    assert curve[1]["offered_rate"] > curve[0]["offered_rate"]
    assert "(latency: event sent → its list appended in Kafka" in format_table(result)  # the printed table says so too
    assert (tmp_path / "curve.png").stat().st_size > 0

    mem = result["xrec"]["memory"]
    assert mem["profiles"] == result["workload"]["users"]
    assert mem["profile_bytes_mean"] > 0

    naive = result["naive"]
    assert naive["covered"] == naive["events"] == 60
    assert naive["lists"] == 60  # one list per event: no coalescing
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0

    text = result["review_mix"]
    if model_ready:
        assert text["status"] == "ok"
        assert text["covered"] == text["events"] == 30 and text["reviews"] > 0
        assert text["encode_s"] > 0
    else:
        assert text["status"] == "not run (pass --with-text)"


def test_the_pipeline_bench_measures_one_and_two_workers_on_a_qdrant_server_and_the_loss_of_one(
    kafka_bootstrap: str,
) -> None:
    """``--workers 1,2 --store qdrant --kill-one``: each count drains the same backlog on the real server,
    both of two workers serve, and a paced level survives a SIGKILL of one of them."""
    qdrant_binary_or_skip()
    args = ["--items", "300", "--users", "40", "--events", "240", "--generated", "--latency-seconds", "2"]
    args += ["--load-levels", "50", "--workers", "1,2", "--store", "qdrant", "--kill-one"]
    # Kafka notices the killed member after the session timeout: 6 s (the broker's minimum) keeps this short.
    result = run_bench(kafka_bootstrap, *args, XREC_SESSION_TIMEOUT_S="6")

    scale = result["scale"]
    assert scale["store"] == "qdrant"
    one, two = scale["runs"]
    assert (one["workers"], two["workers"]) == (1, 2)
    for run in (one, two):
        sat = run["saturation"]
        assert sat["covered"] == sat["events"] == 240, sat
        assert all(w["lists"] > 0 for w in sat["per_worker"]), sat["per_worker"]  # every worker served
        assert sum(w["lists"] for w in sat["per_worker"]) == sat["lists"]
        assert sat["qdrant_cpu_util"] > 0
        [level] = run["load_curve"]
        assert level["answered"] == level["events"] > 0
        assert level["list_timestamps"] == "broker append"  # a latency ends when a subscriber could read the list
        assert 0 <= level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
    assert len(two["saturation"]["per_worker"]) == 2
    assert format_table(result).count("(latency: event sent → its list appended in Kafka)") == 2  # one per count
    assert math.isfinite(two["lists_per_s_ratio_to_first"])
    assert "kill_one" not in one
    kill = two["kill_one"]
    assert kill["rebalance_s"] > 0
    # Every event offered during the kill was answered by a list, from the survivor if need be (a
    # redelivered event the killed worker had applied is answered again).
    assert kill["answered"] == kill["events"] > 0, kill


# Loaded by the worker (PYTHONPATH) in the test below: Faust's seek of the stream partitions at the end of
# recovery takes two seconds longer, as on a slow broker, so records keep arriving before Faust resumes its
# flow control and empties the stream buffers.
SLOW_SEEK_SITECUSTOMIZE = """
import os
import sys
if "worker" in sys.argv:
    import asyncio
    import faust.transport.consumer

    _perform_seek = faust.transport.consumer.Consumer.perform_seek

    async def perform_seek_slowly(self):
        await _perform_seek(self)
        with open(os.path.join(os.path.dirname(__file__), "seeks"), "a") as seeks:
            seeks.write("slowed\\n")
        await asyncio.sleep(2.0)

    faust.transport.consumer.Consumer.perform_seek = perform_seek_slowly
"""


def test_a_worker_starting_on_waiting_events_answers_each_even_when_faust_resumes_its_flow_late(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The bench preloads its events before the worker starts. Records fetched between Faust's seek and
    the resume of its flow control were dropped when that resume emptied the stream buffers, and their
    offsets committed unread (faust-streaming #596). Here the window is two seconds and one event per
    batch keeps the worker from taking the records out of those buffers in time, as a slow worker would."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_SEEK_SITECUSTOMIZE)
    args = ["--items", "400", "--users", "40", "--events", "1500", "--naive-events", "0", "--generated"]
    args += ["--load-levels", "30", "--latency-seconds", "2"]
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    result = run_bench(kafka_bootstrap, *args, PYTHONPATH=pythonpath, XREC_EVENT_BATCH_SIZE="1")

    assert (tmp_path / "seeks").read_text().count("slowed") >= 1  # the worker did run the slow seek
    sat = result["xrec"]["saturation"]
    assert sat["unanswered"] == []
    assert sat["covered"] == sat["events"] == 1500, sat["handled"]
    assert sat["dlq"] == 0
