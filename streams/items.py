"""The item indexer: every vector store sees the whole catalog, batch by batch.

It reads the encoded items of its vector space (``streams/encoding.py`` wrote them, each text encoded
once), not the items topic. Items are not split between workers like events are. An embedded ``edge``
store lives inside one worker, so each such worker must index every item; its consumer group is named
after the store (``<app>-items-<store id>``), which also keeps the group's committed offsets in step
with what that store holds. Workers sharing one Qdrant server share one group, so each item is indexed
once. Offsets are committed only after the batch is in the store (at-least-once; upserts are idempotent).
The vectors topic keeps the items topic's partition numbers, so the statistics parts below are per items
partition either way.

The indexer also counts the language statistics of the partitions it owns and publishes them before it
writes the store (``streams/language_stats.py``): records up to the published offset are counted
already, so reading them again after a crash re-writes the store but leaves the statistics alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streams.dlq import ItemDeadLetters
from streams.lag import ConsumerLagProbe, PolledLag
from streams.language_stats import LanguageStatsFollower
from streams.runtime import Runtime
from streams.supervision import ConsumerLoopError
from xrec.events import ItemRecord, ItemUpsert, RecordError, parse_item
from xrec.kafka import aiokafka_kwargs, group_member_kwargs, producer_kwargs
from xrec.pipeline import ItemBatchResult
from xrec.space import CountedStats, LanguageStats
from xrec.topics import encoder_group_id, items_group_id, stats_part_key
from xrec.vectors import EncodedItem, VectorRecordError

log = logging.getLogger(__name__)

#: While no batch comes, the store is counted again this often: workers sharing a Qdrant server each index
#: part of the catalog, and each one's ``xrec_items_indexed`` should still say what the collection holds.
RECOUNT_EVERY_S = 5.0


class ItemIndexer:
    """Consumes the encoded items of its vector space and keeps the store current; a bad record goes to the DLQ."""

    def __init__(self, runtime: Runtime, bootstrap: str) -> None:
        self.runtime = runtime
        self.bootstrap = bootstrap
        self.group = items_group_id(runtime.settings, runtime.space)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.dead = ItemDeadLetters(runtime.metrics, runtime.topics.dlq)
        self.stats = LanguageStatsFollower(
            runtime.recommender.space,
            runtime.topics.language_stats,
            self.group,
            aiokafka_kwargs(runtime.settings, bootstrap),
        )
        self.counted_through: dict[TopicPartition, int] = {}  # per owned partition: last offset the statistics count
        self.lag = PolledLag(runtime.metrics)
        # The encoding group's lag on the items topic, read committed as the encoders read it.
        self.encoding_lag = ConsumerLagProbe(
            runtime.settings, bootstrap, encoder_group_id(runtime.settings, runtime.space), read_committed=True
        )
        self.joined = False  # the group gave this indexer its partitions (none, when others index them all)
        self._caught_up_checked_at = 0.0
        self._counted_at = 0.0

    async def run(self) -> None:
        rt = self.runtime
        settings = rt.settings
        kwargs = aiokafka_kwargs(settings, self.bootstrap)
        self.consumer = AIOKafkaConsumer(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_size,
            **group_member_kwargs(settings),
            **kwargs,
        )
        self.producer = AIOKafkaProducer(linger_ms=5, **producer_kwargs(settings, self.bootstrap))
        await self.producer.start()
        self.dead.producer = self.producer
        follower = asyncio.ensure_future(self.stats.run())
        try:  # whatever fails from here on stops what was started above
            await rt.ensure_started()
            await self.stats.caught_up.wait()  # a partition's statistics continue from what was published
            self.consumer.subscribe([rt.vectors_topic], listener=_TakeOverStatistics(self))
            await self.consumer.start()
            log.info("indexing encoded items from %s into %s (group %s)", rt.vectors_topic, rt.store.name, self.group)
            while True:
                try:
                    batches = await self.consumer.getmany(timeout_ms=int(settings.batch_within_ms) or 1)
                    messages = [m for part in batches.values() for m in part]
                    if messages:
                        await self.index(messages)
                        await self.consumer.commit()
                    else:
                        if not rt.items_caught_up:
                            rt.items_caught_up = await self._caught_up()
                        if time.monotonic() - self._counted_at > RECOUNT_EVERY_S:
                            await self.count_store()  # a shared server also grows by the other workers' batches
                    await self.lag.report(self.consumer)
                except Exception as exc:  # records that fail are dead-lettered inside; this is the loop itself
                    raise ConsumerLoopError.reading("item indexer", rt.vectors_topic, self.consumer, exc) from exc
                rt.loops.went_round("items")
        finally:
            follower.cancel()
            await self.encoding_lag.close()
            await self.consumer.stop()
            await self.producer.stop()

    async def index(self, messages: list[Any]) -> None:
        """One polled batch, partition by partition (each partition's statistics are a part of their own)."""
        by_partition: dict[TopicPartition, list[Any]] = {}
        for message in messages:
            by_partition.setdefault(TopicPartition(message.topic, message.partition), []).append(message)
        for tp, part in by_partition.items():
            await self._index_partition(tp, part)
        await self.count_store()

    async def count_store(self) -> None:
        """``xrec_items_indexed``: after each batch, and every few seconds while idle."""
        with self.runtime.metrics.observe_store("count", self.runtime.store.name):
            self.runtime.metrics.set_items_indexed(await self.runtime.store.count())
        self._counted_at = time.monotonic()

    async def _index_partition(self, tp: TopicPartition, messages: list[Any]) -> None:
        rt = self.runtime
        records: list[ItemRecord] = []
        sources: dict[int, Any] = {}
        last_of: dict[str, Any] = {}  # item id → its last message in the batch (the version the engine keeps)
        with rt.metrics.time_stage("decode"):
            for message in messages:
                try:
                    record = self._decode(message.value)
                except RecordError as exc:
                    await self.dead.refuse(message, exc.reason, exc.message)
                    continue
                records.append(record)
                sources[id(record)] = message
                last_of[record.item_id] = message
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
                await self.dead.refuse(sources[id(record)], "processing_error", repr(exc), type(exc).__name__)
            return
        finally:
            self.counted_through[tp] = last
        result.upserted += added.upserted
        result.deleted += added.deleted
        result.rejected += added.rejected
        rt.metrics.item("upserted", result.upserted)
        rt.metrics.item("deleted", result.deleted)
        for rejected in result.rejected:
            await self.dead.refuse(last_of[rejected.record.item_id], rejected.error.reason, rejected.error.message)

    def _decode(self, value: bytes | None) -> ItemRecord:
        """An item of the vectors topic, with the vector its space's encoder gave it."""
        encoded = EncodedItem.from_bytes(value, self.runtime.space)
        record = parse_item(encoded.item, self.runtime.limits)
        if not isinstance(record, ItemUpsert):
            return record
        if encoded.vector is None:
            raise VectorRecordError("bad_vector_record", "an encoded item upsert without its vector")
        return replace(record, vector=encoded.vector)

    async def _caught_up(self, every_s: float = 1.0) -> bool:
        """Every item written so far is in the store: the encoding group has encoded the whole items topic, and
        this indexer has read its partitions of the vectors topic to their end (or, when workers sharing a
        Qdrant server left it none, its group has committed every partition's end)."""
        assert self.consumer is not None
        now = time.monotonic()
        if not self.joined or now - self._caught_up_checked_at < every_s:
            return False
        self._caught_up_checked_at = now
        if not await self._all_encoded():
            return False
        assignment = self.consumer.assignment()
        if assignment:
            ends = await self.consumer.end_offsets(list(assignment))
            positions = {tp: await self.consumer.position(tp) for tp in assignment}
            return all(positions[tp] >= ends[tp] for tp in assignment)
        partitions = await self._partitions(self.runtime.vectors_topic)
        if not partitions:
            return False
        ends = await self.consumer.end_offsets(partitions)
        committed = {tp: await self.consumer.committed(tp) or 0 for tp in partitions}
        return all(committed[tp] >= ends[tp] for tp in partitions)

    async def _all_encoded(self) -> bool:
        """The encoding group (``streams/encoding.py``, any worker's) has committed the end of every items
        partition. Without it a worker would say it is ready while its catalog is still being encoded."""
        partitions = await self._partitions(self.runtime.topics.items)
        try:
            lag = await self.encoding_lag.lag(partitions)
        except Exception as exc:  # asked again next second; readiness waits meanwhile
            log.debug("encoding lag not measured: %s: %s", type(exc).__name__, exc)
            await self.encoding_lag.close()
            return False
        return bool(partitions) and len(lag) == len(partitions) and not any(lag.values())

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        assert self.producer is not None  # its metadata follows any topic asked for; the consumer's only its own
        return [TopicPartition(topic, p) for p in sorted(await self.producer.partitions_for(topic))]


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
