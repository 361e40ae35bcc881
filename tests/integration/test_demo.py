"""The README's first command, ``xrec demo``, runs to completion against the test broker with a small
catalog: a real worker process, the real encoder, every simulated reader gets a list for their last
event, lists draw on the reader's topic in other languages, the run cleans up every topic it made, and with
``--impressions`` each list is shown to its reader as an impression event the worker counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def run_demo(kafka_bootstrap: str, *extra: str) -> tuple[subprocess.CompletedProcess[bytes], dict]:  # type: ignore[type-arg]
    # XREC_HOME stays as it is so the prepared model is reused; the demo gives its worker a temp home,
    # store, app id and topics of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("XREC_") or k == "XREC_HOME"}
    env["XREC_KAFKA_BOOTSTRAP"] = kafka_bootstrap
    args = ["demo", "--users", "4", "--items-per-topic", "2", "--interval-ms", "20", "--json", *extra]
    done = subprocess.run(
        [sys.executable, "-m", "xrec.cli", *args], cwd=REPO, env=env, capture_output=True, timeout=540
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    return done, orjson.loads(done.stdout)


@pytest.fixture(scope="module")
def demo_run(kafka_bootstrap: str) -> tuple[subprocess.CompletedProcess[bytes], dict]:  # type: ignore[type-arg]
    return run_demo(kafka_bootstrap)


def test_the_demo_says_what_it_did_and_prints_one_json_summary(demo_run) -> None:  # type: ignore[no-untyped-def]
    done, summary = demo_run
    assert len(done.stdout.splitlines()) == 1
    log = done.stderr.decode()
    assert "(XREC_KAFKA_BOOTSTRAP); nothing to start" in log
    assert "worker ready" in log and "encoded and indexed" in log
    assert "deleted this run's" in log and f"({summary['run']}." in log
    assert "stopped (exit code" in log


def test_every_event_is_processed_and_every_reader_gets_a_list_for_their_last_event(demo_run) -> None:  # type: ignore[no-untyped-def]
    _, summary = demo_run
    assert summary["catalog_items"] == 2 * 6 * 7
    assert summary["worker"]["items_indexed"] == summary["catalog_items"]
    assert summary["events_sent"] == 4 * 9
    assert summary["impressions"]["sent"] == summary["worker"]["impressions_processed"] == 0
    assert summary["worker"]["events_processed"] == summary["events_sent"]
    assert summary["worker"]["dlq_records"] == 0
    assert summary["users_with_final_list"] == 4 and summary["missing_users"] == []
    assert summary["latency_ms"]["lists_measured"] == summary["lists_received"] > 0
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


def test_lists_draw_on_the_readers_topic_in_languages_they_never_read(demo_run) -> None:  # type: ignore[no-untyped-def]
    _, summary = demo_run
    assert summary["share_on_topic"] >= 0.5
    assert summary["share_on_topic_new_language"] > 0.25
    assert len(summary["languages_in_final_lists"]) >= 4
    assert 0 < summary["coverage"] <= 1
    for user_id, items in summary["final_lists"].items():
        assert items, user_id


async def test_the_demo_leaves_no_topic_of_its_run_behind(demo_run, kafka_bootstrap: str) -> None:  # type: ignore[no-untyped-def]
    _, summary = demo_run
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        left = [t for t in await admin.list_topics() if t.startswith(summary["run"])]
    finally:
        await admin.close()
    assert left == []


def test_with_impressions_every_list_is_shown_to_its_reader_and_the_worker_counts_each(kafka_bootstrap: str) -> None:
    _, summary = run_demo(kafka_bootstrap, "--impressions")
    shown = summary["impressions"]["sent"]
    assert shown == summary["lists_received"] > 0  # every list of a reader is shown to them once
    assert summary["worker"]["impressions_processed"] == shown
    assert summary["worker"]["events_processed"] == summary["events_sent"] + shown
    assert summary["worker"]["dlq_records"] == 0
    assert summary["users_with_final_list"] == 4 and summary["missing_users"] == []
