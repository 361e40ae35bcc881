"""The worker's latest list per user, as ``GET /recommendations/{user}`` serves it."""

from __future__ import annotations

import gc

import pytest

from streams.runtime import LatestLists
from xrec.events import RecommendationList, RecommendedItem

pytestmark = pytest.mark.unit


def published(user: str, item: str) -> bytes:
    items = tuple(RecommendedItem(f"{item}-{n}", 0.5, "en", item) for n in range(10))
    return RecommendationList(user, 1, "e1", "interests", items).to_json()


def test_the_list_served_is_the_json_published_last_for_that_user() -> None:
    latest = LatestLists()
    latest.put("u1", published("u1", "a"))
    latest.put("u1", published("u1", "b"))
    latest.put("u2", published("u2", "c"))
    assert latest.get("u1") == published("u1", "b")
    assert RecommendationList.from_json(latest.get("u2") or b"").items[0].item_id == "c-0"
    assert latest.get("u3") is None
    latest.put("u1", None)  # forget_user
    assert latest.get("u1") is None


def test_beyond_its_capacity_the_user_published_to_longest_ago_is_dropped() -> None:
    latest = LatestLists(capacity=2)
    latest.put("u1", published("u1", "a"))
    latest.put("u2", published("u2", "b"))
    latest.put("u1", published("u1", "c"))  # u1 is now the most recent
    latest.put("u3", published("u3", "d"))
    assert latest.get("u2") is None
    assert latest.get("u1") is not None and latest.get("u3") is not None


def test_a_held_list_is_nothing_the_garbage_collector_walks() -> None:
    """At capacity (100k users) held as objects, 1.2M objects for every full collection to walk."""
    latest = LatestLists()
    latest.put("u1", published("u1", "a"))
    held = latest.get("u1")
    assert held is not None and not gc.is_tracked(held)
