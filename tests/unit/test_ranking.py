"""Ranking: candidate queries, scores, exclusions, language policy, MMR, explanations, popularity.

Profiles are built through ``UserProfile.observe`` from orthogonal "topic" directions, and
candidates are blends of those directions, so every cosine in an expectation is chosen, not found.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from xrec.config import Settings
from xrec.profile import ProfileParams, UserProfile
from xrec.ranking import (
    EXPANSION_PRIOR_EVENTS,
    Candidates,
    Popularity,
    RankParams,
    candidate_queries,
    expand_interests,
    mmr_select,
    mmr_select_many,
    rank,
    rank_many,
    score_candidates,
)
from xrec.space import LanguageSpace
from xrec.store.base import Hit, HitColumns

pytestmark = pytest.mark.unit

DIM = 24
HOUR = 3_600_000
T0 = 1_700_000_000_000
PP = ProfileParams(k=4, threshold=0.75, half_life_hours=1.0)
RP = RankParams(list_length=10, interest_temperature=20.0, mmr_lambda=1.0, language_weight=0.05, query_expansion=0)


def topic(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i] = 1.0
    return v


def at(cosine: float, main: int, other: int) -> np.ndarray:
    """A unit vector whose cosine with topic ``main`` is exactly ``cosine`` (the rest along ``other``)."""
    return (cosine * topic(main) + math.sqrt(1 - cosine * cosine) * topic(other)).astype(np.float32)


def cands(rows: dict[str, np.ndarray], langs: dict[str, str] | None = None) -> Candidates:
    ids = list(rows)
    return Candidates(
        ids=ids,
        vectors=np.stack([rows[i] for i in ids]).astype(np.float32),
        langs=[(langs or {}).get(i, "en") for i in ids],
        ts=np.zeros(len(ids), np.int64),
    )


def two_interest_user() -> UserProfile:
    """Topic 0 twice (latest item a2), topic 1 once (item b1): topic 0 matters twice as much."""
    p = UserProfile(dim=DIM)
    p.observe(topic(0), 1.0, T0, "a1", "en", PP)
    p.observe(topic(0), 1.0, T0, "a2", "en", PP)
    p.observe(topic(1), 1.0, T0, "b1", "en", PP)
    return p


def ids(items: list) -> list[str]:
    return [i.item_id for i in items]


# --- queries ---------------------------------------------------------------------------------------


def test_there_is_one_query_per_interest_carrying_the_users_exclusions() -> None:
    p = two_interest_user()
    p.observe(topic(5), -1.5, T0, "x", "en", PP, dislike=True)
    queries = candidate_queries(p, RP)
    assert len(queries) == 2
    np.testing.assert_array_equal(np.stack([q.vector for q in queries]), p.centroids)
    for q in queries:
        assert q.limit == RP.candidates_per_interest
        assert set(q.exclude_ids) == {"a1", "a2", "b1", "x"}
        assert q.filter.available_only
        assert q.filter.langs is None


def test_language_policy_only_filters_the_queries_to_the_users_languages() -> None:
    p = UserProfile(dim=DIM)
    p.observe(topic(0), 1.0, T0, "a", "de", PP)
    p.observe(topic(1), 1.0, T0, "b", "ja", PP)
    only = candidate_queries(p, replace(RP, language_policy="only"))
    assert all(set(q.filter.langs or ()) == {"de", "ja"} for q in only)
    assert all(q.filter.langs is None for q in candidate_queries(p, replace(RP, language_policy="prefer")))


# --- scores ----------------------------------------------------------------------------------------


def test_a_user_with_two_interests_gets_candidates_from_both_ordered_by_importance_and_similarity() -> None:
    p = two_interest_user()
    c = cands(
        {
            "t0-close": at(0.95, 0, 10),
            "t1-close": at(0.95, 1, 11),  # as similar, but to the interest that weighs half
            "t0-far": at(0.85, 0, 12),
            "t1-far": at(0.85, 1, 13),
            "unrelated": topic(14),
        }
    )
    items = rank(p, c, RP, PP, now_ms=T0)
    assert ids(items) == ["t0-close", "t1-close", "t0-far", "t1-far", "unrelated"]
    by_id = {i.item_id: i.score for i in items}
    # equally similar, but half the importance: ln 2/τ of cosine less (not a float-noise tie-break)
    assert by_id["t0-close"] - by_id["t1-close"] == pytest.approx(math.log(2) / RP.interest_temperature, abs=1e-4)
    assert by_id["t0-close"] - by_id["t0-far"] == pytest.approx(0.1, abs=1e-4)
    assert by_id["unrelated"] == pytest.approx(0.0, abs=1e-6)


def test_a_long_faded_interest_ranks_its_best_match_below_a_good_match_of_the_current_one() -> None:
    p = UserProfile(dim=DIM)
    p.observe(topic(0), 1.0, T0, "old", "en", PP)
    p.observe(topic(1), 1.0, T0 + 10 * HOUR, "new", "en", PP)  # ten half-lives later: old weighs 1/1024
    c = cands({"old-perfect": topic(0), "new-good": at(0.85, 1, 10)})
    assert ids(rank(p, c, RP, PP, now_ms=T0 + 10 * HOUR)) == ["new-good", "old-perfect"]


def test_temperature_zero_scores_by_the_importance_weighted_mean_of_interests() -> None:
    p = two_interest_user()
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((12, DIM)).astype(np.float32)
    c = cands({f"c{i}": v / np.linalg.norm(v) for i, v in enumerate(raw)})
    score, _ = score_candidates(p, c, replace(RP, interest_temperature=0.0), PP, now_ms=T0)
    mean = (2.0 * topic(0) + 1.0 * topic(1)) / 3.0
    np.testing.assert_allclose(score, c.vectors @ mean, atol=1e-6)


def test_the_dislike_direction_pushes_similar_candidates_down() -> None:
    p = UserProfile(dim=DIM)
    p.observe(topic(0), 1.0, T0, "a", "en", PP)
    c = cands({"near-dislike": at(0.8, 0, 2), "elsewhere": at(0.8, 0, 3)})  # equally close to the interest
    before, _ = score_candidates(p, c, RP, PP, now_ms=T0)
    assert before[0] == pytest.approx(0.8, abs=1e-6)  # one interest: the score is the cosine
    assert before[1] == pytest.approx(0.8, abs=1e-6)
    p.observe(topic(2), -1.5, T0, "x", "en", PP, dislike=True)
    after, _ = score_candidates(p, c, RP, PP, now_ms=T0)
    assert after[1] == pytest.approx(before[1], abs=1e-6)
    expected_push = RP.negative_weight * (1 - math.exp(-1.5)) * 0.6  # cos(near-dislike, topic 2) = 0.6
    assert before[0] - after[0] == pytest.approx(expected_push, abs=1e-5)
    assert ids(rank(p, c, RP, PP, now_ms=T0)) == ["elsewhere", "near-dislike"]


def test_seen_and_disliked_items_never_come_back() -> None:
    p = two_interest_user()
    p.observe(topic(5), -1.5, T0, "x", "en", PP, dislike=True)
    c = cands({"a1": topic(0), "x": topic(5), "new": at(0.9, 0, 6), "b1": topic(1)})
    assert ids(rank(p, c, RP, PP, now_ms=T0)) == ["new"]


def test_language_policy_prefer_boosts_the_users_languages_and_any_does_not() -> None:
    p = UserProfile(dim=DIM)
    for item in ("a", "b", "c"):
        p.observe(topic(0), 1.0, T0, item, "de", PP)
    p.observe(topic(0), 1.0, T0, "d", "en", PP)  # affinity de 0.75, en 0.25
    c = cands({"en": at(0.9, 0, 7), "de": at(0.9, 0, 8), "ja": at(0.9, 0, 9)}, {"en": "en", "de": "de", "ja": "ja"})
    base, _ = score_candidates(p, c, replace(RP, language_policy="any"), PP, now_ms=T0)
    np.testing.assert_allclose(base, base[0], atol=1e-6)
    prefer = replace(RP, language_policy="prefer")
    boosted, _ = score_candidates(p, c, prefer, PP, now_ms=T0)
    np.testing.assert_allclose(boosted - base, [0.05 * 0.25, 0.05 * 0.75, 0.0], atol=1e-6)
    assert ids(rank(p, c, prefer, PP, now_ms=T0)) == ["de", "en", "ja"]


def test_each_item_names_the_users_item_behind_the_interest_it_answers() -> None:
    p = two_interest_user()
    c = cands({"x0": at(0.9, 0, 10), "x1": at(0.9, 1, 11)})
    because = {i.item_id: i.because for i in rank(p, c, RP, PP, now_ms=T0)}
    assert because == {"x0": "a2", "x1": "b1"}


def test_freshness_lifts_recent_items_when_it_is_weighted() -> None:
    p = UserProfile(dim=DIM)
    p.observe(topic(0), 1.0, T0, "a", "en", PP)
    c = Candidates(
        ids=["old", "fresh"],
        vectors=np.stack([at(0.9, 0, 3), at(0.9, 0, 4)]),
        langs=["en", "en"],
        ts=np.asarray([T0 - 480 * HOUR, T0], np.int64),
    )
    params = replace(RP, freshness_weight=0.1, freshness_half_life_hours=48.0)
    score, _ = score_candidates(p, c, params, PP, now_ms=T0)
    assert score[1] - score[0] == pytest.approx(0.1 * (1 - 2**-10), abs=1e-6)


def test_no_candidates_give_an_empty_list() -> None:
    empty = Candidates([], np.zeros((0, DIM), np.float32), [], np.zeros(0, np.int64))
    assert rank(two_interest_user(), empty, RP, PP, T0) == []


def test_candidates_from_hits_keep_the_first_occurrence_of_each_item() -> None:
    hits = [
        Hit("a", 0.9, {"lang": "de", "ts": 5}, topic(0)),
        Hit("b", 0.8, {"lang": "ja"}, topic(1)),
        Hit("a", 0.7, {"lang": "xx"}, topic(2)),
        Hit("no-vector", 0.6, {"lang": "en"}, None),
    ]
    c = Candidates.from_hits(hits, DIM)
    assert c.ids == ["a", "b"]
    assert c.langs == ["de", "ja"]
    np.testing.assert_array_equal(c.vectors, np.stack([topic(0), topic(1)]))
    np.testing.assert_array_equal(c.ts, [5, 0])
    assert len(Candidates.from_hits([], DIM)) == 0


# --- MMR -------------------------------------------------------------------------------------------


def mmr_fixture() -> tuple[np.ndarray, np.ndarray]:
    """Three near-copies of one direction, most relevant first, and one different, less relevant item."""
    vectors = np.stack([at(0.999, 0, 5), at(0.998, 0, 6), at(0.997, 0, 7), topic(1)])
    return vectors, np.asarray([0.9, 0.89, 0.88, 0.8])


def test_mmr_with_lambda_one_picks_by_relevance_only() -> None:
    vectors, relevance = mmr_fixture()
    assert mmr_select(vectors, relevance, 3, 1.0) == [0, 1, 2]


def test_mmr_with_lambda_below_one_picks_a_diverse_list() -> None:
    vectors, relevance = mmr_fixture()
    assert mmr_select(vectors, relevance, 3, 0.5) == [0, 3, 1]
    assert mmr_select(vectors, relevance, 10, 0.5) == [0, 3, 1, 2]  # never more than there are
    assert mmr_select(vectors, relevance, 0, 0.5) == []


def test_rank_applies_mmr_over_the_scored_candidates() -> None:
    p = UserProfile(dim=DIM)
    p.observe(topic(0), 1.0, T0, "a", "en", PP)
    p.observe(topic(1), 1.0, T0, "b", "en", PP)
    c = cands({"d1": at(0.95, 0, 5), "d2": at(0.94, 0, 5), "d3": at(0.93, 0, 5), "other": at(0.85, 1, 6)})
    assert ids(rank(p, c, replace(RP, mmr_lambda=1.0, list_length=3), PP, T0)) == ["d1", "d2", "d3"]
    assert ids(rank(p, c, replace(RP, mmr_lambda=0.5, list_length=3), PP, T0))[:2] == ["d1", "other"]


def test_mmr_for_many_users_at_once_picks_what_it_picks_for_each_alone() -> None:
    rng = np.random.default_rng(3)
    counts = [7, 1, 12, 12, 3]
    vectors = rng.standard_normal((len(counts), 12, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    relevance = rng.random((len(counts), 12))
    for lam in (0.3, 0.8, 1.0):
        together = mmr_select_many(vectors, relevance, counts, 5, lam)
        alone = [mmr_select(vectors[u, :c], relevance[u, :c], 5, lam) for u, c in enumerate(counts)]
        assert together == alone
        assert [len(picks) for picks in together] == [5, 1, 5, 5, 3]


def test_each_interest_moves_toward_the_similarity_weighted_mean_of_its_own_best_answers() -> None:
    """Checked one interest at a time against the rule written out plainly, over more queries than one
    block of the batched computation, with queries that found fewer answers than asked or none."""
    rng = np.random.default_rng(11)
    neutral = rng.standard_normal((300, DIM)).astype(np.float32)
    neutral /= np.linalg.norm(neutral, axis=1, keepdims=True)
    profiles: list[UserProfile] = []
    answers: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    for _ in range(200):
        k = int(rng.integers(1, 5))
        centroids = rng.standard_normal((k, DIM)).astype(np.float32)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        profiles.append(UserProfile(dim=DIM, centroids=centroids, weights=rng.uniform(0.2, 9.0, k), anchors=["a"] * k))
        spans.append((len(answers), len(answers) + k))
        answers += [rng.choice(300, int(rng.choice([0, 2, 5, 40])), replace=False) for _ in range(k)]
    assert len(answers) > 512
    columns = HitColumns(
        item_ids=[f"i{i}" for i in range(300)], vectors=neutral, payload={}, per_query=answers, scores=[]
    )
    top = 5
    moved = np.concatenate(expand_interests(profiles, columns, spans, neutral, top))
    interests = np.concatenate([p.centroids for p in profiles])
    weights = np.concatenate([p.weights for p in profiles])
    for q, found in enumerate(answers):
        best = neutral[found[:top]]
        pull = np.maximum(0.0, best @ interests[q])
        if not len(found) or pull.sum() < 1e-9:
            np.testing.assert_allclose(moved[q], interests[q], atol=1e-6)  # nothing to move toward
            continue
        mean = (pull[:, None] * best).sum(axis=0) / pull.sum()
        keep = weights[q] / (weights[q] + EXPANSION_PRIOR_EVENTS)
        want = keep * interests[q] + (1 - keep) * mean / np.linalg.norm(mean)
        np.testing.assert_allclose(moved[q], want / np.linalg.norm(want), atol=1e-5)
    assert expand_interests(profiles, columns, spans, neutral, 0)[3] is profiles[3].centroids  # 0: unchanged


def test_ranking_a_batch_of_users_gives_each_the_list_ranking_them_alone_gives() -> None:
    """Users share one table of candidates; each ranks only what their own queries answered."""
    rng = np.random.default_rng(5)
    ids = [f"c{i}" for i in range(40)]
    vectors = rng.standard_normal((40, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    langs = ["en", "de", "ja", "zh"]
    users = []
    for u in range(3):
        p = UserProfile(dim=DIM)
        for i in range(u + 2):
            p.observe(topic(u + i), 1.0, T0 + i, f"c{u * 7 + i}", "en", PP)
        users.append(p)
    users[1].observe(topic(9), -1.0, T0, "c30", "en", PP, dislike=True)
    # Each user's queries answer from what the store leaves them: their seen and disliked items excluded.
    sizes = [(12, 9), (20,), (5, 15, 30)]
    per_query: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    for profile, user_sizes in zip(users, sizes, strict=True):
        allowed = np.asarray([r for r in range(40) if ids[r] not in set(profile.excluded_ids())])
        spans.append((len(per_query), len(per_query) + len(user_sizes)))
        per_query += [rng.permutation(allowed)[:n] for n in user_sizes]
    columns = HitColumns(
        item_ids=ids,
        vectors=vectors,
        payload={"lang": [langs[i % 4] for i in range(40)], "ts": [T0 - i * HOUR for i in range(40)]},
        per_query=per_query,
        scores=[np.zeros(len(answer), np.float32) for answer in per_query],
    )
    trend = {f"c{i}": i / 40 for i in range(40)}
    space = LanguageSpace(DIM, min_items=10)
    for i in range(40):
        space.count("p", langs[i % 4], vectors[i])
    view = space.view()
    params = replace(RP, mmr_lambda=0.7, language_policy="prefer", freshness_weight=0.1, trending_weight=0.05)
    together = rank_many(users, columns, spans, params, PP, T0, trend, view)
    for profile, (start, stop), got in zip(users, spans, together, strict=True):
        rows = list(dict.fromkeys(int(r) for answer in columns.per_query[start:stop] for r in answer))
        alone = Candidates(
            ids=[ids[r] for r in rows],
            vectors=vectors[rows],
            langs=[langs[r % 4] for r in rows],
            ts=np.asarray([T0 - r * HOUR for r in rows], np.int64),
        )
        want = rank(profile, alone, params, PP, T0, trend, view)
        assert ids_of(got) == ids_of(want) and len(got) == params.list_length
        np.testing.assert_allclose([i.score for i in got], [i.score for i in want], rtol=1e-5)
        assert [i.because for i in got] == [i.because for i in want]


def ids_of(items: list) -> list[str]:
    return [i.item_id for i in items]


def test_rank_params_come_from_settings() -> None:
    s = Settings(list_length=7, mmr_lambda=0.6, language_policy="prefer", interest_temperature=5.0)
    params = RankParams.from_settings(s)
    assert (params.list_length, params.mmr_lambda, params.language_policy, params.interest_temperature) == (
        7,
        0.6,
        "prefer",
        5.0,
    )


# --- popularity ------------------------------------------------------------------------------------


def test_popularity_counts_decay_with_their_half_life() -> None:
    pop = Popularity(half_life_hours=1.0)
    pop.add("old", "en", T0)
    pop.add("new", "en", T0 + HOUR)
    assert pop.top(5) == [("new", 1.0), ("old", pytest.approx(0.5))]
    pop.add("old", "en", T0 + HOUR)
    assert pop.top(1) == [("old", 1.0)]
    assert pop.trend(["new", "old", "never"]) == {"new": pytest.approx(2 / 3), "old": 1.0, "never": 0.0}


def test_popularity_tops_by_language_and_excludes_what_is_asked() -> None:
    pop = Popularity()
    for item, lang, clicks in (("de1", "de", 3), ("de2", "de", 2), ("en1", "en", 5), ("ja1", "ja", 1)):
        for _ in range(clicks):
            pop.add(item, lang, T0)
    assert [i for i, _ in pop.top(10, ["de"])] == ["de1", "de2"]
    assert [i for i, _ in pop.top(10, ["de", "ja"], exclude={"de1"})] == ["de2", "ja1"]
    assert [i for i, _ in pop.top(2)] == ["en1", "de1"]


def test_cold_start_prefers_the_users_language_then_fills_from_anywhere_without_seen_items() -> None:
    pop = Popularity()
    for item, lang, clicks in (("de1", "de", 3), ("de2", "de", 2), ("en1", "en", 5), ("en2", "en", 4)):
        for _ in range(clicks):
            pop.add(item, lang, T0)
    p = UserProfile(dim=DIM)
    p.observe(topic(0), -1.5, T0, "de1", "de", PP, dislike=True)
    items = pop.cold_start(p, 3, preferred_langs=["de"])
    assert ids(items) == ["de2", "en1", "en2"]
    assert [i.lang for i in items] == ["de", "en", "en"]
    assert ids(pop.cold_start(None, 2)) == ["en1", "en2"]


def test_popularity_stays_bounded() -> None:
    pop = Popularity(max_items=10)
    for i in range(100):
        pop.add(f"i{i}", "en", T0 + i, weight=1.0 + i)
    assert len(pop.scores) <= 12
    assert set(pop.langs) == set(pop.scores)
    assert pop.top(1)[0][0] == "i99"


def test_rebasing_keeps_the_order_and_forgets_the_items_it_drops() -> None:
    pop = Popularity(half_life_hours=1.0)
    pop.add("ancient", "en", T0)
    pop.add("a", "en", T0 + 100 * HOUR, weight=2.0)  # exp would overflow soon: the counts re-base here
    pop.add("b", "en", T0 + 100 * HOUR)
    assert pop.top(5) == [("a", 1.0), ("b", 0.5)]
    assert set(pop.langs) == set(pop.scores) == {"a", "b"}


def test_trend_follows_the_maximum_as_it_grows_shrinks_and_leaves() -> None:
    pop = Popularity()
    pop.add("a", "en", T0, weight=4.0)
    pop.add("b", "en", T0, weight=2.0)
    assert pop.trend(["b"]) == {"b": 0.5}
    pop.add("b", "en", T0, weight=6.0)  # b overtakes a
    assert pop.trend(["a", "b"]) == {"a": 0.5, "b": 1.0}
    pop.add("b", "en", T0, weight=-6.0)  # a negative weight can lower the maximum
    assert pop.trend(["a", "b"]) == {"a": 1.0, "b": 0.5}
    pop.discard("a")  # the most popular item leaves
    assert pop.trend(["a", "b"]) == {"a": 0.0, "b": 1.0}
