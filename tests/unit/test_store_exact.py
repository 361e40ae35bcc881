"""The edge store's batched exact search answers exactly what Qdrant Edge's own exact search answers."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from xrec.store import EdgeStore, ItemFilter, ItemPoint, VectorQuery

DIM = 16
LANGS = ("en", "de", "ja", "zh")
CATEGORIES = ("news", "film", "music")


def catalog(n: int, seed: int, prefix: str = "i") -> list[ItemPoint]:
    rng = np.random.default_rng(seed)
    points = []
    for k in range(n):
        payload: dict = {"category": CATEGORIES[k % 3], "available": bool(rng.random() < 0.8), "ts": int(k)}
        if k % 17:  # some items carry no language: no language filter matches them
            payload["lang"] = LANGS[int(rng.integers(len(LANGS)))]
        payload["title"] = f"title {k}"
        points.append(ItemPoint(f"{prefix}{k}", rng.standard_normal(DIM).astype(np.float32) * 3, payload))
    return points


def random_queries(n: int, seed: int, ids: list[str]) -> list[VectorQuery]:
    rng = random.Random(seed)
    queries = []
    for _ in range(n):
        langs = tuple(rng.sample(LANGS, rng.randint(1, 3))) if rng.random() < 0.5 else None
        categories = tuple(rng.sample(CATEGORIES, 2)) if rng.random() < 0.3 else None
        queries.append(
            VectorQuery(
                vector=np.asarray([rng.gauss(0, 1) for _ in range(DIM)], np.float32),
                limit=rng.choice((1, 5, 20, 1000)),
                filter=ItemFilter(langs=langs, categories=categories, available_only=rng.random() < 0.8),
                exclude_ids=set(rng.sample(ids, rng.randint(0, 30))) | {"never-stored"},
                payload_fields=("lang", "ts"),
            )
        )
    return queries


async def assert_same_answers(fast: EdgeStore, scan: EdgeStore, queries: list[VectorQuery]) -> None:
    got = await fast.query_batch(queries)
    want = await scan.query_batch(queries)
    for g, w in zip(got, want, strict=True):
        assert [h.item_id for h in g] == [h.item_id for h in w]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-5)
        assert [h.payload for h in g] == [h.payload for h in w]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[EdgeStore, EdgeStore]]:
    fast = EdgeStore(tmp_path / "fast", dim=DIM, index_threshold=10_000)
    scan = EdgeStore(tmp_path / "scan", dim=DIM, index_threshold=10_000, batch_exact=False)
    for store in (fast, scan):
        await store.ensure_collection(DIM)
        await store.upsert(catalog(400, seed=1))
    yield fast, scan
    for store in (fast, scan):
        await store.close()


async def test_a_batch_gets_the_same_hits_scores_and_payloads_as_the_engine(pair: tuple[EdgeStore, EdgeStore]) -> None:
    fast, scan = pair
    assert fast.batch_exact_active and not scan.batch_exact_active
    await assert_same_answers(fast, scan, random_queries(60, seed=2, ids=[f"i{k}" for k in range(400)]))


async def test_a_batch_larger_than_one_block_of_queries_gets_the_same_answers(
    pair: tuple[EdgeStore, EdgeStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("xrec.store.exact.QUERY_BLOCK", 7)  # 60 queries: 8 blocks, the last one short
    fast, scan = pair
    await assert_same_answers(fast, scan, random_queries(60, seed=14, ids=[f"i{k}" for k in range(400)]))


async def test_columns_hold_the_same_answers_as_the_hits_with_each_item_once(
    pair: tuple[EdgeStore, EdgeStore],
) -> None:
    fast, _ = pair
    queries = random_queries(40, seed=12, ids=[f"i{k}" for k in range(400)])
    hits = await fast.query_batch(queries, with_vectors=True)
    columns = await fast.query_columns(queries)
    assert columns is not None
    assert len(set(columns.item_ids)) == len(columns.item_ids)
    for answer, rows, scores in zip(hits, columns.per_query, columns.scores, strict=True):
        assert [columns.item_ids[r] for r in rows] == [h.item_id for h in answer]
        np.testing.assert_allclose(scores, [h.score for h in answer], atol=1e-6)
        np.testing.assert_allclose(columns.vectors[rows], np.stack([np.asarray(h.vector) for h in answer]), atol=1e-6)
        for field in ("lang", "ts"):
            assert [columns.payload[field][r] for r in rows] == [h.payload.get(field) for h in answer]


async def test_a_store_without_the_mirror_gives_no_columns(pair: tuple[EdgeStore, EdgeStore]) -> None:
    _, scan = pair
    assert await scan.query_columns(random_queries(3, seed=13, ids=[f"i{k}" for k in range(400)])) is None


async def test_answers_stay_the_same_after_replacing_and_deleting_items(pair: tuple[EdgeStore, EdgeStore]) -> None:
    fast, scan = pair
    changed = catalog(50, seed=9)  # the same ids i0..i49 with new vectors and payloads
    gone = [f"i{k}" for k in range(40, 120)] + ["never-stored"]
    for store in (fast, scan):
        await store.upsert(changed)
        await store.delete(gone)
        await store.upsert(catalog(30, seed=3, prefix="new"))
    ids = [f"i{k}" for k in range(400)] + [f"new{k}" for k in range(30)]
    await assert_same_answers(fast, scan, random_queries(60, seed=4, ids=ids))


async def test_answers_stay_the_same_while_the_catalog_grows_past_the_mirrors_first_capacity(tmp_path: Path) -> None:
    fast = EdgeStore(tmp_path / "fast", dim=DIM, index_threshold=10_000)
    scan = EdgeStore(tmp_path / "scan", dim=DIM, index_threshold=10_000, batch_exact=False)
    ids = []
    try:
        for store in (fast, scan):
            await store.ensure_collection(DIM)
        for part in range(5):  # 2,500 items in five upserts: the mirror's arrays grow twice on the way
            points = catalog(500, seed=20 + part, prefix=f"p{part}-")
            ids += [p.item_id for p in points]
            for store in (fast, scan):
                await store.upsert(points)
                await store.delete([f"p{part}-{k}" for k in range(0, 500, 7)])  # holes filled from the end
        kept = [i for i in ids if int(i.rsplit("-", 1)[1]) % 7]
        await assert_same_answers(fast, scan, random_queries(40, seed=5, ids=kept))
    finally:
        for store in (fast, scan):
            await store.close()


async def test_the_mirror_is_rebuilt_from_the_shard_when_the_store_reopens(tmp_path: Path) -> None:
    first = EdgeStore(tmp_path / "s", dim=DIM)
    await first.upsert(catalog(200, seed=5))
    queries = random_queries(20, seed=6, ids=[f"i{k}" for k in range(200)])
    before = await first.query_batch(queries)
    await first.close()
    again = EdgeStore(tmp_path / "s", dim=DIM)
    await again.ensure_collection(DIM)
    assert again.batch_exact_active
    after = await again.query_batch(queries)
    assert [[h.item_id for h in hits] for hits in after] == [[h.item_id for h in hits] for hits in before]
    await again.close()


async def test_past_the_index_threshold_qdrant_answers_every_query(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "s", dim=DIM, index_threshold=100)
    await store.upsert(catalog(90, seed=7))
    assert store.batch_exact_active
    await store.upsert(catalog(20, seed=8, prefix="more"))
    assert not store.batch_exact_active
    [hits] = await store.query_batch([VectorQuery(catalog(90, seed=7)[3].vector, limit=1, payload_fields=("lang",))])
    assert hits[0].item_id == "i3"
    await store.close()


async def test_queries_asking_for_other_payload_fields_go_to_qdrant(pair: tuple[EdgeStore, EdgeStore]) -> None:
    fast, _ = pair
    vector = catalog(400, seed=1)[10].vector
    anything = ItemFilter(available_only=False)
    [[whole], [titled]] = await fast.query_batch(
        [
            VectorQuery(vector, limit=1, filter=anything),
            VectorQuery(vector, limit=1, filter=anything, payload_fields=("title",)),
        ]
    )
    assert whole.payload["title"] == titled.payload["title"] == "title 10"


async def test_array_valued_filter_fields_turn_the_mirror_off(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "s", dim=DIM)
    await store.upsert(catalog(10, seed=1))
    assert store.batch_exact_active
    await store.upsert([ItemPoint("multi", np.ones(DIM, np.float32), {"lang": ["en", "de"], "available": True})])
    assert not store.batch_exact_active
    [hits] = await store.query_batch(
        [VectorQuery(np.ones(DIM, np.float32), limit=1, filter=ItemFilter(langs=("de",)), payload_fields=("lang",))]
    )
    assert [h.item_id for h in hits] == ["multi"]  # Qdrant matches an array element
    await store.close()
