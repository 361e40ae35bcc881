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
from typing import TYPE_CHECKING

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from streams.compacted import SharedState
from xrec.ranker import OnlineRanker
from xrec.ranking import FEATURES

if TYPE_CHECKING:
    from streams.runtime import Runtime

log = logging.getLogger(__name__)


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


class RankerWeightsSync(SharedState):
    """Publishes this worker's delta and follows the others'."""

    what = "the learned ranker's weights"
    state = "ranker"

    def __init__(self, runtime: Runtime, bootstrap: str) -> None:
        settings = runtime.settings
        super().__init__(settings, bootstrap, runtime.topics.ranker, runtime.metrics)
        self.runtime = runtime
        self.ranker = runtime.recommender.ranker
        self.prefix = f"{settings.app_id}/{settings.ranker_generation}/"
        self.key = self.prefix + self.worker
        self.others: dict[str, np.ndarray] = {}
        self.own_published: tuple[np.ndarray, int] | None = None  # this worker's delta as last published
        self.published_updates = -1

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        name = key.decode("utf-8", "replace") if key else ""
        if not name.startswith(self.prefix):
            return  # another app's, or another generation's
        if value is None:
            self.others.pop(name, None)
        else:
            delta, updates = decode_delta(value)
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
        self.runtime.metrics.set_ranker(self.ranker)
        log.info("learned ranker: %d other workers' deltas read from %s", len(self.others), self.topic)

    async def publish(self, producer: AIOKafkaProducer) -> int:
        if self.ranker.updates == self.published_updates:
            return 0
        await producer.send_and_wait(self.topic, key=self.key.encode(), value=encode_delta(self.ranker))
        self.published_updates = self.ranker.updates
        self.runtime.metrics.set_ranker(self.ranker)
        return 1


def start_ranker_sync(runtime: Runtime, bootstrap: str) -> asyncio.Task[None] | None:
    """Share the learned ranker's weights when some variant ranks with them; None when none does."""
    if not runtime.recommender.learned:
        return None
    return asyncio.ensure_future(RankerWeightsSync(runtime, bootstrap).run())
