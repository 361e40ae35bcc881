"""What the learned ranker has learned, shared by every worker of an app through a compacted topic.

Each worker learns a delta on the hand-set weights from its own users' impressions and clicks
(``xrec/ranker.py``) and publishes it every few seconds under its own key
(``<app id>/<generation>/<worker id>``); every worker follows the topic and ranks with the hand-set
weights plus all the deltas, so all rank alike and each one's users teach everyone. The worker id is
kept in the worker's state directory: a restarted worker finds its own delta and goes on from it. A
worker that is gone leaves its delta behind, as it should: what it learned stays learned. Raising
``XREC_RANKER_GENERATION`` starts every worker from the hand-set weights again (older generations'
keys are ignored).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from xrec.kafka import aiokafka_kwargs, producer_kwargs
from xrec.ranker import OnlineRanker
from xrec.ranking import FEATURES

if TYPE_CHECKING:
    from streams.runtime import Runtime

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 5.0
RETRY_AFTER_S = 5.0


def worker_id(state_dir: Path) -> str:
    """This worker's lasting name for its delta: made once, kept in its state directory."""
    path = state_dir / "ranker-worker-id"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex[:12]
        path.write_text(name, encoding="utf-8")
        return name


def encode_delta(ranker: OnlineRanker) -> bytes:
    return orjson.dumps({"features": list(FEATURES), "delta": ranker.own.tolist(), "updates": ranker.updates})


def decode_delta(value: bytes) -> tuple[np.ndarray, int]:
    """A published delta; ValueError when it is not one this version can use."""
    try:
        obj = orjson.loads(value)
        if obj["features"] != list(FEATURES):
            raise ValueError(f"it weighs features {obj['features']}, this worker {list(FEATURES)}")
        delta = np.asarray(obj["delta"], np.float64)
        updates = int(obj["updates"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a ranker delta: {exc}") from None
    if delta.shape != (len(FEATURES),) or not np.all(np.isfinite(delta)):
        raise ValueError("not a finite delta of one value per feature")
    return delta, updates


class RankerWeightsSync:
    """Publishes this worker's delta and follows the others'."""

    def __init__(self, runtime: Runtime, bootstrap: str) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.ranker = runtime.recommender.ranker
        self.topic = runtime.topics.ranker
        self.bootstrap = bootstrap
        self.prefix = f"{settings.app_id}/{settings.ranker_generation}/"
        self.key = self.prefix + worker_id(settings.worker_state_dir)
        self.others: dict[str, np.ndarray] = {}
        self.own_published: tuple[np.ndarray, int] | None = None  # this worker's delta as last published
        self.restored = False
        self.published_updates = -1

    async def run(self) -> None:
        """Follow and publish until cancelled; a failure is logged and the loop starts again (the ranker
        keeps learning meanwhile, only sharing pauses)."""
        while True:
            try:
                await self._follow_and_publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away, a topic missing: say so, keep the worker
                log.error("sharing the learned ranker's weights failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(RETRY_AFTER_S)

    async def _follow_and_publish(self) -> None:
        settings = self.runtime.settings
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False, group_id=None, **aiokafka_kwargs(settings, self.bootstrap)
        )
        producer = AIOKafkaProducer(**producer_kwargs(settings, self.bootstrap))
        await consumer.start()
        await producer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            next_publish = time.monotonic() + PUBLISH_EVERY_S
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for message in batches.get(tp, []):
                    self.apply(message.key, message.value)
                if not self.restored and await consumer.position(tp) >= end:
                    self.restore()
                if self.restored and time.monotonic() >= next_publish:
                    next_publish = time.monotonic() + PUBLISH_EVERY_S
                    await self.publish(producer)
        finally:
            if self.restored:
                await self.publish(producer)
            await producer.stop()
            await consumer.stop()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        name = key.decode("utf-8", "replace") if key else ""
        if not name.startswith(self.prefix):
            return  # another app's, or another generation's
        if value is None:
            self.others.pop(name, None)
        else:
            try:
                delta, updates = decode_delta(value)
            except ValueError as exc:
                log.error("ranker record %r of %s cannot be used (%s); ignoring it", name, self.topic, exc)
                return
            if name == self.key:
                if not self.restored:
                    self.own_published = (delta, updates)
                return  # after the restore, this worker's own records are what it already holds
            self.others[name] = delta
        self.ranker.set_others(self.others)
        self.runtime.metrics.set_ranker(self.ranker)

    def restore(self) -> None:
        """Caught up with the topic: this worker's own delta, as it last published it, is where it goes on from."""
        if self.own_published is not None:
            delta, updates = self.own_published
            self.ranker.own = self.ranker.own + delta
            self.ranker.updates += updates
            log.info("learned ranker: went on from this worker's published delta (%s, %d updates)", self.key, updates)
        self.ranker.set_others(self.others)
        self.restored = True
        self.runtime.metrics.set_ranker(self.ranker)
        log.info("learned ranker: %d other workers' deltas read from %s", len(self.others), self.topic)

    async def publish(self, producer: Any) -> None:
        if self.ranker.updates == self.published_updates:
            return
        await producer.send_and_wait(self.topic, key=self.key.encode(), value=encode_delta(self.ranker))
        self.published_updates = self.ranker.updates
        self.runtime.metrics.set_ranker(self.ranker)


def start_ranker_sync(runtime: Runtime, bootstrap: str) -> asyncio.Task[None] | None:
    """Share the learned ranker's weights when some variant ranks with them; None when none does."""
    if not runtime.recommender.learned:
        return None
    return asyncio.ensure_future(RankerWeightsSync(runtime, bootstrap).run())
