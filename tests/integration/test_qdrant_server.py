"""The ``qdrant`` backend against a real Qdrant server: settings a user gets wrong, and an outage.

The store contract itself runs on the server in ``tests/unit/test_store_contract.py`` (``qdrant-grpc``,
``qdrant-http``); a worker riding out a server restart is in ``test_faults.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import start_qdrant_server
from xrec.broker import free_port
from xrec.config import Settings
from xrec.store import ItemFilter, ItemPoint, StoreError, VectorQuery
from xrec.store.local_server import LocalQdrantServer
from xrec.store.qdrant import QdrantServerStore

DIM = 8
PROTOCOLS = ["grpc", "http"]


def settings_for(server: LocalQdrantServer, protocol: str, **overrides: object) -> Settings:
    fields: dict[str, object] = {
        "store_backend": "qdrant",
        "qdrant_url": server.url,
        "qdrant_grpc_port": server.grpc_port,
        "qdrant_prefer_grpc": protocol == "grpc",
        "qdrant_api_key": server.api_key,
        "collection": f"c{uuid.uuid4().hex[:10]}",
        **overrides,
    }
    return Settings.from_env({}, **fields)


def axis(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LocalQdrantServer]:
    """A server only this test uses, so it can be stopped and started again on the same ports and storage."""
    server = start_qdrant_server(tmp_path / "qdrant")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_wrong_api_key_is_refused_with_a_plain_error(qdrant_server: LocalQdrantServer, protocol: str) -> None:
    store = QdrantServerStore.from_settings(settings_for(qdrant_server, protocol, qdrant_api_key="wrong"), dim=DIM)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"(?i)api key|401|unauthori[sz]ed|unauthenticated") as refused:
        await store.count()
    assert qdrant_server.url in str(refused.value)
    assert time.monotonic() - started < 10, "a refusal must not be waited out like an outage"
    assert store.reachable
    await store.close()


async def test_a_wrong_grpc_port_fails_at_once_and_names_the_port(qdrant_server: LocalQdrantServer) -> None:
    wrong = free_port()
    store = QdrantServerStore.from_settings(settings_for(qdrant_server, "grpc", qdrant_grpc_port=wrong), dim=DIM)
    with pytest.raises(StoreError, match=f"gRPC port {wrong}"):
        await store.count()
    await store.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_calls_made_while_the_server_is_away_wait_for_it_and_then_answer(
    own_server: LocalQdrantServer, protocol: str
) -> None:
    store = QdrantServerStore.from_settings(settings_for(own_server, protocol), dim=DIM)
    try:
        await store.upsert([ItemPoint(f"i{k}", axis(k), {"lang": "en", "available": True}) for k in range(4)])
        own_server.stop()
        query = asyncio.create_task(store.query_batch([VectorQuery(axis(2), limit=1)]))
        write = asyncio.create_task(store.upsert([ItemPoint("late", axis(5), {"lang": "de", "available": True})]))
        for _ in range(100):
            await asyncio.sleep(0.1)
            if not store.reachable:
                break
        assert not store.reachable
        await asyncio.sleep(2)
        assert not query.done() and not write.done(), "calls during an outage wait; they neither fail nor answer"
        await asyncio.to_thread(own_server.start)
        [hits] = await asyncio.wait_for(query, timeout=60)
        await asyncio.wait_for(write, timeout=60)
        assert [h.item_id for h in hits] == ["i2"]
        assert store.reachable
        assert await store.count() == 5
    finally:
        await store.close()


async def test_searches_read_straight_from_grpc_replies_answer_what_qdrant_clients_own_models_answer(
    qdrant_server: LocalQdrantServer,
) -> None:
    store = QdrantServerStore.from_settings(settings_for(qdrant_server, "grpc"), dim=DIM)
    assert store.grpc_queries  # the worker's default: gRPC, read without qdrant-client's models
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [
        {
            "lang": ("en", "de", "ja")[i % 3],
            "category": f"c{i % 4}",
            "available": i % 7 != 0,
            "ts": 1_700_000_000_000 + i,
            "rating": i / 4,
            "tags": ["x", str(i)],
            "extra": {"depth": {"n": i}, "none": None},
            "title": f"title {i} — ünïcode",
        }
        for i in range(40)
    ]
    await store.upsert([ItemPoint(f"item-{i}", vectors[i], payloads[i]) for i in range(40)])
    queries = [
        VectorQuery(vectors[0], limit=10),
        VectorQuery(vectors[1], limit=5, exclude_ids=("item-2", "item-5", "no-such-item")),
        VectorQuery(vectors[2], limit=8, filter=ItemFilter(langs=("en", "ja"), available_only=False)),
        VectorQuery(vectors[3], limit=6, filter=ItemFilter(categories=("c1",)), payload_fields=("lang", "ts")),
        VectorQuery(vectors[4], limit=40, payload_fields=()),
    ]
    try:
        for with_vectors in (False, True):
            direct = await store.query_batch(queries, with_vectors=with_vectors)
            store.grpc_queries = False
            via_models = await store.query_batch(queries, with_vectors=with_vectors)
            store.grpc_queries = True
            assert [len(hits) for hits in direct] == [10, 5, 8, 6, 34] == [len(hits) for hits in via_models]
            for ours, theirs in zip(direct, via_models, strict=True):
                assert [(h.item_id, h.payload) for h in ours] == [(h.item_id, h.payload) for h in theirs]
                np.testing.assert_allclose([h.score for h in ours], [h.score for h in theirs], rtol=1e-6)
                for a, b in zip(ours, theirs, strict=True):
                    assert (a.vector is None) == (b.vector is None) == (not with_vectors)
                    if with_vectors:
                        np.testing.assert_array_equal(a.vector, b.vector)
            first = direct[0][0]
            assert first.payload == {"item_id": first.item_id, **payloads[int(first.item_id.split("-")[1])]}
            assert direct[3][0].payload.keys() == {"item_id", "lang", "ts"}
    finally:
        await store.close()
