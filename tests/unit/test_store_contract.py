"""One contract, two engines: every VectorStore backend must pass these tests unchanged.

``edge`` runs real Qdrant Edge on a temp directory. The ``qdrant`` backend runs three ways: against
qdrant-client's local mode (``qdrant-local``, persisted under a temp directory so it can be reopened),
and against a real Qdrant server over gRPC and over HTTP (``qdrant-grpc``, ``qdrant-http``: the
session's server from ``tests/conftest.py``, on non-default ports and behind an API key; these runs
are marked ``integration``).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from xrec.config import Settings
from xrec.store import (
    EdgeStore,
    ItemFilter,
    ItemPoint,
    QdrantServerStore,
    StoreError,
    VectorQuery,
    VectorStore,
    open_store,
    point_id,
)
from xrec.store.local_server import LocalQdrantServer
from xrec.vectors import VectorSpace

# The remote client checks the server version from a background thread, so its warning about the
# unreachable test URL can surface during any later test of this module.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")

DIM = 8
ON_SERVER = pytest.mark.integration
BACKENDS = [
    "edge",
    "qdrant-local",
    pytest.param("qdrant-grpc", marks=ON_SERVER),
    pytest.param("qdrant-http", marks=ON_SERVER),
]
REPO_ROOT = Path(__file__).resolve().parents[2]

StoreFactory = Callable[..., VectorStore]


def unit(*components: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(components)] = components
    return v / np.linalg.norm(v)


def axis(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


def item(
    item_id: str, vector: np.ndarray, lang: str = "en", category: str = "news", available: bool = True
) -> ItemPoint:
    return ItemPoint(item_id, vector, {"lang": lang, "category": category, "available": available})


def ids(hits: list) -> list[str]:
    return [h.item_id for h in hits]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def server_settings(server: LocalQdrantServer, collection: str, *, grpc: bool, **overrides: object) -> Settings:
    """Settings of a worker that uses ``server``, as a user would write them."""
    fields: dict[str, object] = {
        "store_backend": "qdrant",
        "qdrant_url": server.url,
        "qdrant_grpc_port": server.grpc_port,
        "qdrant_prefer_grpc": grpc,
        "qdrant_api_key": server.api_key,
        "collection": collection,
        **overrides,
    }
    return Settings.from_env({}, **fields)


@pytest.fixture
async def make_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Opens stores of the backend under test on one location (a temp dir, or collections of this
    test's own on the server); closes any left open."""
    opened: list[VectorStore] = []
    server = request.getfixturevalue("qdrant_server") if backend in ("qdrant-grpc", "qdrant-http") else None
    prefix = f"t{uuid.uuid4().hex[:12]}"

    def factory(dim: int | None = None, name: str = "items") -> VectorStore:
        store: VectorStore
        if backend == "edge":
            store = EdgeStore(tmp_path / name, dim=dim)
        elif server is None:
            store = QdrantServerStore.local(name, path=tmp_path / "qdrant-local", dim=dim)
        else:
            settings = server_settings(server, f"{prefix}-{name}", grpc=backend == "qdrant-grpc")
            store = QdrantServerStore.from_settings(settings, dim=dim)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        with contextlib.suppress(StoreError):
            await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> VectorStore:
    s = make_store()
    await s.ensure_collection(DIM)
    return s


async def test_both_backends_satisfy_the_protocol(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)
    assert store.name in ("edge", "qdrant")
    assert store.reachable


async def test_ensure_collection_is_idempotent_and_keeps_the_data(store: VectorStore) -> None:
    await store.upsert([item("a", axis(0))])
    await store.ensure_collection(DIM)
    await store.ensure_collection(DIM)
    assert await store.count() == 1


async def test_ensure_collection_refuses_another_dimension(make_store: StoreFactory) -> None:
    first = make_store()
    await first.ensure_collection(DIM)
    await first.upsert([item("a", axis(0))])
    await first.close()
    reopened = make_store()
    with pytest.raises(StoreError, match="16"):
        await reopened.ensure_collection(16)


