"""Consumer loops under supervision: a failure is counted, named and retried; too many stop the worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from streams.agents import EventPipeline
from streams.feed import EventFeed
from streams.supervision import ConsumerLoops
from xrec.metrics import XrecMetrics

pytestmark = pytest.mark.unit


def failures(metrics: XrecMetrics, consumer: str) -> float:
    value = metrics.registry.get_sample_value("xrec_consumer_failures_total", {"consumer": consumer})
    return float(value or 0.0)


async def test_a_failing_loop_is_counted_named_and_started_again_until_it_goes_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = XrecMetrics()
    stopped: list[bool] = []
    loops = ConsumerLoops(metrics, max_failures=5, first_pause_s=0.0, stop_worker=lambda: stopped.append(True))
    attempts = 0
    seen_failing: list[dict[str, str]] = []

    async def items_loop() -> None:
        nonlocal attempts
        attempts += 1
        seen_failing.append(dict(loops.failing))
        if attempts < 3:
            raise RuntimeError(f"bad batch {attempts}")
        loops.went_round("items")  # one healthy round, then the loop ends (as at shutdown)

    with caplog.at_level(logging.ERROR, logger="streams.supervision"):
        await loops.run("items", items_loop)
    assert attempts == 3 and stopped == [] and loops.fatal is None
    assert failures(metrics, "items") == 2 and failures(metrics, "events") == 0
    assert seen_failing[2] == {"items": "RuntimeError: bad batch 2"}  # /readyz names it while it fails
    assert loops.failing == {}  # and forgets it once the loop went round
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 2
    assert "items failed (1 of 5 in a row): RuntimeError: bad batch 1" in caplog.text


async def test_too_many_failures_in_a_row_stop_the_worker_with_the_reason() -> None:
    metrics = XrecMetrics()
    stopped: list[bool] = []
    loops = ConsumerLoops(metrics, max_failures=3, first_pause_s=0.0, stop_worker=lambda: stopped.append(True))

    async def poison() -> None:
        raise ValueError("cannot decode this batch")

    await loops.run("events", poison)
    assert stopped == [True]
    assert loops.fatal == "events failed 3 times in a row, last: ValueError: cannot decode this batch"
    assert failures(metrics, "events") == 3


async def test_a_healthy_round_between_failures_resets_the_count() -> None:
    loops = ConsumerLoops(XrecMetrics(), max_failures=2, first_pause_s=0.0, stop_worker=lambda: None)
    outcomes = iter(["fail", "ok", "fail", "ok", "fail", "end"])

    async def flaky() -> None:
        while True:
            step = next(outcomes)
            if step == "fail":
                raise RuntimeError("transient")
            if step == "end":
                return
            loops.went_round("items")

    await loops.run("items", flaky)
    assert loops.fatal is None  # never two failures in a row


class FailingOnceEventPipeline(EventPipeline):
    """The real batch loop (``EventPipeline.run``) over a real feed; its first batch fails."""

    def __init__(self, loops: ConsumerLoops) -> None:
        self.runtime = SimpleNamespace(loops=loops)  # type: ignore[assignment]
        self.metrics = XrecMetrics()
        self.feed = EventFeed(max_batch=8, capacity=8)
        self.batches = 0

    async def process(self, batch: Any) -> None:
        self.batches += 1
        if self.batches == 1:
            raise RuntimeError("the producer was closed under it")


async def test_an_event_loop_started_again_after_a_failure_is_healthy_while_it_waits_for_events() -> None:
    loops = ConsumerLoops(XrecMetrics(), max_failures=5, first_pause_s=0.0, stop_worker=lambda: None)
    pipeline = FailingOnceEventPipeline(loops)
    await pipeline.feed.put(SimpleNamespace(message=SimpleNamespace(topic="xrec.events", partition=0)))
    task = asyncio.ensure_future(loops.run("events", pipeline.run))
    try:
        for _ in range(100):  # until the loop failed, was started again and waits on an empty feed
            await asyncio.sleep(0)
        assert pipeline.batches == 1 and failures(loops.metrics, "events") == 1
        assert loops.failing == {}  # no event arrived since, and /readyz must not stay 503 until one does
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
