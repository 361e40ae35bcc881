"""The statistics of the neutral space, shared and persisted through a compacted topic.

A worker's neutral space (``xrec/space.py``) is built from per-language item counts and vector sums
of the whole catalog, kept by part: one part per partition of the items topic, as indexed by one item
consumer group (the workers that share one store). The indexer owning a partition counts its part and
publishes it (key ``<items group>/<partition>``, value ``CountedStats``) before it writes the store;
every worker follows the topic from its start and takes the parts of its own group that its indexer
does not own. So:

- a restarted worker starts from the statistics it had, and an indexer that takes a partition over
  continues that part where the previous owner left it, skipping the records it had counted already;
- workers sharing a Qdrant server (one items group) build their spaces from the same parts;
- edge workers (one items group each) each count the whole catalog, from the same item stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer

from streams.compacted import follow
from xrec.space import CountedStats, LanguageSpace

log = logging.getLogger(__name__)


class LanguageStatsFollower:
    """Reads the statistics topic from the beginning and keeps following it.

    ``caught_up`` is set once it has read what the topic held when it started: from then on a part
    this worker takes over is the latest one its previous owner published.
    """

    def __init__(self, space: LanguageSpace, topic: str, items_group: str, kafka_kwargs: dict[str, Any]) -> None:
        self.space = space
        self.topic = topic
        self.prefix = f"{items_group}/"
        self.kafka_kwargs = kafka_kwargs
        self.latest: dict[str, CountedStats] = {}
        self.owned: set[str] = set()  # parts this worker's indexer writes: never taken from the topic
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, **self.kafka_kwargs)
        await consumer.start()
        try:
            await follow(consumer, self.topic, self.apply, self._caught_up)
        finally:
            await consumer.stop()

    def _caught_up(self) -> None:
        self.caught_up.set()
        log.info("language statistics read: %d parts of this store's items", len(self.latest))

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Take one record of the topic: the latest statistics of a part (None: the part is gone)."""
        name = key.decode("utf-8", "replace") if key else ""
        if not name.startswith(self.prefix):
            return  # another store's part
        if value is None:
            self.latest.pop(name, None)
            return
        try:
            counted = CountedStats.from_bytes(value)
        except ValueError as exc:
            log.error("language statistics record %r of %s cannot be read (%s); ignoring it", name, self.topic, exc)
            return
        if counted.stats.dim != self.space.dim:
            log.error(
                "language statistics %r hold %d-d sums, this worker %d-d; ignoring them",
                name,
                counted.stats.dim,
                self.space.dim,
            )
            return
        self.latest[name] = counted
        if name not in self.owned:
            self.space.set_part(name, counted.stats)

    def take_over(self, key: str) -> int:
        """This worker's indexer now writes ``key``: its statistics start from the last published ones.
        Returns the offset of the last item record they count (−1: none)."""
        self.owned.add(key)
        counted = self.latest.get(key)
        if counted is None:
            return -1
        self.space.set_part(key, counted.stats)
        return counted.through

    def let_go(self, key: str) -> None:
        """Another worker writes ``key`` now: follow what it publishes."""
        self.owned.discard(key)
        counted = self.latest.get(key)
        if counted is not None:
            self.space.set_part(key, counted.stats)