async def test_a_store_keeps_the_vector_space_it_was_claimed_for_and_refuses_another(
    make_store: StoreFactory,
) -> None:
    first = make_store()
    await first.ensure_collection(DIM)
    space = VectorSpace.of_encoder("model/a", "ckpt-a", "query: ", "passage: ", 256, DIM)
    await first.claim_space(space)
    await first.claim_space(space)  # the same space again: nothing to say
    await first.upsert([item("a", axis(0))])
    await first.close()
    reopened = make_store()
    await reopened.ensure_collection(DIM)
    await reopened.claim_space(space)  # a restart of the same model
    other = VectorSpace.of_encoder("model/b", "ckpt-b", "query: ", "passage: ", 256, DIM)
    with pytest.raises(StoreError, match=r"model/a.*model/b"):
        await reopened.claim_space(other)
    assert await reopened.count() == 1


async def test_an_unreadable_space_claim_of_an_edge_store_is_a_store_error(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "items", dim=DIM)
    await store.ensure_collection(DIM)
    (tmp_path / "items.space.json").write_text("{half")
    with pytest.raises(StoreError, match=r"items\.space\.json"):
        await store.claim_space(VectorSpace.precomputed(DIM))
    await store.close()


async def test_upsert_then_query_finds_the_nearest_item_first(store: VectorStore) -> None:
    await store.upsert([item("x", axis(0)), item("y", axis(1)), item("xy", unit(1, 1)), item("z", axis(2))])
    [hits] = await store.query_batch([VectorQuery(unit(1, 0.2), limit=3)])
    assert ids(hits) == ["x", "xy", "y"]
    assert hits[0].score == pytest.approx(float(unit(1, 0.2) @ axis(0)), abs=1e-5)
    assert hits[0].score > hits[1].score > hits[2].score
    assert hits[0].payload["item_id"] == "x"
    assert hits[0].vector is None


async def test_query_limit_bounds_the_number_of_hits(store: VectorStore) -> None:
    await store.upsert([item(f"i{k}", unit(1, k / 10)) for k in range(10)])
    [hits] = await store.query_batch([VectorQuery(axis(0), limit=4)])
    assert ids(hits) == ["i0", "i1", "i2", "i3"]


async def test_filter_by_language_keeps_only_those_languages(store: VectorStore) -> None:
    await store.upsert(
        [item("en1", unit(1, 0.1), "en"), item("de1", unit(1, 0.2), "de"), item("ja1", unit(1, 0.3), "ja")]
    )
    [hits] = await store.query_batch([VectorQuery(axis(0), limit=10, filter=ItemFilter(langs=("de", "ja")))])
    assert ids(hits) == ["de1", "ja1"]


async def test_filter_by_category_keeps_only_those_categories(store: VectorStore) -> None:
    await store.upsert([item("n", unit(1, 0.1), category="news"), item("s", unit(1, 0.2), category="sports")])
    [hits] = await store.query_batch([VectorQuery(axis(0), limit=10, filter=ItemFilter(categories=("sports",)))])
    assert ids(hits) == ["s"]


async def test_unavailable_items_are_hidden_unless_asked_for(store: VectorStore) -> None:
    await store.upsert([item("on", unit(1, 0.2)), item("off", unit(1, 0.1), available=False)])
    [default] = await store.query_batch([VectorQuery(axis(0), limit=10)])
    [everything] = await store.query_batch([VectorQuery(axis(0), limit=10, filter=ItemFilter(available_only=False))])
    assert ids(default) == ["on"]
    assert ids(everything) == ["off", "on"]


async def test_an_empty_language_list_matches_nothing(store: VectorStore) -> None:
    await store.upsert([item("a", axis(0))])
    [hits] = await store.query_batch([VectorQuery(axis(0), limit=5, filter=ItemFilter(langs=()))])
    assert hits == []


