"""The bench's own Kafka traffic: preloading and pacing events, reading a topic back."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from xrec.kafka import read_to_end

#: aiokafka's ``timestamp_type`` of a record stamped by the broker as it appended it (0: by its producer).
LOG_APPEND_TIME = 1


@dataclass(frozen=True)
class OutRecord:
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    broker_stamped: bool = False  # the timestamp is the broker's append time, not the producer's


def stamped_by(records: Sequence[OutRecord]) -> str:
    """Whose clock the records' timestamps read: "broker append" (when a subscriber could read them) or "producer"
    (when the writer handed them to its client)."""
    return "broker append" if records and all(r.broker_stamped for r in records) else "producer"


async def produce(kwargs: dict[str, Any], topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(linger_ms=20, max_batch_size=1 << 20, **kwargs)
    await producer.start()
    n = 0
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, key=key, value=value))
            n += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


@dataclass(frozen=True)
class Paced:
    """What pacing the offered events achieved: the rate, and when the broker acknowledged each event
    (``acked_at``, wall-clock seconds by event id), so a latency can be split into the producer's part
    (ts → in Kafka) and the worker's (in Kafka → list)."""

    rate: float
    acked_at: dict[str, float]


async def produce_paced(kwargs: dict[str, Any], topic: str, events: list[dict[str, Any]], rate: float) -> Paced:
    """Send ``events`` at ``rate``/s, each stamped with the wall clock as it goes."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(linger_ms=2, **kwargs)
    await producer.start()
    acked_at: dict[str, float] = {}

    def acked(event_id: str) -> Callable[[asyncio.Future[Any]], None]:
        def record(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                acked_at[event_id] = time.time()

        return record

    try:
        started = time.monotonic()
        sent = 0
        while sent < len(events):
            due = min(len(events), int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                event = events[sent]
                event["ts"] = int(time.time() * 1000)
                delivery = await producer.send(topic, key=event["user_id"].encode(), value=orjson.dumps(event))
                delivery.add_done_callback(acked(event["event_id"]))
                sent += 1
            await asyncio.sleep(0.005)
        await producer.flush()
        elapsed = time.monotonic() - started
    finally:
        await producer.stop()
    return Paced(len(events) / elapsed if elapsed > 0 else math.inf, acked_at)


async def read_topic(kwargs: dict[str, Any], topic: str, timeout_s: float = 120.0) -> list[OutRecord]:
    """Every record of ``topic`` up to its end as of when the read starts."""
    out: list[OutRecord] = []

    def keep(m: Any) -> None:
        out.append(OutRecord(m.key, m.value, m.timestamp, m.timestamp_type == LOG_APPEND_TIME))

    await read_to_end(kwargs, topic, keep, timeout_s=timeout_s)
    return out


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def encoded_events(events: list[dict[str, Any]]) -> Iterator[tuple[bytes, bytes]]:
    for e in events:
        yield e["user_id"].encode(), orjson.dumps(e)
