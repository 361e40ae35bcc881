"""Events on their way from the Faust agent to the batch loop: a batch is what has arrived, taken at once.

The agent puts each event it reads; the batch loop takes *everything* that is there as soon as there
is anything and it is free. So at low load a batch is the one or few events that just arrived and its
latency is the processing time, not a window; under load the events that arrived while the previous
batch was processed make the next one, up to ``max_batch``. The feed is bounded: when it holds
``capacity`` events the agent waits, Faust stops fetching, and the backlog stays in Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Taken:
    """A batch out of the feed, with how long its oldest event waited in the feed and the longest time
    any of them took from its Kafka timestamp to being read (for ``xrec_batch_seconds``)."""

    events: list[Any]
    queued_s: float
    fetch_s: float


class EventFeed:
    def __init__(self, max_batch: int, capacity: int) -> None:
        if max_batch < 1 or capacity < max_batch:
            raise ValueError("need 1 <= max_batch <= capacity")
        self.max_batch = max_batch
        self.capacity = capacity
        self._events: deque[tuple[Any, float, float]] = deque()  # (event, arrived at, fetch delay)
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, event: Any, fetch_s: float = 0.0) -> None:
        """Add one event (the agent's side); waits while the feed is full. ``fetch_s``: how long it took
        from its Kafka timestamp to being read."""
        while len(self._events) >= self.capacity:
            self._room.clear()
            await self._room.wait()
        self._events.append((event, time.monotonic(), fetch_s))
        self._arrived.set()

    async def take(self) -> Taken:
        """Wait for at least one event, then take every event there is, up to ``max_batch``."""
        while not self._events:
            self._arrived.clear()
            await self._arrived.wait()
        return self._take_now()

    def drain(self) -> list[Any]:
        """Everything waiting in the feed, at once (partitions move: it is given up)."""
        events = [event for event, _, _ in self._events]
        self._events.clear()
        self._room.set()
        return events

    def __len__(self) -> int:
        return len(self._events)

    def _take_now(self) -> Taken:
        count = min(self.max_batch, len(self._events))
        batch = [self._events.popleft() for _ in range(count)]
        if len(self._events) < self.capacity:
            self._room.set()
        return Taken(
            events=[event for event, _, _ in batch],
            queued_s=time.monotonic() - batch[0][1],
            fetch_s=max(fetch for _, _, fetch in batch),
        )
