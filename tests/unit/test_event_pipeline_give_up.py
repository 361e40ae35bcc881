"""The batch loop when partitions move: messages given up are left to their next owner, never applied here.

The real ``EventPipeline``, ``Runtime`` and engine over a real edge store; Kafka's side is a recording
stand-in for the three topics the pipeline writes and for Faust's messages, whose consumer generation
is what a give-up is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

from streams.agents import EventPipeline, waits_for_every_read_message
from streams.runtime import Runtime
from xrec.config import Settings
from xrec.events import ItemUpsert
from xrec.metrics import XrecMetrics
from xrec.store import open_store
from xrec.vectors import VectorSpace
from xrec.worker_process import MetricSamples

pytestmark = pytest.mark.unit

DIM = 8
T0 = 1_700_000_000_000
EVENTS = "xrec.events"


@dataclass
class Sink:
    """A topic the pipeline writes to: records what it was sent; ``before_send`` runs inside a send."""

    sent: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)
    before_send: Callable[[], Awaitable[None]] | None = None

    async def send(self, key: bytes | None, value: bytes | None) -> asyncio.Future[None]:
        if self.before_send is not None:
            hook, self.before_send = self.before_send, None
            await hook()
        self.sent.append((key, value))
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


class Profiles(dict[bytes, bytes]):
    data = None  # as Faust's in-memory table: no RocksDB databases to count


@dataclass(eq=False)
class Message:
    key: bytes
    value: bytes
    offset: int
    generation_id: int
    topic: str = EVENTS
    partition: int = 0
    timestamp: float = 0.0
    acked: bool = False
    committed: list[int] = field(default_factory=list)

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    def ack(self, consumer: Any) -> None:
        self.acked = True
        self.committed.append(self.offset)


def click(offset: int, generation: int, user: str = "u1", key: str | None = None) -> Message:
    value = orjson.dumps(
        {"event_id": f"e{offset}", "user_id": user, "item_id": "i1", "type": "click", "ts": T0 + offset}
    )
    return Message(key=(key or user).encode(), value=value, offset=offset, generation_id=generation)


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[EventPipeline]:
    settings = Settings(store_backend="edge", store_path=str(tmp_path / "store"), list_length=3)
    store = open_store(settings, dim=DIM)
    runtime = Runtime(settings, store, None, XrecMetrics(), DIM, VectorSpace("test-model", "test", DIM))
    await runtime.ensure_started()
    vector = np.ones(DIM, np.float32)
    await runtime.recommender.handle_items(
        [
            ItemUpsert(item_id=f"i{n}", title=f"t{n}", body="", lang="en", category="c", ts=T0, vector=vector + n)
            for n in range(4)
        ]
    )
    app = SimpleNamespace(consumer_generation_id=1, consumer=None)
    p = EventPipeline(app, runtime, Profiles(), Sink(), Sink(), Sink())  # type: ignore[arg-type]
    try:
        yield p
    finally:
        await store.close()


def counted(pipeline: EventPipeline, name: str, **labels: str) -> float:
    """A metric of the pipeline as a scrape of ``/metrics`` reads it, summed over the other labels."""
    return MetricSamples.parse(pipeline.metrics.render()[0].decode()).sum(name, **labels)


async def run_batch(pipeline: EventPipeline, messages: list[Message]) -> None:
    """Through the real batch loop: the feed, one batch, then until everything it wrote is settled."""
    for message in messages:
        await pipeline.feed.put(SimpleNamespace(message=message), 0.0)
    loop = asyncio.ensure_future(pipeline.run())
    try:
        for _ in range(500):
            await asyncio.sleep(0.002)
            if not len(pipeline.feed) and not pipeline.holds_messages and all(m.acked for m in messages):
                break
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_events_whose_partition_is_given_up_while_their_batch_is_read_are_left_to_the_next_owner(
    pipeline: EventPipeline,
) -> None:
    # The second record is keyed by someone else, so the batch re-keys it; the partitions move during that send,
    # after the first was decoded and before the third was.
    pipeline.by_user.before_send = pipeline.give_up
    applied_elsewhere, rekeyed = click(0, generation=1), click(1, generation=1, key="not-u1")
    malformed = Message(key=b"u1", value=b"{not json", offset=2, generation_id=1)
    await run_batch(pipeline, [applied_elsewhere, rekeyed, malformed])
    assert b"u1" not in pipeline.profiles and pipeline.recommendations.sent == []
    assert counted(pipeline, "xrec_events_total", outcome="processed") == 0
    assert counted(pipeline, "xrec_dlq_records_total") == 0  # nor dead-lettered here: its next owner does that, once
    assert all(m.acked and m.committed == [] for m in (applied_elsewhere, malformed))  # done here, never committed

    # The same event read again in the next generation (by this worker or another) is applied, once.
    pipeline.app.consumer_generation_id = 2
    again = click(0, generation=2)
    await run_batch(pipeline, [again])
    assert b"u1" in pipeline.profiles and [key for key, _ in pipeline.recommendations.sent] == [b"u1"]
    assert counted(pipeline, "xrec_events_total", outcome="processed") == 1 and again.committed == [0]


@pytest.mark.parametrize(
    ("should_stop", "rebalancing", "flow_active", "gives_up"),
    [
        (False, False, True, False),  # running
        (False, True, False, True),  # partitions revoked: Faust stopped the flow and waits for every ack
        (False, True, True, False),  # a new assignment recovering: its records are the next run's
        (True, False, True, True),  # the worker stops
    ],
    ids=["running", "revoked", "recovering", "stopping"],
)
def test_held_messages_are_given_up_only_while_faust_waits_for_every_read_message(
    should_stop: bool, rebalancing: bool, flow_active: bool, gives_up: bool
) -> None:
    app = SimpleNamespace(
        should_stop=should_stop, rebalancing=rebalancing, consumer=SimpleNamespace(flow_active=flow_active)
    )
    assert waits_for_every_read_message(app) is gives_up
