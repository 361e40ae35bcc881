"""The lag probe against the real broker: committed offsets of a group, ends, beginnings, failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from streams.lag import ConsumerLagProbe, LagReporter
from xrec.broker import free_port
from xrec.config import Settings
from xrec.metrics import XrecMetrics


async def produce(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, n in counts.items():
            for i in range(n):
                await producer.send(topic, value=str(i).encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def test_the_probe_reports_end_minus_committed_per_partition(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=3)
    p0, p1, p2 = (TopicPartition(topic, p) for p in range(3))
    group = f"{topic}-group"

    async def scenario() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        await produce(kafka_bootstrap, topic, {0: 5, 1: 3, 2: 4})
        await commit(kafka_bootstrap, group, {p0: 2, p2: 4})
        probe = ConsumerLagProbe(Settings.from_env(), kafka_bootstrap, group)
        try:
            before = await probe.lag([p0, p1, p2])
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:  # retention-like deletion below offset 1 of a partition the group never committed
                await admin.delete_records({p1: RecordsToDelete(before_offset=1)}, timeout_ms=10_000)
            finally:
                await admin.close()
            after = await probe.lag([p1])
        finally:
            await probe.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == {p0: 3, p1: 3, p2: 0}
    assert after == {p1: 2}


def test_an_unreachable_broker_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    metrics = XrecMetrics()
    dead = f"127.0.0.1:{free_port()}"
    reporter = LagReporter(ConsumerLagProbe(Settings.from_env(), dead, "g", timeout_s=1.0), ["t"], metrics)
    owned = [TopicPartition("t", 0), TopicPartition("other", 0)]

    async def twice() -> None:
        await reporter.report(owned)
        await reporter.report(owned)
        await reporter.probe.close()

    with caplog.at_level(logging.WARNING, logger="streams.lag"):
        asyncio.run(twice())
    [warning] = [r.getMessage() for r in caplog.records if r.name == "streams.lag"]
    assert warning.startswith("consumer lag not measured (will retry)")
    assert reporter.failing
    assert "xrec_consumer_lag{" not in metrics.render()[0].decode()
