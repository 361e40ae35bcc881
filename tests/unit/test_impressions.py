"""Impression events: the wire contract, refusals of hostile ones, and what they change in the engine
(the user's fatigue with items passed over, the items' real-time click-through rates)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.unit.test_pipeline import DIM, T0, Clock, catalog, event
from xrec.config import Settings
from xrec.events import REASONS, Impression, Interaction, Limits, RecordError, parse_event
from xrec.exposure import ClickThrough
from xrec.pipeline import Recommender
from xrec.profile import ProfileParams, UserProfile
from xrec.ranking import Candidates
from xrec.store import open_store

pytestmark = pytest.mark.unit

LIMITS = Limits(max_impression_items=5)


def impression(**fields: Any) -> bytes:
    base: dict[str, Any] = {"user_id": "u1", "type": "impression", "item_ids": ["a", "b", "c"], "ts": T0}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


def shown(user: str, items: list[str], ts: int = T0, event_id: str | None = None) -> Impression:
    return Impression(event_id or f"{user}:{'+'.join(items)}:{ts}", user, tuple(items), ts)


# --- the wire contract ---------------------------------------------------------------------------


def test_an_impression_parses_with_its_items_positions_and_list_id_and_round_trips() -> None:
    raw = impression(event_id="i1", positions=[0, 1, 4], list_id="9f2c")
    got = parse_event(raw, LIMITS)
    assert got == Impression("i1", "u1", ("a", "b", "c"), T0, (0, 1, 4), "9f2c")
    assert got.type == "impression"
    assert parse_event(got.to_json(), LIMITS) == got


def test_an_impression_without_event_id_gets_one_from_its_content() -> None:
    first = parse_event(impression(), LIMITS)
    assert first.event_id == parse_event(impression(), LIMITS).event_id
    assert first.event_id != parse_event(impression(item_ids=["a", "b"]), LIMITS).event_id
    assert first.event_id != parse_event(impression(ts=T0 + 1), LIMITS).event_id


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"item_ids": ["i"] * 2}, "invalid_value"),
        ({"item_ids": [f"i{n}" for n in range(6)]}, "too_many_items"),
        ({"item_ids": [f"i{n}" for n in range(100_000)]}, "too_many_items"),
        ({"item_ids": []}, "wrong_type"),
        ({"item_ids": "a,b"}, "wrong_type"),
        ({"item_ids": ["a", {"id": "b"}]}, "wrong_type"),
        ({"item_ids": ["a", ""]}, "invalid_value"),
        ({"item_ids": ["a", "b\x00"]}, "invalid_value"),
        ({"item_ids": None}, "missing_field"),
        ({"positions": [0, 1]}, "wrong_type"),
        ({"positions": [0, 1, -1]}, "invalid_value"),
        ({"positions": [0, 1, 1]}, "invalid_value"),
        ({"positions": [0, 1, True]}, "invalid_value"),
        ({"positions": [0, 1, 10**9]}, "invalid_value"),
        ({"list_id": 3.5}, "wrong_type"),
        ({"ts": None}, "missing_field"),
        ({"ts": 1_700_000_000}, "bad_timestamp"),
        ({"user_id": None}, "missing_field"),
    ],
)
def test_hostile_impressions_are_refused_with_their_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_event(impression(**fields), LIMITS)
    assert info.value.reason == reason
    assert reason in REASONS


def test_the_impression_size_limit_follows_the_settings() -> None:
    assert Limits.from_settings(Settings(max_impression_items=7)).max_impression_items == 7


def test_an_interaction_is_still_an_interaction() -> None:
    raw = orjson.dumps({"user_id": "u1", "item_id": "a", "type": "click", "ts": T0})
    assert isinstance(parse_event(raw, LIMITS), Interaction)


# --- click-through rates -------------------------------------------------------------------------


def test_without_impressions_every_lift_is_zero_even_after_clicks() -> None:
    ctr = ClickThrough(half_life_hours=24, prior_impressions=20)
    ctr.clicked("a", "en", T0)
    assert ctr.lift(["a", "b"], ["en", "en"]).tolist() == [0.0, 0.0]


def test_an_item_clicked_more_often_than_its_language_lifts_and_one_passed_over_sinks() -> None:
    ctr = ClickThrough(half_life_hours=24, prior_impressions=20)
    for n in range(200):
        ctr.shown(["taken", "passed", "other"], ["en"] * 3, T0 + n)
        ctr.clicked("taken", "en", T0 + n)
        if n % 10 == 0:
            ctr.clicked("other", "en", T0 + n)
    taken, passed, other, unseen = ctr.lift(["taken", "passed", "other", "unseen"], ["en"] * 4)
    assert taken > other > passed
    assert unseen == 0.0


def test_a_rate_from_few_impressions_is_shrunk_toward_its_language() -> None:
    ctr = ClickThrough(half_life_hours=24, prior_impressions=20)
    for n in range(1000):
        ctr.shown([f"i{n}"], ["en"], T0)
        if n % 10 == 0:
            ctr.clicked(f"i{n}", "en", T0)
    for _ in range(3):
        ctr.shown(["lucky"], ["en"], T0)
    ctr.clicked("lucky", "en", T0)  # 1 of 3: a raw rate of 0.33 against the language's 0.10
    [lift] = ctr.lift(["lucky"], ["en"])
    assert 0 < lift < math.log(0.15 / 0.1)


def test_old_impressions_and_clicks_fade_with_the_half_life() -> None:
    ctr = ClickThrough(half_life_hours=1, prior_impressions=5)
    for _ in range(50):
        ctr.shown(["old", "new"], ["en", "en"], T0)
        ctr.clicked("old", "en", T0)
    later = T0 + 20 * 3_600_000
    for _ in range(50):
        ctr.shown(["old", "new"], ["en", "en"], later)
        ctr.clicked("new", "en", later)
    old, new = ctr.lift(["old", "new"], ["en", "en"])
    assert new > 0 > old


# --- the user's fatigue --------------------------------------------------------------------------


def test_a_profile_counts_items_shown_and_not_taken_and_keeps_them_through_bytes() -> None:
    params = ProfileParams()
    profile = UserProfile(dim=4)
    profile.was_shown(("a", "b"), params)
    profile.was_shown(("a",), params)
    assert profile.times_shown(["a", "b", "c"]).tolist() == [2, 1, 0]
    profile.observe(np.eye(4, dtype=np.float32)[0], 1.0, T0, "a", "en", params)
    assert profile.times_shown(["a", "b"]).tolist() == [0, 1]  # taken: no longer passed over
    profile.was_shown(("a",), params)
    assert profile.times_shown(["a"]).tolist() == [0]  # already taken: showing it again is no fatigue
    assert UserProfile.from_bytes(profile.to_bytes()).shown == profile.shown


# --- through the engine --------------------------------------------------------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> Recommender:
    settings = Settings(
        store_backend="edge", store_path=str(tmp_path / "store"), list_length=5, unknown_item_wait_s=5.0
    )
    rec = Recommender(settings, open_store(settings, dim=DIM), encoder=None, dim=DIM, clock_ms=Clock())
    await rec.start()
    await rec.handle_items(catalog())
    return rec


async def test_an_impression_updates_the_profile_and_publishes_no_list(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    result = await engine.handle_events([shown("u1", ["t0-en-0", "t1-de-1"])], profiles)
    assert [e.type for e in result.processed] == ["impression"]
    assert result.lists == [] and result.rejected == []
    assert engine.load_profile(profiles, "u1").times_shown(["t0-en-0", "t1-de-1"]).tolist() == [1, 1]


def candidates(engine: Recommender, item_ids: list[str]) -> Candidates:
    metas = [engine.cache.get(i) for i in item_ids]
    assert all(metas)
    return Candidates(
        item_ids,
        np.stack([m.vector for m in metas if m]),
        [m.lang for m in metas if m],
        np.zeros(len(item_ids), np.int64),
    )


async def test_an_item_shown_again_and_again_and_never_taken_falls_in_the_users_list(engine: Recommender) -> None:
    engine.rank_params = replace(engine.rank_params, ctr_weight=0.0)  # fatigue alone (impressions feed both)
    profiles: dict[bytes, bytes] = {}
    first = (await engine.handle_events([event("u1", "t2-de-0")], profiles)).lists[0]
    top, second = first.items[0].item_id, first.items[1].item_id
    await engine.handle_events([shown("u1", [top], ts=T0 + n) for n in range(8)], profiles)
    profile = engine.load_profile(profiles, "u1")
    before, after = first.items[0].score, (await engine.relevance(profile, candidates(engine, [top]), T0))[0]
    assert after == pytest.approx(before - engine.rank_params.fatigue_weight * math.log2(9), abs=1e-3)
    [again] = await engine.recommend({"u1": profile}, {})
    assert again.items[0].item_id == second


async def test_items_clicked_more_often_when_shown_rank_above_items_clicked_as_often_but_shown_more(
    engine: Recommender,
) -> None:
    profiles: dict[bytes, bytes] = {}
    await engine.handle_events([event("reader", "t3-en-0")], profiles)
    pair = ["t3-de-1", "t3-de-2"]
    profile = engine.load_profile(profiles, "reader")
    before = await engine.relevance(profile, candidates(engine, pair), T0)
    crowd: list[Impression | Interaction] = []
    for n in range(60):  # both clicked 6 times (the same trend); t3-de-1 shown 60 times, t3-de-2 only 10
        crowd.append(shown(f"u{n}", pair if n < 10 else pair[:1], ts=T0 + n))
        if n % 10 == 0:
            crowd += [event(f"u{n}", pair[0], ts=T0 + n), event(f"u{n}", pair[1], ts=T0 + n)]
    result = await engine.handle_events(crowd, profiles)
    assert len(result.processed) == len(crowd)
    after = await engine.relevance(profile, candidates(engine, pair), T0 + 100)
    assert after[1] - after[0] > before[1] - before[0] + 0.5 * engine.rank_params.ctr_weight


async def test_an_impression_of_an_unknown_item_waits_then_goes_to_the_dlq_and_counts_nothing(
    engine: Recommender,
) -> None:
    profiles: dict[bytes, bytes] = {}
    clock = engine.clock_ms
    assert isinstance(clock, Clock)
    result = await engine.handle_events([shown("u1", ["t0-en-0", "no-such-item"])], profiles)
    assert result.waiting == 1 and result.processed == []
    clock.now += 6_000
    result = await engine.handle_events([], profiles)
    [rejected] = result.rejected
    assert rejected.error.reason == "unknown_item" and "no-such-item" in rejected.error.message
    assert engine.exposure.impressions == 0
    assert b"u1" not in profiles


async def test_a_redelivered_impression_is_a_duplicate_and_moves_no_rate(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    once = shown("u1", ["t0-en-0"], event_id="imp-1")
    await engine.handle_events([once], profiles)
    counted = engine.exposure.impressions
    result = await engine.handle_events([once], profiles)
    assert result.duplicates == [once] and result.lists == []
    assert engine.exposure.impressions == counted
    assert engine.load_profile(profiles, "u1").times_shown(["t0-en-0"]).tolist() == [1]


async def test_published_lists_carry_distinct_list_ids(engine: Recommender) -> None:
    profiles: dict[bytes, bytes] = {}
    a = (await engine.handle_events([event("u1", "t0-en-0")], profiles)).lists[0]
    b = (await engine.handle_events([event("u1", "t0-de-0")], profiles)).lists[0]
    assert a.list_id and b.list_id and a.list_id != b.list_id
