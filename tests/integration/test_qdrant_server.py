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
from xrec.store import ItemPoint, StoreError, VectorQuery
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
