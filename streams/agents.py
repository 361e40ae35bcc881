"""The event side of a worker: events and control records in, profiles and lists out.

Reading and processing are apart. The Faust agent reads the events, re-keyed events and control
topics (without acking) and puts each record in the feed (``streams/feed.py``); the batch loop takes
whatever has arrived as soon as it is free, so at low load an event waits for nothing but its own
processing. A batch is decoded and routed, run through the engine under the engine lock, and its lists
sent; what it wrote (profile changelog, lists, DLQ records, re-keyed events) is then tracked until
Kafka has all of it, while the loop already runs the next batch. The offset ledger
(``streams/offsets.py``) acks each message once its batch is delivered, in offset order, never past an
event that waits for its item.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import orjson
from faust.streams import Stream
from faust.types import StreamT, TableT

from streams.dlq import DeadLetters, DeadSource
from streams.faust_tuning import tune_running_app
from streams.feed import EventFeed
from streams.offsets import OffsetLedger
from streams.runtime import Runtime
from streams.supervision import ConsumerLoopError
from streams.tables import ProfileTable, held_profiles
from xrec.events import Event, ForgetUser, Impression, RecordError, parse_control, parse_event
from xrec.pipeline import EventBatchResult

log = logging.getLogger(__name__)

#: Events the feed holds before the agent waits (and Faust stops fetching), in batches.
FEED_BATCHES = 4
#: Batches between "applied" and "published": the next batch is applied while the last one's lists are
#: built, so the store search (off the event loop, numpy without the GIL) overlaps the loop's own work.
PIPELINE_DEPTH = 4


def register_agents(app: faust.App, runtime: Runtime, profiles: TableT) -> EventPipeline:
    topics = runtime.topics
    source = app.topic(
        topics.events,
        topics.events_by_user,
        topics.control,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    def raw_topic(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    pipeline = EventPipeline(
        app,
        runtime,
        profiles,
        raw_topic(topics.events_by_user),
        raw_topic(topics.recommendations),
        raw_topic(topics.dlq),
    )

    @app.agent(source, name="xrec.process-events")
    async def read_events(stream: StreamT) -> None:
        """Read, never ack: the batch loop acks through the ledger once a batch's writes are in Kafka."""
        await runtime.ensure_started()
        async for event in cast(Stream, stream).noack().events():
            await pipeline.feed.put(event, time.time() - event.message.timestamp)

    @app.task
    async def run_event_batches() -> None:
        await runtime.ensure_started()
        tune_running_app(app, changelog_records_in_flight=(PIPELINE_DEPTH + 1) * runtime.settings.event_batch_size)
        await runtime.loops.run("events", pipeline.run)

    @app.timer(interval=1.0, name="xrec.retry-waiting-events")
    async def retry_waiting_events() -> None:
        """Events waiting for their item are retried even when no new events arrive."""
        if runtime.started and len(runtime.recommender.waiting):
            await pipeline.retry_waiting()

    @app.task
    async def give_up_held_when_leaving() -> None:
        """Partitions about to move, or the worker stopping: Faust waits until every message read is
        acked, so the held ones are given up (read again from the committed offset by their next owner)."""
        while True:
            await asyncio.sleep(0.2)
            if waits_for_every_read_message(app) and pipeline.holds_messages:
                await pipeline.give_up()

    return pipeline


def waits_for_every_read_message(app: Any) -> bool:
    """Whether Faust is letting go of this generation's partitions and waits for every message read to be
    acked: it stops the consumer's flow first, when partitions are revoked and when the worker stops.
    ``app.rebalancing`` alone is not enough: it stays set through a new assignment's recovery, whose
    records belong to the partitions' next run and must not be given up."""
    return bool(app.should_stop or (app.rebalancing and not app.consumer.flow_active))


@dataclass
class _Unit:
    """One run of the engine (a batch, a retry, a control record): the messages it settles and what it wrote."""

    id: int
    messages: list[tuple[Any, Event | None]] = field(default_factory=list)
    writes: list[Any] = field(default_factory=list)


