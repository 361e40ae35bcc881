"""The click-through counts, shared by every worker of an app and kept through restarts by a compacted topic.

Each worker counts the impressions and clicks of its own users (``xrec/exposure.py``) and publishes
every few seconds the counts that changed, one record per item, language and total, keyed
``[app id, worker id, kind, name]`` (JSON); a count that went (a deleted item) is a tombstone. Every
worker follows the topic and adds the other workers' counts to its own, so an item's rate is made of
every user's impressions, and a restarted worker takes its own published counts back (its worker id
is kept in its state directory). The last few seconds a killed worker counted are lost with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaProducer

from streams.compacted import SharedState
from xrec.exposure import ClickThrough, Counts, PublishedCounts

if TYPE_CHECKING:
    from streams.runtime import Runtime

log = logging.getLogger(__name__)


def encode_counts(app_id: str, worker: str, record: PublishedCounts) -> tuple[bytes, bytes | None]:
    """One published count as a record's key and value (None: a tombstone)."""
    key = orjson.dumps([app_id, worker, record.kind, record.name])
    if record.counts is None:
        return key, None
    return key, orjson.dumps({"shown": record.counts.shown, "clicked": record.counts.clicked, "at": record.at})


def decode_counts(key: bytes | None, value: bytes | None) -> tuple[str, str, PublishedCounts]:
    """App id, worker id and the count of a record; ValueError when it is not one."""
    try:
        app_id, worker, kind, name = orjson.loads(key or b"")
        if not all(isinstance(part, str) for part in (app_id, worker, kind, name)):
            raise TypeError("the key's parts are not all strings")
        if value is None:
            return app_id, worker, PublishedCounts(kind, name, None, 0)
        obj = orjson.loads(value)
        shown, clicked, at = float(obj["shown"]), float(obj["clicked"]), int(obj["at"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a click-through count: {exc}") from None
    if not (math.isfinite(shown) and math.isfinite(clicked)) or shown < 0 or clicked < 0:
        raise ValueError("counts must be finite and not negative")
    return app_id, worker, PublishedCounts(kind, name, Counts(shown, clicked), at)


class ClickThroughSync(SharedState):
    """Publishes this worker's changed counts and follows the others'."""

    what = "the click-through counts"
    state = "click_through"

    def __init__(self, runtime: Runtime, bootstrap: str) -> None:
        settings = runtime.settings
        super().__init__(settings, bootstrap, runtime.topics.click_through, runtime.metrics)
        self.exposure: ClickThrough = runtime.recommender.exposure
        self.app_id = settings.app_id
        self.own_published: dict[tuple[str, str], PublishedCounts] = {}  # before ``restore``: what this worker had

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        app_id, worker, record = decode_counts(key, value)
        if app_id != self.app_id:
            return
        if worker != self.worker:
            self.exposure.report(worker, record)
        elif not self.restored:
            self.own_published[(record.kind, record.name)] = record  # a tombstone too: the latest one wins
        # after the restore, this worker's own records are what it already holds

    def restore(self) -> None:
        for record in self.own_published.values():
            self.exposure.restore_own(record)
        log.info(
            "click-through counts: went on from %d counts this worker published (%s); the others' read from %s",
            sum(r.counts is not None for r in self.own_published.values()),
            self.worker,
            self.topic,
        )
        self.own_published.clear()

    async def publish(self, producer: AIOKafkaProducer) -> int:
        changes = self.exposure.take_changes()
        if not changes:
            return 0
        try:
            sent = []
            for record in changes:
                key, value = encode_counts(self.app_id, self.worker, record)
                sent.append(await producer.send(self.topic, key=key, value=value))
            await asyncio.gather(*sent)
        except BaseException:
            self.exposure.put_back(changes)  # sent again next time
            raise
        return len(changes)


def start_click_through_sync(runtime: Runtime, bootstrap: str) -> asyncio.Task[None]:
    return asyncio.ensure_future(ClickThroughSync(runtime, bootstrap).run())
