"""The encoding stage: each item text is encoded once, by one worker, for every store.

All workers of one vector space share one consumer group on the items topic
(``xrec.topics.encoder_group_id``), so Kafka gives each items partition to one of them. That worker
encodes the texts that came without a vector and writes each item, with its vector, to the vectors
topic of the space (same key, same partition number); every store's indexer (``streams/items.py``)
reads that topic. A refused item is dead-lettered here, once, not once per store.

Offsets are committed once every record of the batch is in the vectors topic (at-least-once: a crash
before the commit encodes the batch again, and the indexers upsert the same vectors twice, which
changes nothing). A worker with ``XREC_ENCODE_ITEMS=false`` stays out of the group.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streams.dlq import ItemDeadLetters
from streams.lag import PolledLag
from streams.runtime import Runtime
from streams.supervision import ConsumerLoopError
from xrec.events import ItemDelete, ItemUpsert, RecordError, parse_item
from xrec.kafka import aiokafka_kwargs, group_member_kwargs, producer_kwargs
from xrec.topics import VECTOR_RECORD_MAX_BYTES, encoder_group_id
from xrec.vectors import EncodedItem

log = logging.getLogger(__name__)


class ItemEncoder:
    """Reads the items topic in its group's share of partitions and writes encoded items."""

    def __init__(self, runtime: Runtime, bootstrap: str) -> None:
        self.runtime = runtime
        self.bootstrap = bootstrap
        self.group = encoder_group_id(runtime.settings, runtime.space)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.dead = ItemDeadLetters(runtime.metrics, runtime.topics.dlq)
        self.lag = PolledLag(runtime.metrics)  # items waiting to be encoded, per partition this worker encodes
        # One unit owns the commits: a batch is encoded, written and committed under ``busy``, and a partition
        # is handed to another worker only after that (its next owner must not encode the batch again).
        self.busy = asyncio.Lock()
        self.done: dict[TopicPartition, int] = {}  # next offset to commit: everything before it is written
        self.handed_over: set[TopicPartition] = set()  # revoked: records of it still in hand are left alone

    async def run(self) -> None:
        rt = self.runtime
        settings = rt.settings
        self.consumer = AIOKafkaConsumer(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_size,
            **group_member_kwargs(settings),
            isolation_level="read_committed",  # an aborted transaction's items are never encoded
            **aiokafka_kwargs(settings, self.bootstrap),
        )
        self.producer = AIOKafkaProducer(
            linger_ms=5,
            acks="all",
            enable_idempotence=True,  # retries keep each partition's order: the last version of an item wins
            max_request_size=VECTOR_RECORD_MAX_BYTES,
            **producer_kwargs(settings, self.bootstrap),
        )
        await self.producer.start()
        self.dead.producer = self.producer
        try:  # whatever fails from here on stops what was started above
            self.consumer.subscribe([rt.topics.items], listener=_FinishBeforeHandingOver(self))
            await self.consumer.start()
            await self._check_partitions()
            log.info(
                "encoding items from %s into %s (group %s; space %s of %s, dim %d)",
                rt.topics.items,
                rt.vectors_topic,
                self.group,
                rt.space.fingerprint,
                rt.space.model,
                rt.space.dim,
            )
            while True:
                try:
                    batches = await self.consumer.getmany(timeout_ms=int(settings.batch_within_ms) or 1)
                    async with self.busy:
                        for tp, part in batches.items():
                            if part and tp not in self.handed_over:
                                await self.encode(part)
                                self.done[tp] = part[-1].offset + 1
                        await self.commit_done()
                    await self.lag.report(self.consumer)
                except Exception as exc:  # records that fail are dead-lettered inside; this is the loop itself
                    raise ConsumerLoopError.reading("item encoder", rt.topics.items, self.consumer, exc) from exc
                rt.loops.went_round("encode")
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def commit_done(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the partitions whose records are all in the vectors topic (all of them, or ``partitions``)."""
        assert self.consumer is not None
        offsets = {tp: at for tp, at in self.done.items() if partitions is None or tp in partitions}
        if offsets:
            await self.consumer.commit(offsets)
            for tp in offsets:
                del self.done[tp]

    async def _check_partitions(self) -> None:
        """Each item keeps its partition number in the vectors topic, so that topic needs as many partitions."""
        assert self.producer is not None
        rt = self.runtime
        items = len(await self.producer.partitions_for(rt.topics.items))
        vectors = len(await self.producer.partitions_for(rt.vectors_topic))
        if vectors < items:
            raise ConsumerLoopError(
                f"{rt.vectors_topic} has {vectors} partitions and {rt.topics.items} has {items}: each item keeps its "
                f"partition number, so delete {rt.vectors_topic} and let the worker create it with {items} "
                "(or create it compacted with that many)"
            )

    async def encode(self, messages: list[Any]) -> None:
        """One partition's batch: encode what needs it in one pass, then write every item's record in order."""
        rt = self.runtime
        last: dict[str, tuple[Any, ItemUpsert | ItemDelete]] = {}
        with rt.metrics.time_stage("decode"):
            for message in messages:
                try:
                    record = parse_item(message.value, rt.limits)
                except RecordError as exc:
                    await self.dead.refuse(message, exc.reason, exc.message)
                    continue
                last.pop(record.item_id, None)  # the last version of an id in the batch wins, as in the topic
                last[record.item_id] = (message, record)
        upserts = [r for _, r in last.values() if isinstance(r, ItemUpsert)]
        try:
            ready, rejected = await rt.recommender.encode_items(upserts)
        except Exception as exc:
            log.exception("encoding %d items failed; sending them to the DLQ", len(upserts))
            for message, record in list(last.values()):
                if isinstance(record, ItemUpsert):
                    del last[record.item_id]
                    await self.dead.refuse(message, "processing_error", repr(exc), type(exc).__name__)
            ready, rejected = [], []
        needed_text = {u.item_id for u in upserts if u.vector is None}
        rt.metrics.item("encoded", sum(1 for u in ready if u.item_id in needed_text))
        for refused in rejected:
            message, _ = last.pop(refused.record.item_id)
            await self.dead.refuse(message, refused.error.reason, refused.error.message)
        vectors = {u.item_id: u.vector for u in ready}
        assert self.producer is not None
        sent = []
        for message, record in last.values():
            vector = vectors.get(record.item_id) if isinstance(record, ItemUpsert) else None
            value = EncodedItem(rt.space, message.value, vector).to_bytes()
            key = message.key or record.item_id.encode()
            sent.append(await self.producer.send(rt.vectors_topic, value, key=key, partition=message.partition))
        await asyncio.gather(*sent)


class _FinishBeforeHandingOver(ConsumerRebalanceListener):  # type: ignore[misc]
    """A partition about to move: the batch in hand is finished, written and committed first, so its next
    owner starts after it. (aiokafka waits for this callback before the group moves on.)"""

    def __init__(self, encoder: ItemEncoder) -> None:
        self.encoder = encoder

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.encoder.handed_over |= set(revoked)
        async with self.encoder.busy:
            await self.encoder.commit_done(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.encoder.handed_over -= set(assigned)


def start_encoder(runtime: Runtime, bootstrap: str) -> asyncio.Task[None] | None:
    """The encoding stage under supervision, unless this worker was told to leave encoding to others."""
    if not runtime.settings.encode_items:
        log.info(
            "not encoding items (XREC_ENCODE_ITEMS=false): this worker's catalog comes from %s, written by the "
            "workers that encode space %s",
            runtime.vectors_topic,
            runtime.space.fingerprint,
        )
        return None
    return asyncio.ensure_future(runtime.loops.run("encode", ItemEncoder(runtime, bootstrap).run))
