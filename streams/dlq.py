"""Dead letters: one writer for every stage that refuses a record (the event batch loop, the item indexer).

A dead record comes from a Kafka message (malformed, or refused while routing) or from an event the
engine refused after parsing it (an item that never came, a failed batch); either way the DLQ record
is ``xrec.events.dlq_record`` of its source, and it is counted in ``xrec_dlq_records_total``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from xrec.events import Event, dlq_record
from xrec.metrics import XrecMetrics


@dataclass(frozen=True)
class DeadSource:
    """Where a dead record came from; partition and offset are None for an event refused after parsing."""

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None

    @classmethod
    def of_message(cls, message: Any) -> DeadSource:
        return cls(message.topic, message.partition, message.offset, message.key, message.value)

    @classmethod
    def of_event(cls, topic: str, event: Event) -> DeadSource:
        return cls(topic, None, None, event.user_id.encode(), event.to_json())


class DeadLetters:
    """Sends DLQ records through ``send(key, value)`` (an awaitable that returns the delivery future)."""

    def __init__(self, metrics: XrecMetrics, send: Callable[[bytes | None, bytes], Awaitable[Any]]) -> None:
        self.metrics = metrics
        self._send = send

    async def send(self, source: DeadSource, reason: str, error: str, exception: str = "RecordError") -> Any:
        """Write one DLQ record; returns what ``send`` returned (the caller tracks its delivery)."""
        self.metrics.dlq(reason, source.topic)
        value = dlq_record(
            source_topic=source.topic,
            partition=source.partition,
            offset=source.offset,
            key=source.key,
            value=source.value,
            reason=reason,
            error=error,
            exception=exception,
            failed_at_ms=int(time.time() * 1000),
        )
        return await self._send(source.key, value)


class ItemDeadLetters(DeadLetters):
    """The item stages' dead letters (encoder, indexer): sent by the stage's own producer, counted as items too."""

    def __init__(self, metrics: XrecMetrics, topic: str) -> None:
        super().__init__(metrics, self._send_and_wait)
        self.topic = topic
        self.producer: Any = None  # the stage's AIOKafkaProducer, once started

    async def _send_and_wait(self, key: bytes | None, value: bytes) -> Any:
        assert self.producer is not None, "the item stage sends dead letters only after its producer started"
        return await self.producer.send_and_wait(self.topic, key=key, value=value)

    async def refuse(self, message: Any, reason: str, error: str, exception: str = "RecordError") -> None:
        """Dead-letter one item message and count it under ``xrec_items_total{outcome="dlq"}``."""
        self.metrics.item("dlq")
        await self.send(DeadSource.of_message(message), reason, error, exception)
