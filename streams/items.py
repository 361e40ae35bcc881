"""The item indexer: every vector store sees the whole catalog, batch by batch.

Items are not split between workers like events are. An embedded ``edge`` store lives inside one
worker, so each such worker must index every item; its consumer group is named after the store
(``<app>-items-<store id>``), which also keeps the group's committed offsets in step with what that
store holds. Workers sharing one Qdrant server share one group, so each item is indexed once.
Offsets are committed only after the batch is in the store (at-least-once; upserts are idempotent).

The indexer also counts the language statistics of the partitions it owns and publishes them before it
writes the store (``streams/language_stats.py``): records up to the published offset are counted
already, so reading them again after a crash re-writes the store but leaves the statistics alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streams.dlq import DeadLetters, DeadSource
from streams.language_stats import LanguageStatsFollower
from streams.runtime import Runtime
from streams.supervision import ConsumerLoopError
from xrec.events import ItemRecord, RecordError, parse_item
from xrec.kafka import aiokafka_kwargs, producer_kwargs
from xrec.pipeline import ItemBatchResult
from xrec.space import CountedStats, LanguageStats
from xrec.topics import items_group_id, stats_part_key

log = logging.getLogger(__name__)


class ItemIndexer:
    """Consumes the items topic and keeps the store current; a bad record goes to the DLQ."""

    def __init__(self, runtime: Runtime, bootstrap: str) -> None:
        self.runtime = runtime
        self.bootstrap = bootstrap
        self.group = items_group_id(runtime.settings)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.dead = DeadLetters(runtime.metrics, self._send_dead)
        self.stats = LanguageStatsFollower(
            runtime.recommender.space,
            runtime.topics.language_stats,
            self.group,
            aiokafka_kwargs(runtime.settings, bootstrap),
        )
        self.counted_through: dict[TopicPartition, int] = {}  # per owned partition: last offset the statistics count
        self._lag_partitions: set[Any] = set()
        self._lag_reported_at = 0.0
        self.joined = False  # the group gave this indexer its partitions (none, when others index them all)
        self._caught_up_checked_at = 0.0

    async def run(self) -> None:
        rt = self.runtime
        settings = rt.settings
        kwargs = aiokafka_kwargs(settings, self.bootstrap)
        self.consumer = AIOKafkaConsumer(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_size,
            isolation_level="read_committed",  # an aborted transaction's items never reach the store
            **kwargs,
        )
        self.producer = AIOKafkaProducer(linger_ms=5, **producer_kwargs(settings, self.bootstrap))
        await self.producer.start()
        follower = asyncio.ensure_future(self.stats.run())
        await rt.ensure_started()
        await self.stats.caught_up.wait()  # a partition's statistics continue from what was published
        self.consumer.subscribe([rt.topics.items], listener=_TakeOverStatistics(self))
        await self.consumer.start()
        log.info("indexing items from %s (group %s)", rt.topics.items, self.group)
        try:
            while True:
                try:
                    batches = await self.consumer.getmany(timeout_ms=int(settings.batch_within_ms) or 1)
                    messages = [m for part in batches.values() for m in part]
                    if messages:
                        await self.index(messages)
                        await self.consumer.commit()
                    elif not rt.items_caught_up:
                        rt.items_caught_up = await self._caught_up()
                    await self._report_lag()
                except Exception as exc:  # records that fail are dead-lettered inside; this is the loop itself
                    owned = sorted(tp.partition for tp in self.consumer.assignment())
                    raise ConsumerLoopError(
                        f"item indexer reading {rt.topics.items} partitions {owned}: {type(exc).__name__}: {exc}"
                    ) from exc
                rt.loops.went_round("items")
        finally:
            follower.cancel()
            await self.consumer.stop()
            await self.producer.stop()

    async def index(self, messages: list[Any]) -> None:
        """One polled batch, partition by partition (each partition's statistics are a part of their own)."""
        by_partition: dict[TopicPartition, list[Any]] = {}
        for message in messages:
            by_partition.setdefault(TopicPartition(message.topic, message.partition), []).append(message)
        for tp, part in by_partition.items():
            await self._index_partition(tp, part)
        with self.runtime.metrics.observe_store("count", self.runtime.store.name):
            self.runtime.metrics.set_items_indexed(await self.runtime.store.count())

    async def _index_partition(self, tp: TopicPartition, messages: list[Any]) -> None:
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
        key = stats_part_key(self.group, tp.partition)
        through = self.counted_through.get(tp, -1)
        last = messages[-1].offset
        counted = [r for r in records if sources[id(r)].offset <= through]  # read again after a crash
        fresh = [r for r in records if sources[id(r)].offset > through]
        before = rt.recommender.space.part(key)

        async def publish(stats: LanguageStats) -> None:
            assert self.producer is not None
            await self.producer.send_and_wait(
                rt.topics.language_stats, key=key.encode(), value=CountedStats(stats, last).to_bytes()
            )

        added = ItemBatchResult()
        try:
            async with rt.engine_lock:
                if counted:
                    added = await rt.recommender.handle_items(counted, key, counted=True)
                result = await rt.recommender.handle_items(fresh, key, before_store=publish)
        except Exception as exc:
            log.exception("item batch of %d failed; sending it to the DLQ", len(records))
            rt.recommender.space.set_part(key, before)  # dead-lettered records are not in the catalog
            await publish(before)
            for record in records:
                await self._dead_letter(sources[id(record)], "processing_error", repr(exc), type(exc).__name__)
            return
        finally:
            self.counted_through[tp] = last
        result.upserted += added.upserted
        result.deleted += added.deleted
        result.rejected += added.rejected
        rt.metrics.item("upserted", result.upserted)
        rt.metrics.item("deleted", result.deleted)
        for rejected in result.rejected:
            await self._dead_letter(sources[id(rejected.record)], rejected.error.reason, rejected.error.message)

    async def _send_dead(self, key: bytes | None, value: bytes) -> Any:
        assert self.producer is not None
        return await self.producer.send_and_wait(self.runtime.topics.dlq, key=key, value=value)

    async def _dead_letter(self, message: Any, reason: str, error: str, exception: str = "RecordError") -> None:
        self.runtime.metrics.item("dlq")
        await self.dead.send(DeadSource.of_message(message), reason, error, exception)

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

    async def _caught_up(self, every_s: float = 1.0) -> bool:
        """Every item written so far is in the store: this indexer's partitions are read to their end, or,
        when workers sharing a Qdrant server left it none, the group has committed every partition's end."""
        assert self.consumer is not None
        now = time.monotonic()
        if not self.joined or now - self._caught_up_checked_at < every_s:
            return False
        self._caught_up_checked_at = now
        assignment = self.consumer.assignment()
        if assignment:
            ends = await self.consumer.end_offsets(list(assignment))
            positions = {tp: await self.consumer.position(tp) for tp in assignment}
            return all(positions[tp] >= ends[tp] for tp in assignment)
        topic = self.runtime.topics.items
        partitions = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return False
        ends = await self.consumer.end_offsets(partitions)
        committed = {tp: await self.consumer.committed(tp) or 0 for tp in partitions}
        return all(committed[tp] >= ends[tp] for tp in partitions)


class _TakeOverStatistics(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions that move: their statistics parts move with them (``LanguageStatsFollower``)."""

    def __init__(self, indexer: ItemIndexer) -> None:
        self.indexer = indexer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.indexer.stats.let_go(stats_part_key(self.indexer.group, tp.partition))
            self.indexer.counted_through.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.indexer.joined = True
        for tp in assigned:
            key = stats_part_key(self.indexer.group, tp.partition)
            self.indexer.counted_through[tp] = self.indexer.stats.take_over(key)


def start_indexer(runtime: Runtime, bootstrap: str) -> asyncio.Task[None]:
    """The indexer under supervision: a failure is said, counted, retried, and fatal after too many."""
    return asyncio.ensure_future(runtime.loops.run("items", ItemIndexer(runtime, bootstrap).run))
