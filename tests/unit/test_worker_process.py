"""The one harness that runs a worker from the outside (demo, benchmark, integration tests)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from xrec.worker_process import MetricSamples, WorkerProcess, WorkerProcessError

SCRAPE = """\
# HELP xrec_events_total Events handled.
# TYPE xrec_events_total counter
xrec_events_total{type="click",outcome="processed"} 5.0
xrec_events_total{type="view",outcome="dlq"} 2.0
xrec_events_created{type="click",outcome="processed"} 1.7e9
# HELP xrec_items_indexed Items in the store.
# TYPE xrec_items_indexed gauge
xrec_items_indexed 12.0
"""


def test_metric_sums_pick_samples_by_name_and_label() -> None:
    scrape = MetricSamples.parse(SCRAPE)
    assert scrape.sum("xrec_events_total") == 7.0
    assert scrape.sum("xrec_events_total", outcome="dlq") == 2.0
    assert scrape.sum("xrec_events_total", outcome="dlq", type="click") == 0.0
    assert scrape.sum("xrec_items_indexed") == 12.0
    assert scrape.sum("xrec_missing") == 0.0


def test_samples_sum_by_one_label() -> None:
    assert MetricSamples.parse(SCRAPE).by_label("xrec_events_total", "outcome") == {"processed": 5.0, "dlq": 2.0}


def test_a_child_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('cannot reach the broker'); sys.exit(3)"]
    child = WorkerProcess({}, tmp_path / "child.log", web_port=1, argv=argv, name="test child").start()
    with pytest.raises(WorkerProcessError, match=r"(?s)test child exited with code 3.*cannot reach the broker"):
        child.wait_ready(timeout_s=30)
    assert child.exited() == 3


def test_stop_says_how_the_child_ended(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    child = WorkerProcess({}, tmp_path / "child.log", argv=argv).start()
    assert child.alive()
    assert child.stop(signal.SIGTERM, timeout_s=30) == -signal.SIGTERM
    assert child.stop_note.startswith("stopped (exit code")
    assert child.stop() == -signal.SIGTERM
    assert child.stop_note.startswith("had already exited")


def test_metrics_or_empty_when_nothing_listens(tmp_path: Path) -> None:
    from xrec.broker import free_port

    child = WorkerProcess({}, tmp_path / "child.log", web_port=free_port())
    assert child.metrics_or_empty().samples == ()


def test_the_first_error_of_a_log_is_shown_with_what_follows_it_and_coordinator_noise_is_skipped(
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    log.write_text(
        "start\n"
        "[t] [ERROR] Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError\n"
        "ready\n"
        "[t] [ERROR] the lists of 3 users could not be built\n"
        "Traceback (most recent call last):\n"
        "StoreError: deadline\n" + "".join(f"later {i}\n" for i in range(50))
    )
    worker = WorkerProcess({}, log, 0, ["true"])
    shown = worker.first_error(3).splitlines()
    assert [line.strip() for line in shown] == [
        "[t] [ERROR] the lists of 3 users could not be built",
        "Traceback (most recent call last):",
        "StoreError: deadline",
    ]
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert worker.first_error(2) == worker.log_tail(2) == "    line 28\n    line 29"
