"""UserProfile: interests, decay, dislikes, bounded sets, languages, dedup and the byte format.

Vectors are hand-made: orthogonal "topic" directions in a small space, so every cosine in an
expectation is known exactly (1, 0, or the cosine of a blend we chose).
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from xrec.config import Settings
from xrec.profile import ProfileParams, UserProfile, event_fingerprint, event_weight, review_vector

pytestmark = pytest.mark.unit

DIM = 16
HOUR = 3_600_000
T0 = 1_700_000_000_000
PARAMS = ProfileParams(k=3, threshold=0.75, half_life_hours=1.0, seen_max=5, disliked_max=3)


def topic(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


def blend(*parts: tuple[float, np.ndarray]) -> np.ndarray:
    v = sum(w * p for w, p in parts)
    assert isinstance(v, np.ndarray)
    return (v / np.linalg.norm(v)).astype(np.float32)


def click(
    p: UserProfile, vec: np.ndarray, item: str, ts: int = T0, lang: str | None = "en", weight: float = 1.0
) -> None:
    p.observe(vec, weight, ts, item, lang, PARAMS)


def dislike(p: UserProfile, vec: np.ndarray, item: str, ts: int = T0, weight: float = -1.5) -> None:
    p.observe(vec, weight, ts, item, "en", PARAMS, dislike=True)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- interests -------------------------------------------------------------------------------------


def test_a_positive_event_starts_an_interest() -> None:
    p = UserProfile(dim=DIM)
    assert not p.has_interests
    click(p, topic(0), "a")
    assert p.has_interests
    assert p.centroids.shape == (1, DIM)
    np.testing.assert_array_equal(p.centroids[0], topic(0))
    np.testing.assert_array_equal(p.weights, [1.0])
    assert p.anchors == ["a"]
    assert list(p.seen) == ["a"]
    assert p.events == 1


def test_a_similar_event_joins_the_interest_and_moves_its_centroid_toward_it() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "a")
    near = blend((1.0, topic(0)), (0.5, topic(1)))  # cosine 0.894 with topic 0, above 0.75
    click(p, near, "b")
    assert p.centroids.shape == (1, DIM)
    np.testing.assert_allclose(p.centroids[0], blend((1.0, topic(0)), (1.0, near)), atol=1e-6)
    assert cos(p.centroids[0], near) > cos(topic(0), near)
    np.testing.assert_allclose(np.linalg.norm(p.centroids[0]), 1.0, atol=1e-6)
    np.testing.assert_array_equal(p.weights, [2.0])
    assert p.anchors == ["b"]  # "because" names the latest item that fed the interest


def test_a_dissimilar_event_starts_another_interest() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "a")
    click(p, topic(1), "b")
    assert p.centroids.shape == (2, DIM)
    np.testing.assert_array_equal(p.centroids, np.stack([topic(0), topic(1)]))
    assert p.anchors == ["a", "b"]


def test_an_event_just_below_the_threshold_starts_another_interest() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "a")
    c = 0.74
    click(p, (c * topic(0) + math.sqrt(1 - c * c) * topic(1)).astype(np.float32), "b")
    assert len(p.weights) == 2
    c = 0.76
    click(p, (c * topic(0) + math.sqrt(1 - c * c) * topic(2)).astype(np.float32), "c")
    assert len(p.weights) == 2


def test_a_full_profile_merges_its_two_most_similar_interests_to_make_room() -> None:
    p = UserProfile(dim=DIM)
    a, b, c = topic(0), blend((1.0, topic(0)), (1.0, topic(1))), topic(2)  # cos(a, b) = 0.707: two interests
    for vec, item in ((a, "a"), (b, "b"), (c, "c")):
        click(p, vec, item)
    assert len(p.weights) == PARAMS.k
    click(p, topic(3), "d")
    assert len(p.weights) == PARAMS.k
    np.testing.assert_allclose(p.centroids[0], blend((1.0, a), (1.0, b)), atol=1e-6)
    np.testing.assert_array_equal(p.centroids[1:], np.stack([c, topic(3)]))
    np.testing.assert_array_equal(p.weights, [2.0, 1.0, 1.0])  # merging keeps the mass
    assert p.anchors == ["a", "c", "d"]


def test_a_full_profile_evicts_a_faded_interest_before_merging() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "old", ts=T0)
    later = T0 + 5 * HOUR  # five half-lives: the old interest weighs 1/32 < 5% of the others
    click(p, topic(1), "b", ts=later)
    click(p, blend((1.0, topic(1)), (1.0, topic(2))), "c", ts=later)  # b and c would be the pair to merge
    click(p, topic(3), "d", ts=later)
    assert p.anchors == ["b", "c", "d"]
    np.testing.assert_array_equal(p.weights, [1.0, 1.0, 1.0])
    assert all(cos(c, topic(0)) < 1e-6 for c in p.centroids)


def test_with_a_single_interest_every_positive_event_blends_into_it() -> None:
    params = ProfileParams(k=1, threshold=0.75, half_life_hours=1.0)
    p = UserProfile(dim=DIM)
    p.observe(topic(0), 1.0, T0, "a", "en", params)
    p.observe(topic(1), 1.0, T0, "b", "en", params)
    assert len(p.weights) == 1
    np.testing.assert_allclose(p.centroids[0], blend((1.0, topic(0)), (1.0, topic(1))), atol=1e-6)
    np.testing.assert_array_equal(p.weights, [2.0])


# --- time ------------------------------------------------------------------------------------------


def test_weights_halve_after_one_half_life_of_event_time() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "a", ts=T0)
    np.testing.assert_allclose(p.importance(T0 + HOUR, PARAMS), [0.5])
    np.testing.assert_allclose(p.importance(T0 + 3 * HOUR, PARAMS), [0.125])
    click(p, topic(1), "b", ts=T0 + HOUR)
    np.testing.assert_allclose(p.weights, [0.5, 1.0])
    assert p.last_ts == T0 + HOUR


def test_an_older_event_arriving_late_counts_less_and_does_not_move_the_clock() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "a", ts=T0 + 2 * HOUR)
    click(p, topic(1), "b", ts=T0 + HOUR)  # one half-life older than what the profile has seen
    np.testing.assert_allclose(p.weights, [1.0, 0.5])
    assert p.last_ts == T0 + 2 * HOUR
    click(p, topic(0), "c", ts=T0)  # joins interest a with a quarter of the weight
    np.testing.assert_allclose(p.weights, [1.25, 0.5])


# --- dislikes --------------------------------------------------------------------------------------


def test_a_dislike_builds_the_dislike_direction_and_weakens_the_interest_it_hits() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "a")
    click(p, topic(0), "b")
    click(p, topic(1), "c")
    direction, strength = p.negative_direction()
    assert direction is None and strength == 0.0
    dislike(p, topic(0), "x")
    direction, strength = p.negative_direction()
    assert direction is not None
    np.testing.assert_allclose(direction, topic(0), atol=1e-6)
    assert strength == pytest.approx(1 - math.exp(-1.5))
    np.testing.assert_allclose(p.weights, [0.5, 1.0])  # 2 − 1.5·cos 1; the other interest is untouched
    assert list(p.disliked) == ["x"]
    assert "x" in p.seen
    assert p.excluded_ids().count("x") == 1


def test_a_dislike_far_from_every_interest_leaves_their_weights_alone() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "a")
    dislike(p, topic(5), "x")
    np.testing.assert_array_equal(p.weights, [1.0])
    direction, _ = p.negative_direction()
    assert direction is not None
    np.testing.assert_allclose(direction, topic(5), atol=1e-6)


def test_a_skip_pushes_away_without_entering_the_disliked_set() -> None:
    p = UserProfile(dim=DIM)
    p.observe(topic(2), -0.3, T0, "s", "en", PARAMS, dislike=False)
    assert list(p.disliked) == []
    assert list(p.seen) == ["s"]
    assert p.negative_direction()[1] == pytest.approx(1 - math.exp(-0.3))


def test_a_user_with_only_dislikes_has_no_interests() -> None:
    p = UserProfile(dim=DIM)
    dislike(p, topic(0), "x")
    assert not p.has_interests
    assert p.language_affinity() == {}


def test_the_dislike_direction_decays_like_the_interests() -> None:
    p = UserProfile(dim=DIM)
    dislike(p, topic(0), "x", ts=T0)
    click(p, topic(1), "a", ts=T0 + HOUR)
    assert p.negative_weight == pytest.approx(0.75)


# --- bounded sets ----------------------------------------------------------------------------------


def test_the_seen_set_is_bounded_and_keeps_the_most_recent_items() -> None:
    p = UserProfile(dim=DIM)
    for i in range(8):
        click(p, topic(0), f"i{i}")
    assert list(p.seen) == ["i3", "i4", "i5", "i6", "i7"]
    click(p, topic(0), "i4")  # seeing an item again makes it recent
    click(p, topic(0), "i8")
    assert list(p.seen) == ["i5", "i6", "i7", "i4", "i8"]


def test_the_disliked_set_is_bounded_and_keeps_the_most_recent_items() -> None:
    p = UserProfile(dim=DIM)
    for i in range(5):
        dislike(p, topic(i), f"x{i}")
    assert list(p.disliked) == ["x2", "x3", "x4"]


# --- languages -------------------------------------------------------------------------------------


def test_language_affinity_follows_positive_events_only() -> None:
    p = UserProfile(dim=DIM)
    for item in ("a", "b", "c"):
        click(p, topic(0), item, lang="de")
    click(p, topic(0), "d", lang="en")
    dislike(p, topic(1), "x")  # a dislike says nothing about the languages the user reads
    assert p.language_affinity() == pytest.approx({"de": 0.75, "en": 0.25})


def test_language_affinity_decays_so_the_recent_language_leads() -> None:
    p = UserProfile(dim=DIM)
    click(p, topic(0), "a", ts=T0, lang="de")
    click(p, topic(0), "b", ts=T0 + HOUR, lang="ja")
    assert p.language_affinity() == pytest.approx({"de": 1 / 3, "ja": 2 / 3})


# --- duplicates ------------------------------------------------------------------------------------


def test_remember_event_detects_duplicates_within_its_window() -> None:
    p = UserProfile(dim=DIM)
    assert [p.remember_event(e, window=3) for e in ("e1", "e2", "e3")] == [True, True, True]
    assert p.remember_event("e1", window=3) is False
    assert p.remember_event("e4", window=3) is True  # pushes e1 out of the window
    assert list(p.event_ids) == [event_fingerprint(e) for e in ("e2", "e3", "e4")]
    assert p.remember_event("e1", window=3) is True


# --- bytes -----------------------------------------------------------------------------------------


def full_profile(dim: int = DIM) -> UserProfile:
    p = UserProfile(dim=dim)
    rng = np.random.default_rng(7)
    for i in range(3):
        v = rng.standard_normal(dim).astype(np.float32)
        p.observe(v / np.linalg.norm(v), 1.0 + i / 3, T0 + i * 1234, f"item-{i}", ["de", "ja", "pt-br"][i], PARAMS)
    p.observe(topic(0, dim), -1.5, T0 + 99, "bad", "en", PARAMS, dislike=True)  # out of order on purpose
    for e in ("ev-3", "ev-1", "ev-2"):
        p.remember_event(e, window=10)
    return p


def test_a_profile_round_trips_through_bytes_exactly() -> None:
    p = full_profile()
    q = UserProfile.from_bytes(p.to_bytes())
    assert q.dim == p.dim
    np.testing.assert_array_equal(q.centroids, p.centroids)
    assert q.centroids.dtype == np.float32
    np.testing.assert_array_equal(q.weights, p.weights)
    assert p.negative is not None and q.negative is not None
    np.testing.assert_array_equal(q.negative, p.negative)
    assert q.negative_weight == p.negative_weight
    assert q.anchors == p.anchors
    assert list(q.seen) == list(p.seen) == ["item-0", "item-1", "item-2", "bad"]
    assert list(q.disliked) == list(p.disliked) == ["bad"]
    assert list(q.event_ids) == [event_fingerprint(e) for e in ("ev-3", "ev-1", "ev-2")]
    assert q.languages == p.languages
    assert (q.last_ts, q.events) == (p.last_ts, p.events)
    assert q.to_bytes() == p.to_bytes()


def test_an_empty_profile_round_trips_through_bytes() -> None:
    q = UserProfile.from_bytes(UserProfile(dim=DIM).to_bytes())
    assert q.centroids.shape == (0, DIM)
    assert q.negative is None
    assert not q.has_interests


def test_profile_bytes_hold_float32_centroids_not_json_floats() -> None:
    dim = 384
    p = full_profile(dim)
    before = len(p.to_bytes())
    roomy = ProfileParams(k=6, threshold=PARAMS.threshold, half_life_hours=PARAMS.half_life_hours)
    p.observe(topic(1, dim), 1.0, T0 + 5000, "i3", "de", roomy)  # one more interest, nothing else new
    assert len(p.weights) == 4
    data = p.to_bytes()
    # 4 bytes per float, plus the weight, the anchor id and the seen id in the small header
    assert 4 * dim <= len(data) - before <= 4 * dim + 64
    assert len(data) < len(orjson.dumps(p.centroids.tolist())) / 2


def test_from_bytes_refuses_bytes_that_are_not_a_profile() -> None:
    with pytest.raises(ValueError, match="not a serialized UserProfile"):
        UserProfile.from_bytes(b"JSN\x01" + b"\x00" * 16)


# --- event weights and review vectors --------------------------------------------------------------

WEIGHTS = Settings().weights


@pytest.mark.parametrize(
    ("rating", "expected"), [(5.0, 1.5), (4.0, 0.75), (3.0, 0.0), (2.0, -0.75), (1.0, -1.5), (None, 1.5)]
)
def test_a_reviews_rating_sets_its_sign_and_strength(rating: float | None, expected: float) -> None:
    assert event_weight("review", rating, WEIGHTS) == pytest.approx(expected)


def test_other_event_types_take_their_configured_weight() -> None:
    assert event_weight("click", None, WEIGHTS) == 1.0
    assert event_weight("dislike", None, WEIGHTS) < 0
    assert event_weight("skip", None, WEIGHTS) < 0
    assert event_weight("purchase", 1.0, WEIGHTS) == WEIGHTS["purchase"]  # a rating only matters on reviews


def test_a_neutral_review_marks_the_item_seen_and_changes_no_interest() -> None:
    p = UserProfile(dim=DIM)
    p.observe(topic(0), event_weight("review", 3.0, WEIGHTS), T0, "r", "en", PARAMS)
    assert list(p.seen) == ["r"]
    assert not p.has_interests
    assert p.negative is None


def test_a_review_vector_moves_the_item_toward_the_review_text() -> None:
    item, text = topic(0), topic(1)
    np.testing.assert_array_equal(review_vector(item, None, 0.5), item)
    np.testing.assert_allclose(review_vector(item, text, 0.5), blend((1.0, item), (1.0, text)), atol=1e-6)
    np.testing.assert_allclose(review_vector(item, text, 0.25), blend((3.0, item), (1.0, text)), atol=1e-6)


def test_profile_params_come_from_settings() -> None:
    s = Settings(interests_k=4, interest_threshold=0.6, half_life_hours=12.0, seen_max=50)
    params = ProfileParams.from_settings(s)
    assert (params.k, params.threshold, params.half_life_hours, params.seen_max) == (4, 0.6, 12.0, 50)
    assert params.decay_per_ms == pytest.approx(math.log(2) / (12 * HOUR))
