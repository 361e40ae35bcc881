"""The engine's item cache: a bounded LRU in front of the store, invisible to the garbage collector."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from xrec.pipeline import ItemCache, ItemMeta

pytestmark = pytest.mark.unit


def meta(n: int) -> ItemMeta:
    return ItemMeta(np.full(4, n, np.float32), "en" if n % 2 else "zh", 1_700_000_000 + n)


def test_an_item_comes_back_as_it_was_put_and_the_least_recently_used_is_dropped() -> None:
    cache = ItemCache(capacity=2)
    cache.put("a", meta(1))
    cache.put("b", meta(2))
    got = cache.get("a")  # a is now the most recent
    assert got is not None and got.lang == "en" and got.ts == 1_700_000_001
    assert np.array_equal(got.vector, meta(1).vector)
    cache.put("c", meta(3))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.discard("a")
    assert cache.get("a") is None and len(cache) == 1


def test_a_full_collection_does_not_walk_the_cached_items() -> None:
    gc.collect()
    before = len(gc.get_objects())
    cache = ItemCache(capacity=10_000)
    for n in range(5_000):
        cache.put(f"item-{n}", meta(n))
    gc.collect()  # the collector looks at each new entry once, then stops tracking it
    assert len(gc.get_objects()) - before < 100  # not one object per item
    assert len(cache) == 5_000
