"""State that workers share through a one-partition compacted topic: read from its start, then followed.

Three things travel this way: the neutral space's statistics (``streams/language_stats.py``), what the
learned ranker learned (``streams/ranker_weights.py``) and the click-through counts
(``streams/click_through.py``). Each is read from the topic's beginning at start, so a restarted
worker has what was published before it stopped; ``caught_up`` tells when it has read what the topic
held when it started. ``SharedState`` adds the other half for the last two: a worker publishes its own
share every few seconds under keys of its own, and takes back its own share once caught up.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from xrec.kafka import aiokafka_kwargs, producer_kwargs

if TYPE_CHECKING:
    from xrec.config import Settings
    from xrec.metrics import XrecMetrics

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 5.0
RETRY_AFTER_S = 5.0
FINAL_PUBLISH_WITHIN_S = 10.0
WORKER_ID_FILE = "worker-id"


def worker_id(state_dir: Path) -> str:
    """This worker's lasting name for what it publishes: made once, kept in its state directory."""
    for name in (WORKER_ID_FILE, "ranker-worker-id"):  # the second: the name xrec 0.x gave the same file
        try:
            return (state_dir / name).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
    state_dir.mkdir(parents=True, exist_ok=True)
    made = uuid.uuid4().hex[:12]
    (state_dir / WORKER_ID_FILE).write_text(made, encoding="utf-8")
    return made


async def follow(
    consumer: AIOKafkaConsumer,
    topic: str,
    apply: Callable[[bytes | None, bytes | None], None],
    caught_up: Callable[[], None],
    each_round: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Read ``topic`` (one partition) from its start and keep following it, record by record into
    ``apply``; ``caught_up`` is called once, when what the topic held at the start has been read;
    ``each_round`` (after that) once per poll, at least every half second. Runs until cancelled."""
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    end = (await consumer.end_offsets([tp]))[tp]
    restored = False
    while True:
        if not restored and await consumer.position(tp) >= end:
            restored = True
            caught_up()
        batches = await consumer.getmany(timeout_ms=500)
        for message in batches.get(tp, []):
            apply(message.key, message.value)
        if restored and each_round is not None:
            await each_round()


class SharedState(abc.ABC):
    """A worker's share of some state, published under its own keys; everyone's shares followed."""

    #: What is shared, in words, for the log.
    what: str = "shared state"
    #: Its name in metrics (the ``state`` label).
    state: str = "shared"

    def __init__(self, settings: Settings, bootstrap: str, topic: str, metrics: XrecMetrics) -> None:
        self.topic = topic
        self.kafka_kwargs = aiokafka_kwargs(settings, bootstrap)
        self.producer_kwargs = producer_kwargs(settings, bootstrap)
        self.metrics = metrics
        self.worker = worker_id(settings.worker_state_dir)  # names this worker's share
        self.restored = False

    @abc.abstractmethod
    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic (before ``restore``, this worker's own records are what it held);
        ValueError when it cannot be read."""

    @abc.abstractmethod
    def restore(self) -> None:
        """Caught up with the topic: go on from this worker's own published share."""

    @abc.abstractmethod
    async def publish(self, producer: AIOKafkaProducer) -> int:
        """Send what changed of this worker's share (nothing when nothing did); how many records."""

    def read(self, key: bytes | None, value: bytes | None) -> None:
        """``apply`` one record; one that cannot be read is logged, counted and skipped."""
        try:
            self.apply(key, value)
        except ValueError as exc:
            log.error("record %r of %s cannot be used (%s); skipping it", key, self.topic, exc)
            self.metrics.shared_state_records.labels(state=self.state, direction="read", outcome="unreadable").inc()
            return
        self.metrics.shared_state_records.labels(state=self.state, direction="read", outcome="ok").inc()

    async def _publish(self, producer: AIOKafkaProducer) -> None:
        sent = await self.publish(producer)
        if sent:
            self.metrics.shared_state_records.labels(state=self.state, direction="published", outcome="ok").inc(sent)

    def caught_up(self) -> None:
        """Read what the topic held at the start: ``restore`` once (not again when sharing restarts)."""
        if not self.restored:
            self.restore()
            self.restored = True

    async def run(self) -> None:
        """Follow and publish until cancelled; a failure is logged and the loop starts again (the state
        keeps changing meanwhile, only sharing pauses)."""
        while True:
            try:
                await self._follow_and_publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away, a topic missing: say so, keep the worker
                log.error("sharing %s failed (%s: %s); retrying", self.what, type(exc).__name__, exc)
                self.metrics.shared_state_failures.labels(state=self.state).inc()
                await asyncio.sleep(RETRY_AFTER_S)

    async def _follow_and_publish(self) -> None:
        consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, **self.kafka_kwargs)
        producer = AIOKafkaProducer(**self.producer_kwargs)
        await consumer.start()
        await producer.start()
        next_publish = time.monotonic() + PUBLISH_EVERY_S

        async def each_round() -> None:
            nonlocal next_publish
            if time.monotonic() >= next_publish:
                next_publish = time.monotonic() + PUBLISH_EVERY_S
                await self._publish(producer)

        try:
            await follow(consumer, self.topic, self.read, self.caught_up, each_round)
        finally:
            if self.restored:  # the last seconds' changes, unless the broker is away
                await asyncio.wait_for(self._publish(producer), FINAL_PUBLISH_WITHIN_S)
            await producer.stop()
            await consumer.stop()
