"""A batch from the events and control topics is handled in its own order, split at control records."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streams.agents import EventPipeline

CONTROL, EVENTS = "xrec.control", "xrec.events"


class RecordingPipeline(EventPipeline):
    """Keeps the real splitting of ``process`` and records what it hands on, in order."""

    def __init__(self) -> None:
        self.runtime = SimpleNamespace(topics=SimpleNamespace(control=CONTROL))  # type: ignore[assignment]
        self.calls: list[tuple[str, list[str]]] = []

    async def _events(self, batch: Any) -> None:
        self.calls.append(("events", [e.message.value for e in batch]))

    async def _control(self, message: Any) -> None:
        self.calls.append(("control", [message.value]))


def record(topic: str, value: str) -> Any:
    return SimpleNamespace(message=SimpleNamespace(topic=topic, value=value))


async def test_events_before_a_forget_are_applied_before_it_and_events_after_it_after_it() -> None:
    pipeline = RecordingPipeline()
    batch = [record(EVENTS, "e1"), record(EVENTS, "e2"), record(CONTROL, "forget"), record(EVENTS, "e3")]
    await pipeline.process(batch)
    assert pipeline.calls == [("events", ["e1", "e2"]), ("control", ["forget"]), ("events", ["e3"])]


async def test_a_batch_of_only_events_is_handled_in_one_engine_call() -> None:
    pipeline = RecordingPipeline()
    await pipeline.process([record(EVENTS, "e1"), record(EVENTS, "e2")])
    assert pipeline.calls == [("events", ["e1", "e2"])]


async def test_back_to_back_control_records_make_no_empty_engine_calls() -> None:
    pipeline = RecordingPipeline()
    await pipeline.process([record(CONTROL, "c1"), record(CONTROL, "c2"), record(EVENTS, "e1")])
    assert pipeline.calls == [("control", ["c1"]), ("control", ["c2"]), ("events", ["e1"])]


async def test_an_empty_batch_does_nothing_but_a_retry_runs_the_engine_for_the_waiting_events() -> None:
    pipeline = RecordingPipeline()
    await pipeline.process([])
    assert pipeline.calls == []
    await pipeline.retry_waiting()
    assert pipeline.calls == [("events", [])]