async def test_excluded_ids_never_come_back(store: VectorStore) -> None:
    await store.upsert([item(f"i{k}", unit(1, k / 10)) for k in range(6)])
    [hits] = await store.query_batch([VectorQuery(axis(0), limit=3, exclude_ids={"i0", "i2", "never-stored"})])
    assert ids(hits) == ["i1", "i3", "i4"]


async def test_batched_queries_return_results_per_query_in_order(store: VectorStore) -> None:
    await store.upsert([item("x", axis(0), "en"), item("y", axis(1), "de"), item("z", axis(2), "ja")])
    queries = [
        VectorQuery(axis(2), limit=1),
        VectorQuery(axis(0), limit=1),
        VectorQuery(axis(0), limit=0),
        VectorQuery(axis(1), limit=2, filter=ItemFilter(langs=("en",))),
        VectorQuery(axis(1), limit=1),
    ]
    results = await store.query_batch(queries)
    assert [ids(r) for r in results] == [["z"], ["x"], [], ["x"], ["y"]]


async def test_many_queries_and_ids_at_once_get_every_answer_in_order(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker behind a backlog sends thousands of queries in one batch; the server store splits them
    into requests (here of 3 queries and of 2 ids) and every answer must come back, in order."""
    import xrec.store.qdrant as qdrant_store

    monkeypatch.setattr(qdrant_store, "QUERY_CHUNK", 3)
    monkeypatch.setattr(qdrant_store, "FETCH_CHUNK", 2)
    await store.upsert([item(f"i{k}", axis(k)) for k in range(DIM)])
    results = await store.query_batch([VectorQuery(axis(k % DIM), limit=1) for k in range(20)])
    assert [ids(r) for r in results] == [[f"i{k % DIM}"] for k in range(20)]
    got = await store.fetch([f"i{k}" for k in reversed(range(DIM))])
    assert sorted(got) == [f"i{k}" for k in range(DIM)]


async def test_a_query_naming_payload_fields_gets_only_those_and_the_item_id(store: VectorStore) -> None:
    payload = {"lang": "fr", "category": "film", "available": True, "ts": 7, "title": "un long titre"}
    await store.upsert([ItemPoint("a", axis(0), payload)])
    [[narrow], [whole]] = await store.query_batch(
        [VectorQuery(axis(0), limit=1, payload_fields=("lang", "ts")), VectorQuery(axis(0), limit=1)]
    )
    assert narrow.item_id == "a"
    assert narrow.payload == {"item_id": "a", "lang": "fr", "ts": 7}
    assert whole.payload == {**payload, "item_id": "a"}


async def test_query_returns_vectors_when_asked(store: VectorStore) -> None:
    await store.upsert([item("xy", np.array([3, 4, 0, 0, 0, 0, 0, 0], dtype=np.float32))])
    [[hit]] = await store.query_batch([VectorQuery(axis(0), limit=1)], with_vectors=True)
    assert hit.vector is not None
    assert hit.vector.dtype == np.float32
    np.testing.assert_allclose(hit.vector, unit(3, 4), atol=1e-6)


async def test_fetch_returns_normalized_vectors_and_payloads_of_existing_ids(store: VectorStore) -> None:
    raw = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)
    await store.upsert([ItemPoint("a", raw, {"lang": "fr", "category": "film", "available": True, "tags": ["x", "y"]})])
    got = await store.fetch(["a", "missing", "a"])
    assert list(got) == ["a"]
    stored = got["a"]
    assert stored.item_id == "a"
    np.testing.assert_allclose(stored.vector, raw / np.linalg.norm(raw), atol=1e-6)
    assert stored.payload == {"lang": "fr", "category": "film", "available": True, "tags": ["x", "y"], "item_id": "a"}


async def test_fetch_with_payload_fields_returns_only_those_fields_and_the_same_vectors(store: VectorStore) -> None:
    raw = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)
    await store.upsert([ItemPoint("a", raw, {"lang": "fr", "category": "film", "available": True, "tags": ["x"]})])
    got = await store.fetch(["a", "missing"], payload_fields=("lang",))
    assert list(got) == ["a"]
    assert got["a"].payload == {"lang": "fr", "item_id": "a"}
    np.testing.assert_allclose(got["a"].vector, raw / np.linalg.norm(raw), atol=1e-6)


async def test_delete_removes_items_and_ignores_unknown_ids(store: VectorStore) -> None:
    await store.upsert([item("a", axis(0)), item("b", axis(1))])
    await store.delete(["a", "not-there"])
    assert await store.count() == 1
    assert await store.fetch(["a"]) == {}
    [hits] = await store.query_batch([VectorQuery(axis(0), limit=5)])
    assert ids(hits) == ["b"]


async def test_upsert_of_an_existing_id_replaces_vector_and_payload(store: VectorStore) -> None:
    await store.upsert([ItemPoint("a", axis(0), {"lang": "en", "available": True, "old": 1})])
    await store.upsert([ItemPoint("a", axis(1), {"lang": "de", "available": False})])
    assert await store.count() == 1
    got = (await store.fetch(["a"]))["a"]
    assert got.payload == {"lang": "de", "available": False, "item_id": "a"}
    np.testing.assert_allclose(got.vector, axis(1), atol=1e-6)


@pytest.mark.parametrize("odd_id", ["N55528", "商品/42", "ünïcødé 🙂", "a b\tc\nd", "'; DROP TABLE", "", "x" * 500])
async def test_item_ids_with_odd_characters_round_trip(store: VectorStore, odd_id: str) -> None:
    await store.upsert([item(odd_id, axis(3))])
    assert list(await store.fetch([odd_id])) == [odd_id]
    [hits] = await store.query_batch([VectorQuery(axis(3), limit=1)])
    assert ids(hits) == [odd_id]
    [hits] = await store.query_batch([VectorQuery(axis(3), limit=1, exclude_ids=[odd_id])])
    assert hits == []


async def test_point_ids_are_stable_uuids_of_the_item_id() -> None:
    assert point_id("N55528") == point_id("N55528")
    assert point_id("N55528") != point_id("N55529")
    assert len(point_id("商品")) == 36


async def test_empty_inputs_are_no_ops(store: VectorStore) -> None:
    await store.upsert([])
    await store.delete([])
    assert await store.fetch([]) == {}
    assert await store.query_batch([]) == []
    assert await store.count() == 0


async def test_bad_vectors_are_refused_before_anything_is_written(store: VectorStore) -> None:
    nan = axis(0).copy()
    nan[1] = np.nan
    for bad in (np.zeros(DIM, dtype=np.float32), nan, np.ones(DIM + 1, dtype=np.float32)):
        with pytest.raises(StoreError):
            await store.upsert([item("ok", axis(0)), item("bad", bad)])
    assert await store.count() == 0
    with pytest.raises(StoreError):
        await store.query_batch([VectorQuery(np.ones(DIM + 2, dtype=np.float32), limit=1)])


async def test_a_store_opened_with_a_dim_creates_its_collection_on_first_use(make_store: StoreFactory) -> None:
    s = make_store(dim=DIM)
    await s.upsert([item("a", axis(0))])
    assert await s.count() == 1


async def test_a_store_opened_without_a_dim_needs_an_existing_collection(make_store: StoreFactory) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await make_store().count()


async def test_reopening_after_close_finds_the_data(make_store: StoreFactory) -> None:
    first = make_store()
    await first.ensure_collection(DIM)
    await first.upsert([item("a", axis(0), "ja"), item("b", axis(1))])
    await first.delete(["b"])
    await first.close()
    again = make_store()  # no dim: attaches to what is on disk
    assert await again.count() == 1
    got = await again.fetch(["a"])
    assert got["a"].payload["lang"] == "ja"
    [hits] = await again.query_batch([VectorQuery(axis(0), limit=5)])
    assert ids(hits) == ["a"]


async def test_open_store_builds_the_configured_backend(tmp_path: Path) -> None:
    edge = open_store(Settings.from_env({}, store_backend="edge", store_path=str(tmp_path), collection="c"), dim=DIM)
    assert isinstance(edge, EdgeStore)
    assert edge.path == tmp_path / "c"
    await edge.upsert([item("a", axis(0))])
    assert await edge.count() == 1
    await edge.close()
    server = open_store(Settings.from_env({}, store_backend="qdrant", qdrant_url="http://127.0.0.1:1"), dim=DIM)
    assert isinstance(server, QdrantServerStore)
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1"):
        await server.count()
    await server.close()


# --- edge only ---------------------------------------------------------------------------------

_CHILD_WRITES = textwrap.dedent(
    """
    import asyncio, os, sys
    import numpy as np
    from xrec.store import EdgeStore, ItemPoint

    async def main(path, close):
        store = EdgeStore(path, dim=8)
        vectors = np.eye(8, dtype=np.float32)
        await store.upsert([ItemPoint(f"item-{k}", vectors[k], {"lang": "de", "available": True}) for k in range(8)])
        await store.delete(["item-7"])
        if close:
            await store.close()
        else:
            os._exit(0)  # die without flush or close: only the write-ahead log holds the writes

    asyncio.run(main(sys.argv[1], sys.argv[2] == "close"))
    """
)


@pytest.mark.parametrize("shutdown", ["close", "crash"])
async def test_edge_data_survives_a_process_restart(tmp_path: Path, shutdown: str) -> None:
    path = tmp_path / "items"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD_WRITES, str(path), shutdown],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    store = EdgeStore(path)
    try:
        await store.ensure_collection(8)
        assert await store.count() == 7
        [hits] = await store.query_batch([VectorQuery(axis(3), limit=1)])
        assert ids(hits) == ["item-3"]
        assert hits[0].payload == {"lang": "de", "available": True, "item_id": "item-3"}
    finally:
        await store.close()


async def test_edge_optimize_keeps_answers_and_reports_the_index(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "items", dim=DIM, index_threshold=10)
    try:
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((300, DIM)).astype(np.float32)
        await store.upsert([item(f"i{k}", v) for k, v in enumerate(vectors)])
        assert (await store.index_state()).search == "exact"
        [before] = await store.query_batch([VectorQuery(vectors[5], limit=5)])
        ticks = 0
        optimizing = asyncio.create_task(store.optimize())
        while not optimizing.done():  # the event loop keeps running while the child process optimizes
            ticks += 1
            await asyncio.sleep(0.005)
        assert await optimizing is True
        assert ticks >= 3
        state = await store.index_state()
        assert state.points == 300
        assert state.indexed_vectors == 300
        assert state.search == "hnsw"
        [after] = await store.query_batch([VectorQuery(vectors[5], limit=5)])
        assert ids(after)[0] == "i5"
        assert set(ids(after)) == set(ids(before))
        await store.upsert([item("late", vectors[5])])  # writes after an optimize land and are found
        [hits] = await store.query_batch([VectorQuery(vectors[5], limit=2)])
        assert set(ids(hits)) == {"i5", "late"}
    finally:
        await store.close()


async def test_edge_reports_a_closed_store_plainly(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "items", dim=DIM)
    await store.count()
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="after close"):
        await store.count()


def test_edge_payload_indexes_exist_on_disk(tmp_path: Path) -> None:
    import qdrant_edge

    async def create() -> None:
        store = EdgeStore(tmp_path / "items", dim=DIM)
        await store.ensure_collection(DIM)
        await store.close()

    asyncio.run(create())
    shard = qdrant_edge.EdgeShard.load(str(tmp_path / "items"))
    try:
        schema = shard.info().payload_schema
        assert {name: str(info.data_type) for name, info in schema.items()} == {
            "lang": "PayloadSchemaType.Keyword",
            "category": "PayloadSchemaType.Keyword",
            "available": "PayloadSchemaType.Bool",
        }
    finally:
        shard.close()
