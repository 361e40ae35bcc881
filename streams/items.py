"""The item indexer: every vector store sees the whole catalog, batch by batch.

Items are not split between workers like events are. An embedded ``edge`` store lives inside one
worker, so each such worker must index every item; its consumer group is named after the store
(``<app>-items-<store id>``), which also keeps the group's committed offsets in step with what that
store holds. Workers sharing one Qdrant server share one group, so each item is indexed once.
Offsets are committed only after the batch is in the store (at-least-once; upserts are idempotent).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.runtime import Runtime
from xrec.config import Settings
from xrec.events import ItemRecord, RecordError, parse_item
from xrec.kafka import aiokafka_kwargs

log = logging.getLogger(__name__)


def items_group_id(settings: Settings) -> str:
    """One consumer group per store: per data directory for ``edge``, shared for a Qdrant server."""
    if settings.store_backend == "edge":
        where = str(settings.store_dir.resolve() / settings.collection)
    else:
        where = f"{settings.qdrant_url}/{settings.collection}"
    return f"{settings.app_id}-items-{hashlib.sha1(where.encode()).hexdigest()[:12]}"


class ItemIndexer:
    """Consumes the items topic and keeps the store current; a bad record goes to the DLQ."""

    def __init__(self, runtime: Runtime, bootstrap: str) -> None:
        self.runtime = runtime
        self.bootstrap = bootstrap
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._lag_partitions: set[Any] = set()
        self._lag_reported_at = 0.0

    async def run(self) -> None:
        rt = self.runtime
        settings = rt.settings
        kwargs = aiokafka_kwargs(settings, self.bootstrap)
        self.consumer = AIOKafkaConsumer(
            rt.topics.items,
            group_id=items_group_id(settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_size,
            **kwargs,
        )
        self.producer = AIOKafkaProducer(linger_ms=5, **kwargs)
        await self.producer.start()
        await self.consumer.start()
        await rt.ensure_started()
        log.info("indexing items from %s (group %s)", rt.topics.items, items_group_id(settings))
        try:
            while True:
                batches = await self.consumer.getmany(timeout_ms=int(settings.batch_within_ms) or 1)
                messages = [m for part in batches.values() for m in part]
                if messages:
                    await self.index(messages)
                    await self.consumer.commit()
                elif not rt.items_caught_up:
                    rt.items_caught_up = await self._caught_up()
                await self._report_lag()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def index(self, messages: list[Any]) -> None:
        rt = self.runtime
        records: list[ItemRecord] = []
        sources: dict[int, Any] = {}
        with rt.metrics.time_stage("decode"):
            for message in messages:
                try:
                    record = parse_item(message.value, rt.limits)
                except RecordError as exc:
                    await self._dead_letter(message, exc.reason, exc.message)
                    continue
                records.append(record)
                sources[id(record)] = message
        try:
            async with rt.engine_lock:
                result = await rt.recommender.handle_items(records)
        except Exception as exc:
            log.exception("item batch of %d failed; sending it to the DLQ", len(records))
            for record in records:
                await self._dead_letter(sources[id(record)], "processing_error", repr(exc), type(exc).__name__)
            return
        rt.metrics.item("upserted", result.upserted)
        rt.metrics.item("deleted", result.deleted)
        for rejected in result.rejected:
            await self._dead_letter(sources[id(rejected.record)], rejected.error.reason, rejected.error.message)
        with rt.metrics.observe_store("count", rt.store.name):
            rt.metrics.set_items_indexed(await rt.store.count())

    async def _dead_letter(self, message: Any, reason: str, error: str, exception: str = "RecordError") -> None:
        rt = self.runtime
        rt.metrics.item("dlq")
        rt.metrics.dlq(reason, message.topic)
        value = rt.dlq_value(message=message, reason=reason, error=error, exception=exception)
        assert self.producer is not None
        await self.producer.send_and_wait(rt.topics.dlq, key=message.key, value=value)

    async def _report_lag(self, every_s: float = 1.0) -> None:
        """Items read but not yet in the store, per owned partition: end offset − committed position.

        Called right after each commit (or an empty poll), when the position is the committed offset.
        """
        now = time.monotonic()
        if now - self._lag_reported_at < every_s:
            return
        self._lag_reported_at = now
        assert self.consumer is not None
        owned = self.consumer.assignment()
        metrics = self.runtime.metrics
        for tp in self._lag_partitions - owned:  # moved to another worker sharing this Qdrant server
            metrics.forget_partition(tp.topic, tp.partition)
        self._lag_partitions = set(owned)
        for tp in owned:
            end = self.consumer.highwater(tp)  # from the last fetch response; None before the first
            if end is not None:
                metrics.set_consumer_lag(tp.topic, tp.partition, end - await self.consumer.position(tp))

    async def _caught_up(self) -> bool:
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        if not assignment:
            return False
        ends = await self.consumer.end_offsets(list(assignment))
        positions = {tp: await self.consumer.position(tp) for tp in assignment}
        return all(positions[tp] >= ends[tp] for tp in assignment)


def start_indexer(runtime: Runtime, bootstrap: str) -> asyncio.Task[None]:
    return asyncio.ensure_future(ItemIndexer(runtime, bootstrap).run())
