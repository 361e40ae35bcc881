"""Faust agents: thin wiring from Kafka records to ``xrec.pipeline.Recommender`` calls.

One agent reads the events topic, the re-keyed events topic and the control topic together, so
Faust co-partitions them with the profile table: a user's events, their profile and their
``forget_user`` are always handled by the same worker. It takes records in batches; the engine
does one encoder pass, one store fetch and one batched store query per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import faust
from faust.streams import Stream
from faust.types import StreamT, TableT

from streams.runtime import Runtime
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
            settings.batch_size, within=settings.batch_within_ms / 1000.0
        ):
            await handler.handle(batch)

    @app.timer(interval=1.0, name="xrec.retry-waiting-events")
    async def retry_waiting_events() -> None:
        """Events waiting for their item are retried even when no new events arrive."""
        if runtime.started and runtime.recommender.waiting:
            await handler.handle([])


class EventBatchHandler:
    """Parses one batch, routes each record, calls the engine and publishes what it returns."""

    def __init__(self, runtime: Runtime, profiles: TableT, by_user: Any, recommendations: Any, dlq: Any) -> None:
        self.runtime = runtime
        self.profiles = profiles
        self.by_user = by_user
        self.recommendations = recommendations
        self.dlq = dlq
        self.metrics = runtime.metrics

    async def handle(self, batch: Sequence[faust.EventT]) -> None:
        rt = self.runtime
        interactions: list[Interaction] = []
        sources: list[Any] = []  # the message of each interaction, for the DLQ if the batch fails
        with self.metrics.time_stage("decode"):
            for event in batch:
                message = event.message
                if message.topic == rt.topics.control:
                    await self._control(message)
                    continue
                try:
                    interaction = parse_event(message.value, rt.limits)
                except RecordError as exc:
                    await self._dead_letter(message, exc.reason, exc.message, event_type=_peek_type(message.value))
                    continue
                if message.topic == rt.topics.events and message.key != interaction.user_id.encode():
                    # Keyed otherwise (or not at all): re-key so this user's state stays on one partition.
                    await self.by_user.send(key=interaction.user_id.encode(), value=message.value)
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
                return
        await self._publish(result)

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
            await self.dlq.send(
                key=event.user_id.encode(),
                value=self.runtime.dlq_value(
                    message=_Synthetic(self.runtime.topics.events, event.user_id.encode(), value),
                    reason=rejected.error.reason,
                    error=rejected.error.message,
                ),
            )
        trigger_ts = {e.event_id: e.ts for e in result.processed}
        with m.time_stage("publish"):
            for lst in result.lists:
                await self.recommendations.send(key=lst.user_id.encode(), value=lst.to_json())
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
            for interaction in dropped:  # read, never applied: counted once, as erased with the user
                self.metrics.event(interaction.type, "forgotten")
            rt.latest.put(command.user_id, None)
            await self.recommendations.send(key=command.user_id.encode(), value=None)  # tombstone
            log.info("forgot user %s (profile existed: %s)", command.user_id, existed)

    async def _dead_letter(
        self, message: Any, reason: str, error: str, *, event_type: str | None = None, exception: str = "RecordError"
    ) -> None:
        self.metrics.dlq(reason, message.topic)
        if message.topic != self.runtime.topics.control:
            self.metrics.event(event_type, "dlq")
        await self.dlq.send(
            key=message.key,
            value=self.runtime.dlq_value(message=message, reason=reason, error=error, exception=exception),
        )


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