class EventPipeline:
    """Takes batches from the feed, runs them through the engine, publishes, and settles their offsets."""

    def __init__(
        self, app: faust.App, runtime: Runtime, profiles: TableT, by_user: Any, recommendations: Any, dlq: Any
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.profiles = profiles
        self.by_user = by_user
        self.recommendations = recommendations
        self.metrics = runtime.metrics
        settings = runtime.settings
        self.feed = EventFeed(settings.event_batch_size, FEED_BATCHES * settings.event_batch_size)
        engine = runtime.recommender
        self.ledger = OffsetLedger(ack=self._ack, is_waiting=lambda event: event in engine.waiting)
        self.dead = DeadLetters(runtime.metrics, lambda key, value: dlq.send(key=key, value=value))
        self._ids = itertools.count()
        self._settling: set[asyncio.Task[None]] = set()  # background tasks, kept referenced until done
        self._in_flight = asyncio.Semaphore(PIPELINE_DEPTH)
        self._last_publish: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self._last_publish.set_result(None)
        self._taken: Sequence[faust.EventT] = ()  # the batch the loop runs now, taken from the feed

    @property
    def holds_messages(self) -> bool:
        return bool(len(self.ledger) or len(self.feed))

    async def run(self) -> None:
        """The batch loop: take what has arrived, run it, go again without waiting for delivery."""
        while True:
            if not len(self.feed):
                # Nothing read is waiting: an idle loop is a healthy one. After a failure /readyz would
                # otherwise stay 503 until the next event arrives, however long that takes.
                self.runtime.loops.went_round("events")
            taken = await self.feed.take()
            started = time.perf_counter()
            self._taken = taken.events
            try:
                await self.process(taken.events)
            except Exception as exc:  # a failing batch is dead-lettered inside; this is the loop itself
                parts = sorted({(e.message.topic, e.message.partition) for e in taken.events})
                raise ConsumerLoopError(f"event batch loop on {parts}: {type(exc).__name__}: {exc}") from exc
            finally:
                self._taken = ()
            self.metrics.batch(
                len(taken.events),
                fetch=taken.fetch_s,
                queue=taken.queued_s,
                apply=time.perf_counter() - started,
            )
            self.runtime.loops.went_round("events")

    async def process(self, batch: Sequence[faust.EventT]) -> None:
        """A batch in its own order: the events before a control record are applied before it runs.

        So a ``forget_user`` erases everything the user did before it, even within one batch, and
        the events after it start a new profile.
        """
        events: list[faust.EventT] = []
        for event in batch:
            if event.message.topic == self.runtime.topics.control:
                if events:
                    await self._events(events)
                    events = []
                await self._control(event.message)
            else:
                events.append(event)
        if events:
            await self._events(events)

    async def retry_waiting(self) -> None:
        """Run the engine on no new events: the events waiting for their item are tried again."""
        await self._events([])

    async def give_up(self) -> None:
        """Let go of every held and queued message without committing it, and of the events that wait."""
        rt = self.runtime
        async with rt.engine_lock:
            self.ledger.release()  # what is settled already is acked, not given up
            queued = self.feed.drain()
            held = len(self.ledger)
            # The running batch's messages too: those it has not held yet are then not applied either.
            self.ledger.give_up(self.app.consumer_generation_id, [e.message for e in [*queued, *self._taken]])
            events = rt.recommender.waiting.drop_all()
        log.info(
            "gave up %d events waiting for their item (%d messages held, %d read and not processed): partitions "
            "move or the worker stops; they are read again from the committed offset",
            len(events),
            held,
            len(queued),
        )

    # --- one unit of work ------------------------------------------------------------------------
    async def _events(self, batch: Sequence[faust.EventT]) -> None:
        rt = self.runtime
        topics = rt.topics
        unit = _Unit(next(self._ids))
        interactions: list[Event] = []
        sources: list[Any] = []  # the message of each interaction, for the DLQ if the batch fails
        with self.metrics.time_stage("decode"):
            for event in batch:
                message = event.message
                if self.ledger.was_given_up(message):  # during a send above: its next owner handles it all
                    unit.messages.append((message, None))
                    continue
                try:
                    interaction = parse_event(message.value, rt.limits)
                except RecordError as exc:
                    self.metrics.event(_peek_type(message.value), "dlq")
                    unit.writes.append(await self.dead.send(DeadSource.of_message(message), exc.reason, exc.message))
                    unit.messages.append((message, None))
                    continue
                if message.topic == topics.events and message.key != interaction.user_id.encode():
                    # Keyed otherwise (or not at all): re-key so this user's state stays on one partition.
                    unit.writes.append(await self.by_user.send(key=interaction.user_id.encode(), value=message.value))
                    unit.messages.append((message, None))
                    continue
                interactions.append(interaction)
                sources.append(message)
                unit.messages.append((message, interaction))
        self.ledger.hold(unit.id, unit.messages)
        engine = rt.recommender
        async with rt.engine_lock:
            # Partitions given up (``give_up``, under this lock) since the batch was read: their next owner
            # reads these messages again and applies their events, so this worker must not.
            kept = [(s, i) for s, i in zip(sources, interactions, strict=True) if not self.ledger.was_given_up(s)]
            sources, interactions = [s for s, _ in kept], [i for _, i in kept]
            carried = engine.waiting.events()  # waiting events of earlier batches, tried again now
            # Whatever becomes of them, their messages now wait for this unit's writes: an event applied
            # here must not be acked before its profile change is in Kafka.
            self.ledger.move(carried, unit.id)
            try:
                result = await engine.apply_events(interactions, self.profiles)
            except Exception as exc:  # a bug or an outage must not lose the batch silently
                engine.waiting.drop_all()
                unit.writes += self._changelog()
                await self._dead_batch(unit, exc, list(zip(sources, interactions, strict=True)), carried)
                self._settle(unit)
                return
            unit.writes += self._changelog()
        await self._in_flight.acquire()  # at most PIPELINE_DEPTH batches between apply and publish
        previous, self._last_publish = self._last_publish, asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._lists(result, unit, previous, self._last_publish))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _lists(
        self, result: EventBatchResult, unit: _Unit, previous: asyncio.Future[None], done: asyncio.Future[None]
    ) -> None:
        """Build and publish the batch's lists while the loop applies the next batch (the store search
        runs off the event loop), then publish in batch order and settle."""
        started = time.perf_counter()
        try:
            try:
                result.lists = await self.runtime.recommender.recommend(result.changed, result.triggers)
            except Exception:  # the events are applied (their profiles are written); their lists are lost
                log.exception(
                    "the lists of %d users could not be built; they get one with their next event", len(result.changed)
                )
            await previous
            await self._publish(result, unit)
            self._settle(unit)
            self.metrics.batch_phase_seconds("lists", time.perf_counter() - started)
        finally:
            done.set_result(None)
            self._in_flight.release()

    async def _dead_batch(
        self, unit: _Unit, exc: Exception, parsed: list[tuple[Any, Event]], carried: list[Event]
    ) -> None:
        """The engine raised: exactly the events it was given go to the DLQ (and are counted) once."""
        log.exception("event batch failed; sending its %d events to the DLQ", len(parsed) + len(carried))
        error, exception = repr(exc), type(exc).__name__
        sources = [DeadSource.of_message(message) for message, _ in parsed]
        sources += [DeadSource.of_event(self.runtime.topics.events, event) for event in carried]
        for source, event in zip(sources, [e for _, e in parsed] + carried, strict=True):
            self.metrics.event(event.type, "dlq")
            unit.writes.append(await self.dead.send(source, "processing_error", error, exception))

    async def _publish(self, result: EventBatchResult, unit: _Unit) -> None:
        m = self.metrics
        variants = self.runtime.recommender.variants
        for e in result.processed:
            m.event(e.type, "processed")
            m.variant_event(variants.of(e.user_id), e.type, len(e.item_ids) if isinstance(e, Impression) else 0)
        for e in result.duplicates:
            m.event(e.type, "duplicate")
        events_topic = self.runtime.topics.events
        for rejected in result.rejected:
            event = rejected.record
            m.event(event.type, "dlq")
            source = DeadSource.of_event(events_topic, event)
            unit.writes.append(await self.dead.send(source, rejected.error.reason, rejected.error.message))
        trigger_ts = {e.event_id: e.ts for e in result.processed}
        with m.time_stage("publish"):
            for lst in result.lists:
                published = lst.to_json()
                unit.writes.append(await self.recommendations.send(key=lst.user_id.encode(), value=published))
                self.runtime.latest.put(lst.user_id, published)
                m.list_published(
                    len(lst.items), trigger_ts.get(lst.trigger_event_id or ""), time.time() * 1000, lst.variant
                )
        m.set_profiles(held_profiles(self.profiles))

    async def _control(self, message: Any) -> None:
        rt = self.runtime
        unit = _Unit(next(self._ids), [(message, None)])
        self.ledger.hold(unit.id, unit.messages)
        try:
            command = parse_control(message.value, rt.limits)
        except RecordError as exc:
            unit.writes.append(await self.dead.send(DeadSource.of_message(message), exc.reason, exc.message))
            self._settle(unit)
            return
        if isinstance(command, ForgetUser):
            await self._last_publish  # lists of earlier batches first: none may follow the tombstone
            async with rt.engine_lock:
                if self.ledger.was_given_up(message):
                    return  # its partition was given up meanwhile: the next owner runs it
                dropped = rt.recommender.waiting.drop_user(command.user_id)
                self.ledger.move(dropped, unit.id)
                existed = rt.recommender.forget(command.user_id, self.profiles)
                unit.writes += self._changelog()
            for interaction in dropped:  # read, never applied: counted once, as erased with the user
                self.metrics.event(interaction.type, "forgotten")
            rt.latest.put(command.user_id, None)
            unit.writes.append(await self.recommendations.send(key=command.user_id.encode(), value=None))  # tombstone
            log.info("forgot user %s (profile existed: %s)", command.user_id, existed)
        self._settle(unit)

    # --- settling --------------------------------------------------------------------------------
    def _changelog(self) -> list[Any]:
        """The profile changelog records written since the last unit took them (this unit's)."""
        return self.profiles.changelog_in_flight.drain() if isinstance(self.profiles, ProfileTable) else []

    def _settle(self, unit: _Unit) -> None:
        """Ack the unit's messages once Kafka has every record it wrote; the loop does not wait for it."""
        task = asyncio.ensure_future(self._delivered(unit))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _delivered(self, unit: _Unit) -> None:
        """Faust commits acked offsets after a producer flush that can return while a record is still
        being handed to the client; waiting here keeps a commit from covering an unwritten profile
        change, list, DLQ record or re-keyed event. If Kafka refuses them for good, the worker exits at
        once, committing nothing more: its records are read again after the restart."""
        sent = time.perf_counter()
        try:
            if unit.writes:
                await asyncio.gather(*unit.writes)
        except Exception:
            log.critical("records of an event batch could not be written to Kafka; exiting without committing it")
            logging.shutdown()
            os._exit(70)
        if unit.messages:
            self.metrics.batch_phase_seconds("delivery", time.perf_counter() - sent)
        self.ledger.delivered(unit.id)
        self.ledger.release()

    def _ack(self, message: Any) -> None:
        message.ack(self.app.consumer)


def _peek_type(value: bytes | None) -> str | None:
    """The event type of a rejected record, if it can be read, for the outcome metric's label."""
    try:
        obj = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None
    return obj.get("type") if isinstance(obj, dict) and isinstance(obj.get("type"), str) else None
