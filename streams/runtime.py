"""What a worker holds besides the Faust app: settings, encoder, store, metrics, the engine.

Agents, the item indexer and the web views all reach these through one ``Runtime`` object that the
app owns, so there is no module-level mutable state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from streams.supervision import ConsumerLoops
from streams.tables import LocalTables
from xrec.config import Settings
from xrec.events import Limits
from xrec.metrics import XrecMetrics
from xrec.pipeline import Encoder, Recommender
from xrec.store.base import VectorStore
from xrec.topics import TopicNames, vectors_topic
from xrec.vectors import VectorSpace

log = logging.getLogger(__name__)


@dataclass
class LatestLists:
    """The most recent list per user this worker published, for ``GET /recommendations/{user}``.

    Bounded; the compacted recommendations topic stays the source of truth for all users. A list is kept
    as the JSON it was published as: bytes are invisible to Python's garbage collector, while a
    ``RecommendationList`` is twelve objects (itself, its tuple and ten items) that every full collection
    walks: 1.2M at capacity, a pause of hundreds of milliseconds on the event loop each time.
    """

    capacity: int = 100_000
    _lists: OrderedDict[str, bytes | None] = field(default_factory=OrderedDict)

    def put(self, user_id: str, published: bytes | None) -> None:
        """``published``: the list's JSON as sent to the recommendations topic; None after ``forget_user``."""
        self._lists[user_id] = published
        self._lists.move_to_end(user_id)
        if len(self._lists) > self.capacity:
            self._lists.popitem(last=False)

    def get(self, user_id: str) -> bytes | None:
        return self._lists.get(user_id)


@dataclass
class Runtime:
    settings: Settings
    store: VectorStore
    encoder: Encoder | None
    metrics: XrecMetrics
    dim: int
    space: VectorSpace  # what the vectors topic, the encoding group and the store hold (``xrec/vectors.py``)
    topics: TopicNames = field(init=False)
    vectors_topic: str = field(init=False)
    limits: Limits = field(init=False)
    recommender: Recommender = field(init=False)
    latest: LatestLists = field(default_factory=LatestLists)
    engine_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: bool = False
    items_caught_up: bool = False
    indexer_task: asyncio.Task[None] | None = None
    encoder_task: asyncio.Task[None] | None = None  # None where XREC_ENCODE_ITEMS=false
    ranker_task: asyncio.Task[None] | None = None  # None unless a variant ranks with the learned ranker
    click_through_task: asyncio.Task[None] | None = None  # shares the click-through counts (streams/click_through.py)
    loops: ConsumerLoops = field(init=False)
    local_tables: LocalTables | None = None  # XREC_TABLE_STORE=rocksdb: told when the worker stops cleanly

    def __post_init__(self) -> None:
        self.loops = ConsumerLoops(self.metrics, self.settings.consumer_max_failures)
        self.topics = TopicNames.from_settings(self.settings)
        self.vectors_topic = vectors_topic(self.settings, self.space)
        self.limits = Limits.from_settings(self.settings, vector_dim=self.dim)
        self.recommender = Recommender(self.settings, self.store, self.encoder, self.metrics, dim=self.dim)
        self.metrics.set_ranker(self.recommender.ranker)

    async def ensure_started(self) -> None:
        """Create the collection once, from whichever task gets here first."""
        async with self.engine_lock:
            if not self.started:
                await self.recommender.start()
                await self.store.claim_space(self.space)  # refuses a store that holds another model's vectors
                self.started = True


def load_encoder(settings: Settings) -> Any:
    """The text encoder for this worker; says which model, device and dtype it runs on."""
    from xrec.encoder import TextEncoder

    return TextEncoder(settings=settings)
