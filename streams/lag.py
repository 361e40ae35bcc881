"""Consumer lag as Kafka tooling reports it: end offset − committed offset of the group, per partition.

The numbers come from the broker (ListOffsets and OffsetFetch), not from Faust's private
bookkeeping, so they match ``kafka-consumer-groups.sh --describe`` and include partitions the group
has never committed: those start at the beginning (``auto_offset_reset=earliest``), so everything
still retained there counts as lag. The worker asks only about the partitions it owns right now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from xrec.config import Settings
from xrec.kafka import aiokafka_kwargs
from xrec.metrics import XrecMetrics

log = logging.getLogger(__name__)


def partition_lag(end: int, committed: int | None, beginning: int) -> int:
    """Records from the group's committed position to the end of the partition.

    ``committed`` is None (or negative, Kafka's "no offset") before the group's first commit: the
    group then starts at ``beginning``. A committed offset below ``beginning`` (retention deleted
    those records) cannot be read any more either.
    """
    start = beginning if committed is None or committed < 0 else max(committed, beginning)
    return max(0, end - start)


class ConsumerLagProbe:
    """Asks the brokers for end and committed offsets of one consumer group; clients opened lazily.

    With ``read_committed`` (exactly-once) the end is the last stable offset, so records of open
    transactions do not count; a transaction's commit marker can still show as a lag of 1.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        group_id: str,
        *,
        timeout_s: float = 10.0,
        read_committed: bool | None = None,
    ) -> None:
        """``read_committed``: how the group reads (default: as the worker's processing guarantee says)."""
        self.settings = settings
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.timeout_s = timeout_s
        if read_committed is None:
            read_committed = settings.processing_guarantee == "exactly_once"
        self.isolation_level = "read_committed" if read_committed else "read_uncommitted"
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._started = False

    async def lag(self, partitions: Iterable[Any]) -> dict[TopicPartition, int]:
        """Lag of each given partition (anything with ``topic`` and ``partition``); raises on timeout."""
        tps = sorted({TopicPartition(p.topic, p.partition) for p in partitions})
        if not tps:
            return {}
        return await asyncio.wait_for(self._lag(tps), self.timeout_s)

    async def _lag(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        consumer, admin = await self._clients()
        ends, beginnings, committed = await asyncio.gather(
            consumer.end_offsets(tps),
            consumer.beginning_offsets(tps),
            admin.list_consumer_group_offsets(self.group_id, partitions=tps),
        )
        return lags(tps, ends, beginnings, {tp: meta.offset for tp, meta in committed.items()})

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if not self._started or self._consumer is None or self._admin is None:
            await self.close()  # whatever a failed or timed-out start left behind
            kwargs = aiokafka_kwargs(self.settings, self.bootstrap)
            self._consumer = AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, isolation_level=self.isolation_level, **kwargs
            )
            self._admin = AIOKafkaAdminClient(**kwargs, request_timeout_ms=int(self.timeout_s * 1000))
            await self._consumer.start()
            await self._admin.start()
            self._started = True
        return self._consumer, self._admin

    async def close(self) -> None:
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        self._started = False
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()


def lags(
    tps: Iterable[TopicPartition],
    ends: Mapping[TopicPartition, int],
    beginnings: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int | None],
) -> dict[TopicPartition, int]:
    """Per-partition lag from the three offset maps; partitions without an end offset are left out."""
    out = {}
    for tp in tps:
        end = ends.get(tp)
        if end is None:
            continue
        out[tp] = partition_lag(end, committed.get(tp), beginnings.get(tp, 0))
    return out


class LagReporter:
    """Sets ``xrec_consumer_lag`` for the input partitions the worker owns; a failed probe is logged once."""

    def __init__(self, probe: ConsumerLagProbe, topics: Iterable[str], metrics: XrecMetrics) -> None:
        self.probe = probe
        self.topics = frozenset(topics)
        self.metrics = metrics
        self.failing = False

    async def report(self, assignment: Iterable[Any]) -> None:
        owned = [tp for tp in assignment if tp.topic in self.topics]
        try:
            lag = await self.probe.lag(owned)
        except Exception as exc:  # a broker hiccup must not stop the timer; the series keep their last value
            if not self.failing:
                log.warning("consumer lag not measured (will retry): %s: %s", type(exc).__name__, exc)
            self.failing = True
            await self.probe.close()  # reconnect on the next tick
            return
        if self.failing:
            log.info("consumer lag measured again")
            self.failing = False
        for tp, n in lag.items():
            self.metrics.set_consumer_lag(tp.topic, tp.partition, n)


class PolledLag:
    """``xrec_consumer_lag`` of a consumer that commits after each batch (the item encoder and indexer):
    end offset − position of each owned partition, from what the last fetch said; at most once per ``every_s``.

    Called right after a commit (or an empty poll), when the position is the committed offset. Partitions
    that moved to another worker lose their series here.
    """

    def __init__(self, metrics: XrecMetrics, every_s: float = 1.0) -> None:
        self.metrics = metrics
        self.every_s = every_s
        self._partitions: set[Any] = set()
        self._reported_at = 0.0

    async def report(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._reported_at < self.every_s:
            return
        self._reported_at = now
        owned = consumer.assignment()
        for tp in self._partitions - owned:
            self.metrics.forget_partition(tp.topic, tp.partition)
        self._partitions = set(owned)
        for tp in owned:
            end = consumer.highwater(tp)  # from the last fetch response; None before the first
            if end is not None:
                self.metrics.set_consumer_lag(tp.topic, tp.partition, end - await consumer.position(tp))
