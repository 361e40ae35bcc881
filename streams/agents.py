"""Faust agents: thin wiring from Kafka records to ``xrec.pipeline.Recommender`` calls.

One agent reads the events topic, the re-keyed events topic and the control topic together, so
Faust co-partitions them with the profile table: a user's events, their profile and their
``forget_user`` are always handled by the same worker. It takes records in batches; the engine
does one encoder pass, one store fetch and one batched store query per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import faust
from faust.streams import Stream
from faust.types import StreamT, TableT

from streams.runtime import Runtime
from streams.tables import InFlight, ProfileTable
from xrec.events import ForgetUser, Interaction, RecordError, parse_control, parse_event
from xrec.pipeline import EventBatchResult

log = logging.getLogger(__name__)


def register_agents(app: faust.App, runtime: Runtime, profiles: TableT) -> None:
    topics = runtime.topics
    settings = runtime.settings
    source = app.topic(
        topics.events,
        topics.events_by_user,
        topics.control,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    by_user = app.topic(
        topics.events_by_user, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    recommendations = app.topic(
        topics.recommendations, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    dlq = app.topic(topics.dlq, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    handler = EventBatchHandler(runtime, profiles, by_user, recommendations, dlq)

    @app.agent(source, name="xrec.process-events")
    async def process_events(stream: StreamT) -> None:
        await runtime.ensure_started()
        async for batch in cast(Stream, stream).take_events(
            settings.event_batch_size, within=settings.batch_within_ms / 1000.0
        ):
            await handler.handle(batch)

    @app.timer(interval=1.0, name="xrec.retry-waiting-events")
    async def retry_waiting_events() -> None:
        """Events waiting for their item are retried even when no new events arrive."""
        if runtime.started and runtime.recommender.waiting:
            await handler.retry_waiting()

    @app.task
    async def give_up_held_when_leaving() -> None:
        """Partitions about to move, or the worker stopping: Faust waits until every message read is
        acked, so the held ones are given up (read again from the committed offset by their next owner)."""
        while True:
            await asyncio.sleep(0.2)
            if handler.held and (app.rebalancing or app.should_stop):
                await handler.give_up_held()


class EventBatchHandler:
    """Parses one batch, routes each record, calls the engine and publishes what it returns."""

    def __init__(self, runtime: Runtime, profiles: TableT, by_user: Any, recommendations: Any, dlq: Any) -> None:
        self.runtime = runtime
        self.profiles = profiles
        self.by_user = by_user
        self.recommendations = recommendations
        self.dlq = dlq
        self.metrics = runtime.metrics
        # Per partition, the messages from the first event still waiting for its item onwards, in
        # offset order, each holding one extra reference: they are acked in order once that event is
        # applied or dead-lettered, so the committed offset never passes a waiting event and a crash
        # redelivers it (the events after it come again too; the event_id dedup absorbs them). Holding
        # only the waiting message is not enough: Faust's commit skips one unacked offset at the head
        # of a partition (faust-streaming issue #606).
        self.held: dict[Any, deque[tuple[Any, Interaction | None]]] = {}
        self.given_up: dict[Any, int] = {}  # partition -> consumer generation whose later messages are not committed
        self.in_flight = InFlight()  # lists, DLQ records and re-keyed events sent, until Kafka has them

    async def handle(self, batch: Sequence[faust.EventT]) -> None:
        """Handle a batch in order: the events before a control record are applied before it runs.

        So a ``forget_user`` erases everything the user did before it, even within one batch, and
        the events after it start a new profile.
        """
        events: list[faust.EventT] = []
        for event in batch:
            if event.message.topic == self.runtime.topics.control:
                if events:
                    await self._handle_events(events)
                    events = []
                await self._control(event.message)
            else:
                events.append(event)
        if events:
            await self._handle_events(events)

    async def retry_waiting(self) -> None:
        """Run the engine on no new events: the events waiting for their item are tried again."""
        await self._handle_events([])

    async def _handle_events(self, batch: Sequence[faust.EventT]) -> None:
        rt = self.runtime
        interactions: list[Interaction] = []
        sources: list[Any] = []  # the message of each interaction, for the DLQ if the batch fails
        with self.metrics.time_stage("decode"):
            for event in batch:
                message = event.message
                try:
                    interaction = parse_event(message.value, rt.limits)
                except RecordError as exc:
                    await self._dead_letter(message, exc.reason, exc.message, event_type=_peek_type(message.value))
                    continue
                if message.topic == rt.topics.events and message.key != interaction.user_id.encode():
                    # Keyed otherwise (or not at all): re-key so this user's state stays on one partition.
                    self.in_flight.add(await self.by_user.send(key=interaction.user_id.encode(), value=message.value))
                    continue
                interactions.append(interaction)
                sources.append(message)
        async with rt.engine_lock:
            carried = [w.event for w in rt.recommender.waiting]  # waiting events of earlier batches, retried now
            try:
                result = await rt.recommender.handle_events(interactions, self.profiles)
            except Exception as exc:  # a bug or an outage must not lose the batch silently
                # Exactly the events the engine was given go to the DLQ (and are counted) once: not the
                # records already dead-lettered or re-keyed above, nor control records.
                rt.recommender.waiting = []
                log.exception("event batch failed; sending its %d events to the DLQ", len(interactions) + len(carried))
                error, exception = repr(exc), type(exc).__name__
                for message, interaction in zip(sources, interactions, strict=True):
                    await self._dead_letter(
                        message, "processing_error", error, event_type=interaction.type, exception=exception
                    )
                for interaction in carried:
                    value = _interaction_json(interaction)
                    await self._dead_letter(
                        _Synthetic(rt.topics.events, interaction.user_id.encode(), value),
                        "processing_error",
                        error,
                        event_type=interaction.type,
                        exception=exception,
                    )
                await self._delivered()
                self._release_settled()
                return
            self._hold(batch, {id(m): i for m, i in zip(sources, interactions, strict=True)})
        await self._publish(result)
        await self._delivered()
        self._release_settled()

    async def _delivered(self) -> None:
        """Wait until what was sent for this batch is in Kafka, before its records are acked.

        Faust commits acked offsets after a producer flush that can return while a record is still
        being handed to the client; waiting here keeps a commit from covering an unwritten profile
        change, list, DLQ record or re-keyed event. If Kafka refuses them for good, the worker exits
        at once, committing nothing more: its records are read again after the restart.
        """
        try:
            await self.in_flight.delivered()
            if isinstance(self.profiles, ProfileTable):
                await self.profiles.changelog_in_flight.delivered()
        except Exception:
            log.critical("records of an event batch could not be written to Kafka; exiting without committing it")
            logging.shutdown()
            os._exit(70)

    def _hold(self, batch: Sequence[faust.EventT], interaction_of: dict[int, Interaction]) -> None:
        """Take an extra reference on each message of the batch that waits, or comes after one that waits."""
        waiting = {id(w.event) for w in self.runtime.recommender.waiting}
        dropped: set[int] = set()
        for event in batch:
            message = event.message
            interaction = interaction_of.get(id(message))
            is_waiting = interaction is not None and id(interaction) in waiting
            if message.tp in self.given_up and self.given_up[message.tp] == message.generation_id:
                message.acked = True  # read after a given-up one: done here, its offset is not committed
                if is_waiting:
                    dropped.add(id(interaction))
            elif is_waiting or message.tp in self.held:
                message.incref()
                self.held.setdefault(message.tp, deque()).append((message, interaction if is_waiting else None))
        if dropped:
            engine = self.runtime.recommender
            engine.waiting = [w for w in engine.waiting if id(w.event) not in dropped]

    async def give_up_held(self) -> None:
        """Let go of held messages without committing them, and of the events that wait among them."""
        async with self.runtime.engine_lock:
            generation = self.profiles.app.consumer_generation_id
            count = 0
            for tp, queue in self.held.items():
                for message, _ in queue:
                    message.acked = True  # Faust stops waiting for it; no offset is committed for it
                    count += 1
                self.given_up[tp] = generation
            self.held.clear()
            events = len(self.runtime.recommender.waiting)
            self.runtime.recommender.waiting = []
        log.info(
            "gave up %d events waiting for their item (%d messages held): partitions move or the worker stops; "
            "they are read again from the committed offset",
            events,
            count,
        )

    def _release_settled(self) -> None:
        """Ack held messages in offset order, up to the first event of each partition that still waits."""
        waiting = {id(w.event) for w in self.runtime.recommender.waiting}
        consumer = self.profiles.app.consumer
        for tp, queue in list(self.held.items()):
            while queue and (queue[0][1] is None or id(queue[0][1]) not in waiting):
                message, _ = queue.popleft()
                message.ack(consumer)
            if not queue:
                del self.held[tp]

    async def _publish(self, result: EventBatchResult) -> None:
        m = self.metrics
        for e in result.processed:
            m.event(e.type, "processed")
        for e in result.duplicates:
            m.event(e.type, "duplicate")
        for rejected in result.rejected:
            event = rejected.record
            m.event(event.type, "dlq")
            m.dlq(rejected.error.reason, self.runtime.topics.events)
            value = _interaction_json(event)
            sent = await self.dlq.send(
                key=event.user_id.encode(),
                value=self.runtime.dlq_value(
                    message=_Synthetic(self.runtime.topics.events, event.user_id.encode(), value),
                    reason=rejected.error.reason,
                    error=rejected.error.message,
                ),
            )
            self.in_flight.add(sent)
        trigger_ts = {e.event_id: e.ts for e in result.processed}
        with m.time_stage("publish"):
            for lst in result.lists:
                self.in_flight.add(await self.recommendations.send(key=lst.user_id.encode(), value=lst.to_json()))
                self.runtime.latest.put(lst.user_id, lst)
                m.list_published(len(lst.items), trigger_ts.get(lst.trigger_event_id or ""), time.time() * 1000)
        m.set_profiles(len(self.profiles))

    async def _control(self, message: Any) -> None:
        rt = self.runtime
        try:
            command = parse_control(message.value, rt.limits)
        except RecordError as exc:
            await self._dead_letter(message, exc.reason, exc.message)
            return
        if isinstance(command, ForgetUser):
            async with rt.engine_lock:
                dropped = [w.event for w in rt.recommender.waiting if w.event.user_id == command.user_id]
                existed = rt.recommender.forget(command.user_id, self.profiles)
                self._release_settled()
            for interaction in dropped:  # read, never applied: counted once, as erased with the user
                self.metrics.event(interaction.type, "forgotten")
            rt.latest.put(command.user_id, None)
            self.in_flight.add(await self.recommendations.send(key=command.user_id.encode(), value=None))  # tombstone
            log.info("forgot user %s (profile existed: %s)", command.user_id, existed)

    async def _dead_letter(
        self, message: Any, reason: str, error: str, *, event_type: str | None = None, exception: str = "RecordError"
    ) -> None:
        self.metrics.dlq(reason, message.topic)
        if message.topic != self.runtime.topics.control:
            self.metrics.event(event_type, "dlq")
        sent = await self.dlq.send(
            key=message.key,
            value=self.runtime.dlq_value(message=message, reason=reason, error=error, exception=exception),
        )
        self.in_flight.add(sent)


class _Synthetic:
    """Stands in for a Kafka message when an event is dead-lettered after it was parsed."""

    def __init__(self, topic: str, key: bytes, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = topic, None, None, key, value


def _interaction_json(event: Interaction) -> bytes:
    import orjson

    return orjson.dumps(
        {
            "event_id": event.event_id,
            "user_id": event.user_id,
            "item_id": event.item_id,
            "type": event.type,
            "ts": event.ts,
            "text": event.text,
            "rating": event.rating,
            "lang": event.lang,
        }
    )


def _peek_type(value: bytes | None) -> str | None:
    """The event type of a rejected record, if it can be read, for the outcome metric's label."""
    import orjson

    try:
        obj = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None
    return obj.get("type") if isinstance(obj, dict) and isinstance(obj.get("type"), str) else None
