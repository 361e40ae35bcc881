"""The feed between the Faust agent and the batch loop: a batch is what has arrived, taken at once."""

from __future__ import annotations

import asyncio

import pytest

from streams.feed import EventFeed


async def test_a_lone_event_is_taken_at_once_without_waiting_for_company() -> None:
    feed = EventFeed(max_batch=100, capacity=400)
    await feed.put("e1", fetch_s=0.004)
    taken = await asyncio.wait_for(feed.take(), timeout=0.05)
    assert taken.events == ["e1"] and taken.fetch_s == 0.004 and taken.queued_s < 0.05


async def test_what_arrived_while_the_loop_was_busy_is_the_next_batch_up_to_its_limit() -> None:
    feed = EventFeed(max_batch=3, capacity=10)
    for n in range(5):
        await feed.put(n)
    assert (await feed.take()).events == [0, 1, 2]
    assert (await feed.take()).events == [3, 4]


async def test_take_waits_for_the_first_event() -> None:
    feed = EventFeed(max_batch=3, capacity=10)
    waiter = asyncio.ensure_future(feed.take())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await feed.put("late")
    assert (await asyncio.wait_for(waiter, 1)).events == ["late"]


async def test_a_full_feed_makes_the_agent_wait_until_a_batch_is_taken() -> None:
    feed = EventFeed(max_batch=2, capacity=2)
    await feed.put(1)
    await feed.put(2)
    blocked = asyncio.ensure_future(feed.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done() and len(feed) == 2
    await feed.take()
    await asyncio.wait_for(blocked, 1)
    assert (await feed.take()).events == [3]


async def test_drain_hands_over_everything_and_frees_the_agent() -> None:
    feed = EventFeed(max_batch=2, capacity=2)
    await feed.put(1)
    await feed.put(2)
    blocked = asyncio.ensure_future(feed.put(3))
    await asyncio.sleep(0.01)
    assert feed.drain() == [1, 2]
    await asyncio.wait_for(blocked, 1)
    assert len(feed) == 1


def test_a_feed_smaller_than_a_batch_is_refused() -> None:
    with pytest.raises(ValueError):
        EventFeed(max_batch=10, capacity=5)
