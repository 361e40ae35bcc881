"""The batch engine against real vector stores: items in, events in, one list per user out.

Items carry precomputed vectors (hand-made topic directions), so no encoder is needed and every
expectation about which items come back is exact. Both backends run: Qdrant Edge in a temp dir
through ``open_store``, and qdrant-client's local mode. Time is the engine's own clock
(``clock_ms``), set by the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xrec.config import Settings
from xrec.events import EventType, Interaction, ItemDelete, ItemUpsert, RecommendationList
from xrec.pipeline import STRATEGY_INTERESTS, STRATEGY_POPULAR, Recommender
from xrec.profile import UserProfile, event_fingerprint
from xrec.store import StoreError, VectorStore, open_store

pytestmark = pytest.mark.unit

DIM = 32
T0 = 1_700_000_000_000
TOPICS = 4
LANGS = ("en", "de", "ja")
PER_LANG = 3  # items per topic and language: 9 per topic, 36 in all


@dataclass
class Clock:
    now: float = T0 + 1_000.0

    def __call__(self) -> float:
        return self.now


def item_vector(topic: int, n: int) -> np.ndarray:
    """Mostly ``topic``'s direction, with a little of a private direction so items are distinct."""
    v = np.zeros(DIM, np.float32)
    v[topic] = 1.0
    v[TOPICS + n] = 0.3
    return v / np.linalg.norm(v)


def catalog() -> list[ItemUpsert]:
    items = []
    for t in range(TOPICS):
        for li, lang in enumerate(LANGS):
            for j in range(PER_LANG):
                n = li * PER_LANG + j
                items.append(
                    ItemUpsert(
                        item_id=f"t{t}-{lang}-{j}",
                        title=f"topic {t} in {lang} #{j}",
                        lang=lang,
                        category=f"topic{t}",
                        ts=T0,
                        vector=item_vector(t, n),
                    )
                )
    return items


def topic_of(item_id: str) -> int:
    return int(item_id.split("-")[0][1:])


_seq = iter(range(1_000_000))


def event(
    user: str, item: str, kind: EventType = "click", ts: int = T0, event_id: str | None = None, lang: str | None = None
) -> Interaction:
    return Interaction(event_id=event_id or f"e{next(_seq)}", user_id=user, item_id=item, type=kind, ts=ts, lang=lang)


