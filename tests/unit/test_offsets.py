"""The offset ledger (``streams/offsets.py``): what may be acked, and in which order, on fake messages."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from streams.offsets import OffsetLedger
from xrec.events import Interaction


@dataclass(eq=False)
class Message:
    tp: str
    offset: int
    generation_id: int = 1
    acked: bool = False


@dataclass
class World:
    acks: list[tuple[str, int]] = field(default_factory=list)
    waiting: set[int] = field(default_factory=set)

    def ledger(self) -> OffsetLedger:
        def ack(message: Message) -> None:
            message.acked = True
            self.acks.append((message.tp, message.offset))

        return OffsetLedger(ack=ack, is_waiting=lambda event: id(event) in self.waiting)


def event(n: int) -> Interaction:
    return Interaction(f"e{n}", "u", "i", "click", 1_700_000_000_000 + n)


def messages(tp: str, offsets: range) -> list[tuple[Message, Interaction | None]]:
    return [(Message(tp, o), event(o)) for o in offsets]


def test_nothing_is_acked_before_its_batch_is_delivered() -> None:
    world = World()
    ledger = world.ledger()
    ledger.hold(0, messages("p0", range(3)))
    assert ledger.release() == 0 and world.acks == []
    ledger.delivered(0)
    assert ledger.release() == 3
    assert world.acks == [("p0", 0), ("p0", 1), ("p0", 2)]
    assert len(ledger) == 0


def test_a_later_batch_delivered_first_waits_for_the_earlier_one_of_its_partition() -> None:
    world = World()
    ledger = world.ledger()
    ledger.hold(0, messages("p0", range(0, 2)) + messages("p1", range(0, 1)))
    ledger.hold(1, messages("p0", range(2, 4)) + messages("p1", range(1, 2)))
    ledger.delivered(1)
    ledger.release()
    assert world.acks == []  # acking batch 1 now would leave a hole at offsets 0-1
    ledger.delivered(0)
    ledger.release()
    assert world.acks == [("p0", 0), ("p0", 1), ("p0", 2), ("p0", 3), ("p1", 0), ("p1", 1)]


def test_the_acks_of_a_partition_never_pass_an_event_that_waits_for_its_item() -> None:
    world = World()
    ledger = world.ledger()
    held = messages("p0", range(5))
    waiting = held[2][1]
    world.waiting.add(id(waiting))
    ledger.hold(0, held + messages("p1", range(2)))
    ledger.delivered(0)
    ledger.release()
    assert world.acks == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]  # p1 is not held up by p0's wait
    # The waiting event is applied in batch 7: its message (and those behind it) wait for batch 7's writes.
    world.waiting.discard(id(waiting))
    assert waiting is not None
    ledger.move([waiting], 7)
    ledger.hold(7, [])
    assert ledger.release() == 0
    ledger.delivered(7)
    ledger.release()
    assert world.acks[4:] == [("p0", 2), ("p0", 3), ("p0", 4)]


def test_records_that_never_reached_the_engine_are_acked_with_their_batch() -> None:
    world = World()
    ledger = world.ledger()
    ledger.hold(0, [(Message("p0", 0), None), (Message("p0", 1), None)])  # malformed, or re-keyed
    ledger.delivered(0)
    assert ledger.release() == 2


def test_giving_up_acks_nothing_and_returns_the_waiting_events() -> None:
    world = World()
    ledger = world.ledger()
    held = messages("p0", range(3))
    world.waiting.add(id(held[1][1]))
    ledger.hold(0, held)
    unread = Message("p1", 9)
    waiting = ledger.give_up(generation=1, unread=[unread])
    assert waiting == [held[1][1]]
    assert world.acks == []  # no offset committed
    assert all(m.acked for m, _ in held) and unread.acked  # but Faust no longer waits for them
    assert len(ledger) == 0


def test_after_giving_up_later_messages_of_that_generation_are_given_up_as_they_come() -> None:
    world = World()
    ledger = world.ledger()
    ledger.hold(0, messages("p0", range(2)))
    ledger.give_up(generation=1)
    late = Message("p0", 2, generation_id=1)
    fresh = Message("p0", 2, generation_id=2)
    assert ledger.hold(1, [(late, None)]) == 1 and late.acked
    assert ledger.hold(2, [(fresh, None)]) == 0 and not fresh.acked  # the next generation is held as usual
    ledger.delivered(2)
    ledger.release()
    assert world.acks == [("p0", 2)]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
def test_whatever_order_batches_are_delivered_in_each_partition_is_acked_in_offset_order(order: tuple) -> None:
    world = World()
    ledger = world.ledger()
    for batch in range(3):
        ledger.hold(batch, messages("p0", range(batch * 3, batch * 3 + 3)) + messages("p1", range(batch, batch + 1)))
    for batch in order:
        ledger.delivered(batch)
        ledger.release()
    for tp in ("p0", "p1"):
        offsets = [o for t, o in world.acks if t == tp]
        assert offsets == sorted(offsets) and offsets == list(range(len(offsets)))
    assert len(world.acks) == 12
