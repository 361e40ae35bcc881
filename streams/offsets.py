"""Which event messages may be acked, so that Faust commits their offsets: the ledger of held messages.

Every message the event agent reads is held here until it may be acked, and acked in offset order,
partition by partition. A message may be acked once

1. everything its batch wrote (profile changelog, lists, DLQ records, re-keyed events) is in Kafka:
   a commit must never cover a write that could still be lost, and
2. it is not an event still waiting for its item (the committed offset never passes a waiting
   event, so a crash reads it again), and
3. every earlier message of its partition has been acked: the acked offsets of a partition are
   always a prefix, so Faust never commits past a hole (faust-streaming issue #606: its commit skips
   one unacked offset at the head of a partition).

Batches do not wait for each other's delivery: the next batch is processed while the last one's
writes are on their way, and this ledger releases each message once its own conditions hold.

When partitions move or the worker stops, Faust waits until every message read is acked. The held
ones are then *given up*: marked done without an ack, so no offset is committed for them and their
next owner reads them again. Messages of the same partition and consumer generation read after
that are given up as they arrive, for the same reason.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from xrec.events import Event


@dataclass
class _Held:
    message: Any
    batch: int
    event: Event | None  # the event parsed from it, when it reached the engine


@dataclass
class OffsetLedger:
    """Held messages per partition, in read order; ``ack`` commits one (Faust's ``message.ack(consumer)``)."""

    ack: Callable[[Any], None]
    is_waiting: Callable[[Event], bool]
    _held: dict[Any, deque[_Held]] = field(default_factory=dict)
    _delivered: set[int] = field(default_factory=set)
    _unacked: dict[int, int] = field(default_factory=dict)  # batch -> its messages still held
    _given_up: dict[Any, int] = field(default_factory=dict)  # partition -> consumer generation given up

    def hold(self, batch: int, messages: Iterable[tuple[Any, Event | None]]) -> int:
        """Hold a batch's messages until they may be acked; returns how many were given up at once
        (read after a given-up one of the same partition and generation)."""
        given_up = 0
        for message, event in messages:
            if self.was_given_up(message):
                message.acked = True  # done here; committing it would skip the given-up ones
                given_up += 1
                continue
            self._held.setdefault(message.tp, deque()).append(_Held(message, batch, event))
            self._unacked[batch] = self._unacked.get(batch, 0) + 1
        return given_up

    def was_given_up(self, message: Any) -> bool:
        """Whether ``message``'s partition was given up in the consumer generation that read it: its
        next owner reads it again, so nothing here may apply it."""
        return self._given_up.get(message.tp) == message.generation_id

    def delivered(self, batch: int) -> None:
        """Everything ``batch`` wrote is in Kafka."""
        if batch in self._unacked:
            self._delivered.add(batch)

    def release(self) -> int:
        """Ack, partition by partition in offset order, every message that may be acked; returns how many."""
        acked = 0
        for tp, queue in list(self._held.items()):
            while queue and self._may_ack(queue[0]):
                held = queue.popleft()
                self.ack(held.message)
                acked += 1
                self._unacked[held.batch] -= 1
                if not self._unacked[held.batch]:  # the batch is done
                    del self._unacked[held.batch]
                    self._delivered.discard(held.batch)
            if not queue:
                del self._held[tp]
        return acked

    def move(self, events: Iterable[Event], batch: int) -> None:
        """Events held in an earlier batch (they waited for their item) were applied or dead-lettered in
        ``batch``: their messages may be acked only once *that* batch's writes are in Kafka."""
        ids = {id(event) for event in events}
        if not ids:
            return
        for queue in self._held.values():
            for held in queue:
                if held.event is not None and id(held.event) in ids and held.batch != batch:
                    self._unacked[held.batch] -= 1
                    if not self._unacked[held.batch]:
                        del self._unacked[held.batch]
                        self._delivered.discard(held.batch)
                    held.batch = batch
                    self._unacked[batch] = self._unacked.get(batch, 0) + 1

    def give_up(self, generation: int, unread: Iterable[Any] = ()) -> list[Event]:
        """Let go of every held message, and of ``unread`` ones (read but not in a batch yet), without
        committing them; returns the waiting events among them (the engine must drop them: their
        messages will be read again)."""
        for message in unread:
            message.acked = True
            self._given_up[message.tp] = generation
        waiting = []
        for tp, queue in self._held.items():
            for held in queue:
                held.message.acked = True  # Faust stops waiting for it; no offset is committed for it
                if held.event is not None and self.is_waiting(held.event):
                    waiting.append(held.event)
            self._given_up[tp] = generation
        self._held.clear()
        self._delivered.clear()
        self._unacked.clear()
        return waiting

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._held.values())

    def _may_ack(self, held: _Held) -> bool:
        return held.batch in self._delivered and (held.event is None or not self.is_waiting(held.event))