@pytest.fixture(params=["edge", "qdrant-local"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    if request.param == "edge":
        s = open_store(Settings(store_backend="edge", store_path=str(tmp_path / "store")), dim=DIM)
    else:
        from xrec.store.qdrant import QdrantServerStore

        s = QdrantServerStore.local("xrec_test_items", dim=DIM)
    await s.ensure_collection(DIM)
    yield s
    await s.close()


def make_settings() -> Settings:
    return Settings(list_length=5, unknown_item_wait_s=5.0, mmr_lambda=1.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def engine(store: VectorStore, clock: Clock) -> Recommender:
    rec = Recommender(make_settings(), store, encoder=None, dim=DIM, clock_ms=clock)
    await rec.start()
    result = await rec.handle_items(catalog())
    assert (result.upserted, result.deleted, result.rejected) == (len(catalog()), 0, [])
    return rec


def list_ids(lst: RecommendationList) -> list[str]:
    return [i.item_id for i in lst.items]


# --- items -----------------------------------------------------------------------------------------


async def test_upserted_items_become_candidates_of_the_matching_interest_across_languages(
    engine: Recommender, store: VectorStore
) -> None:
    assert await store.count() == TOPICS * len(LANGS) * PER_LANG
    engine.rank_params = replace(engine.rank_params, list_length=PER_LANG * len(LANGS) - 1)
    profiles: dict[bytes, bytes] = {}
    result = await engine.handle_events([event("u1", "t2-de-0")], profiles)
    [lst] = result.lists
    assert lst.strategy == STRATEGY_INTERESTS
    assert len(lst.items) == PER_LANG * len(LANGS) - 1  # every other item of topic 2, and only those
    assert {topic_of(i) for i in list_ids(lst)} == {2}
    assert {i.lang for i in lst.items} == {"en", "de", "ja"}  # meaning crosses languages
    assert all(i.because == "t2-de-0" for i in lst.items)
    assert "t2-de-0" not in list_ids(lst)


async def test_deleted_items_are_no_longer_recommended(engine: Recommender, store: VectorStore) -> None:
    profiles: dict[bytes, bytes] = {}
    first = (await engine.handle_events([event("u1", "t1-en-0")], profiles)).lists[0]
    gone, next_click = list_ids(first)[:3], list_ids(first)[3]
    result = await engine.handle_items([ItemDelete(item_id=i) for i in gone])
    assert result.deleted == 3
    assert await store.count() == TOPICS * len(LANGS) * PER_LANG - 3
    second = (await engine.handle_events([event("u1", next_click)], profiles)).lists[0]
    assert not set(gone) & set(list_ids(second))
    assert [topic_of(i) for i in list_ids(second)][:4] == [1, 1, 1, 1]  # 9 − 3 deleted − 2 seen


async def test_the_last_record_of_an_item_in_a_batch_wins(engine: Recommender, store: VectorStore) -> None:
    new = ItemUpsert(item_id="fresh", lang="en", vector=item_vector(3, 0))
    result = await engine.handle_items([new, ItemDelete(item_id="fresh"), ItemDelete(item_id="t0-en-0"), catalog()[0]])
    assert (result.upserted, result.deleted) == (1, 1)
    assert set(await store.fetch(["fresh", "t0-en-0"])) == {"t0-en-0"}


async def test_an_item_vector_of_the_wrong_size_or_without_vector_is_rejected(engine: Recommender) -> None:
    result = await engine.handle_items(
        [
            ItemUpsert(item_id="short", lang="en", vector=np.ones(DIM - 1, np.float32) / np.sqrt(DIM - 1)),
            ItemUpsert(item_id="text-only", title="needs an encoder"),
            ItemUpsert(item_id="fine", lang="en", vector=item_vector(0, 0)),
        ]
    )
    assert result.upserted == 1
    assert {r.record.item_id: r.error.reason for r in result.rejected} == {
        "short": "bad_vector",
        "text-only": "bad_vector",
    }


# --- events ----------------------------------------------------------------------------------------


async def test_many_events_of_one_user_in_a_batch_yield_one_list_for_that_user(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    batch = [
        event("u1", "t0-en-0", event_id="a"),
        event("u2", "t3-ja-0", event_id="b"),
        event("u1", "t0-de-1", ts=T0 + 10, event_id="c"),
        event("u1", "t1-ja-2", ts=T0 + 20, event_id="d"),
    ]
    result = await engine.handle_events(batch, profiles)
    assert len(result.processed) == 4
    assert sorted(lst.user_id for lst in result.lists) == ["u1", "u2"]
    by_user = {lst.user_id: lst for lst in result.lists}
    assert by_user["u1"].trigger_event_id == "d"  # the latest event of the user
    assert by_user["u2"].trigger_event_id == "b"
    u1 = UserProfile.from_bytes(profiles[b"u1"])
    assert u1.events == 3 and len(u1.weights) == 2  # topic 0 twice, topic 1 once
    assert {topic_of(i) for i in list_ids(by_user["u1"])} <= {0, 1}


class FailingSearches:
    """A real store whose next ``failures`` searches raise a StoreError (everything else passes through)."""

    def __init__(self, inner: VectorStore) -> None:
        self.inner = inner
        self.failures = 0
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _search(self) -> None:
        if self.failures:
            self.failures -= 1
            self.failed += 1
            raise StoreError("query failed: DEADLINE_EXCEEDED (a stand-in for the server's error)")

    async def query_columns(self, queries: Any) -> Any:
        self._search()
        return await self.inner.query_columns(queries)

    async def query_batch(self, queries: Any, with_vectors: bool = False) -> Any:
        self._search()
        return await self.inner.query_batch(queries, with_vectors=with_vectors)


async def test_a_store_search_that_fails_once_is_tried_again_and_the_lists_are_built(
    store: VectorStore, clock: Clock
) -> None:
    flaky = FailingSearches(store)
    rec = Recommender(make_settings(), flaky, encoder=None, dim=DIM, clock_ms=clock)  # type: ignore[arg-type]
    await rec.start()
    await rec.handle_items(catalog())
    flaky.failures = 1
    result = await rec.handle_events([event("u1", "t0-en-0"), event("u2", "t1-de-0")], {})
    assert flaky.failed == 1
    assert sorted(lst.user_id for lst in result.lists) == ["u1", "u2"]
    assert all(lst.strategy == STRATEGY_INTERESTS and lst.items for lst in result.lists)

    flaky.failures = 2  # failing again: the error reaches the caller, which logs the batch's lists as lost
    with pytest.raises(StoreError):
        await rec.handle_events([event("u3", "t2-ja-0")], {})


async def test_duplicate_events_are_counted_leave_the_profile_unchanged_and_a_redelivery_is_answered_again(
    engine: Recommender,
) -> None:
    profiles: dict[bytes, bytes] = {}
    first = await engine.handle_events(
        [event("u1", "t0-en-0", event_id="x"), event("u1", "t0-en-0", event_id="x")], profiles
    )
    assert (len(first.processed), len(first.duplicates), len(first.lists)) == (1, 1, 1)
    stored = profiles[b"u1"]
    assert UserProfile.from_bytes(stored).events == 1
    # A redelivery (the worker that applied it may have died before sending its list) is answered again.
    again = await engine.handle_events([event("u1", "t0-en-0", event_id="x")], profiles)
    assert (len(again.processed), len(again.duplicates)) == (0, 1)
    assert [lst.trigger_event_id for lst in again.lists] == ["x"]
    assert list_ids(again.lists[0]) == list_ids(first.lists[0])
    assert profiles[b"u1"] == stored
    assert event_fingerprint("x") in UserProfile.from_bytes(stored).event_ids


async def test_an_event_for_an_unknown_item_waits_for_it_and_is_processed_when_it_arrives(
    engine: Recommender, clock: Clock
) -> None:
    profiles: dict[bytes, bytes] = {}
    first = await engine.handle_events([event("u1", "late-item", event_id="w")], profiles)
    assert (first.waiting, first.processed, first.rejected, first.lists) == (1, [], [], [])
    assert profiles == {}
    await engine.handle_items([ItemUpsert(item_id="late-item", lang="de", vector=item_vector(2, 1))])
    clock.now += 2_000
    second = await engine.handle_events([], profiles)
    assert [e.event_id for e in second.processed] == ["w"]
    assert second.waiting == 0
    assert [lst.user_id for lst in second.lists] == ["u1"]


async def test_an_event_for_an_item_that_never_arrives_is_rejected_after_the_wait(
    engine: Recommender, clock: Clock
) -> None:
    profiles: dict[bytes, bytes] = {}
    await engine.handle_events([event("u1", "ghost", event_id="g")], profiles)
    clock.now += 4_000  # less than unknown_item_wait_s
    still = await engine.handle_events([event("u1", "t0-en-0")], profiles)
    assert (still.waiting, still.rejected) == (1, [])
    assert len(still.processed) == 1
    clock.now += 1_000  # now five seconds
    done = await engine.handle_events([], profiles)
    assert done.waiting == 0
    [rejected] = done.rejected
    assert rejected.record.event_id == "g"
    assert rejected.error.reason == "unknown_item"
    assert "ghost" in rejected.error.message
    assert len(engine.waiting) == 0


async def test_a_waiting_event_stays_waiting_while_the_next_batch_awaits_the_store(
    engine: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offset ledger reads ``waiting`` while a batch is in the engine: it must never see a half-built
    set, or it would ack a waiting event's message and a crash would lose the event."""
    profiles: dict[bytes, bytes] = {}
    await engine.handle_events([event("u1", "late", event_id="w")], profiles)
    [waiting] = engine.waiting.events()
    seen: list[bool] = []
    fetch = engine.store.fetch

    async def watched_fetch(item_ids: list[str], payload_fields: tuple[str, ...] | None = None) -> dict:
        seen.append(waiting in engine.waiting)
        return await fetch(item_ids, payload_fields)

    monkeypatch.setattr(engine.store, "fetch", watched_fetch)
    await engine.handle_events([event("u2", "t0-en-0")], profiles)
    assert seen and all(seen)
    assert waiting in engine.waiting


async def test_a_user_with_only_a_dislike_gets_a_popularity_list(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    clicks = [event(f"fan{i}", "t3-de-0") for i in range(3)] + [event(f"fan{i}", "t3-de-1") for i in range(2)]
    clicks += [event("fan9", "t0-en-0")]
    await engine.handle_events(clicks, profiles)
    result = await engine.handle_events([event("newbie", "t3-de-0", kind="dislike", lang="de")], profiles)
    [lst] = result.lists
    assert lst.strategy == STRATEGY_POPULAR
    assert list_ids(lst) == ["t3-de-1", "t0-en-0"]  # popular in German first; the disliked item never
    assert not UserProfile.from_bytes(profiles[b"newbie"]).has_interests


async def test_lists_never_contain_items_the_user_has_seen(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    seen: set[str] = set()
    item = "t0-en-0"
    for step in range(6):
        result = await engine.handle_events([event("u1", item, ts=T0 + step)], profiles)
        seen.add(item)
        [lst] = result.lists
        assert len(lst.items) == 5
        assert not seen & set(list_ids(lst))
        item = list_ids(lst)[0]  # the user reads the top recommendation next


async def test_a_dislike_pushes_similar_items_down(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    await engine.handle_events([event("u1", "t0-en-0"), event("u1", "t1-en-0")], profiles)
    before = (await engine.handle_events([event("u1", "t0-en-1", ts=T0 + 1)], profiles)).lists[0]
    assert topic_of(list_ids(before)[0]) == 0
    after = (await engine.handle_events([event("u1", "t0-de-0", kind="dislike", ts=T0 + 2)], profiles)).lists[0]
    assert topic_of(list_ids(after)[0]) == 1
    assert "t0-de-0" not in list_ids(after)


async def test_forget_removes_the_profile_and_the_next_event_starts_from_empty(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    await engine.handle_events([event("u1", "t0-en-0", event_id="once"), event("u1", "t1-en-0")], profiles)
    assert engine.forget("u1", profiles) is True
    assert b"u1" not in profiles
    assert engine.forget("u1", profiles) is False
    result = await engine.handle_events([event("u1", "t2-en-0"), event("u1", "t0-en-0", event_id="once")], profiles)
    assert len(result.duplicates) == 0  # the dedup state went with the profile
    p = UserProfile.from_bytes(profiles[b"u1"])
    assert p.events == 2 and list(p.seen) == ["t2-en-0", "t0-en-0"]


async def test_forget_drops_the_users_events_still_waiting_for_their_item(engine: Recommender, clock: Clock) -> None:
    profiles: dict[bytes, bytes] = {}
    await engine.handle_events([event("u1", "late"), event("u2", "late")], profiles)
    engine.forget("u1", profiles)
    await engine.handle_items([ItemUpsert(item_id="late", lang="en", vector=item_vector(0, 0))])
    result = await engine.handle_events([], profiles)
    assert [e.user_id for e in result.processed] == ["u2"]
    assert b"u1" not in profiles


async def test_the_profile_table_holds_compact_bytes(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    await engine.handle_events([event("u1", "t0-en-0"), event("u1", "t1-de-0")], profiles)
    [(key, value)] = profiles.items()
    assert key == b"u1"
    assert isinstance(value, bytes)
    p = UserProfile.from_bytes(value)
    assert p.dim == DIM and len(p.weights) == 2
    assert len(value) < 2 * 4 * DIM + 600  # two float32 centroids and a small header


async def test_deleted_and_unavailable_items_leave_the_popularity_list(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    await engine.handle_events([event("fan", i) for i in ("t3-de-0", "t3-de-1", "t3-de-2")], profiles)
    sold_out = ItemUpsert(item_id="t3-de-2", lang="de", available=False, vector=item_vector(3, 5))
    await engine.handle_items([ItemDelete(item_id="t3-de-0"), sold_out])
    [lst] = (await engine.handle_events([event("newbie", "t0-en-0", kind="dislike")], profiles)).lists
    assert list_ids(lst) == ["t3-de-1"]


def test_the_recommender_needs_an_encoder_or_a_dimension(tmp_path: Path) -> None:
    s = Settings(store_path=str(tmp_path))
    with pytest.raises(ValueError, match="encoder or an explicit vector dimension"):
        Recommender(s, open_store(s), encoder=None)
