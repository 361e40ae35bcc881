"""The online-learned ranker: it learns weights that are known to be right, it starts from the hand-set
ones, and nothing but a click on an item its user was shown moves it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from streams.compacted import worker_id
from streams.ranker_weights import RankerWeightsSync, decode_delta, encode_delta
from tests.unit.test_pipeline import DIM, T0, Clock, catalog, event
from xrec.config import Settings
from xrec.eval.metrics import auc
from xrec.events import Impression
from xrec.metrics import XrecMetrics
from xrec.pipeline import Recommender
from xrec.profile import UserProfile
from xrec.ranker import OnlineRanker, ShownItems
from xrec.ranking import FEATURES, RankParams
from xrec.store import open_store

pytestmark = pytest.mark.unit

HAND_SET = RankParams().weights()


def synthetic_impressions(n: int, truth: np.ndarray, seed: int) -> list[tuple[np.ndarray, int]]:
    """Impressions of 10 items with random terms; the user takes the item the true weights score best
    (with some noise): what a stream whose right weights are ``truth`` looks like."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        features = rng.normal(size=(10, len(FEATURES))) * np.asarray([0.2, 0.1, 0.0, 0.3, 0.3, 0.5, 0.5])
        taken = int(np.argmax(features @ truth + rng.gumbel(size=10) * 0.1))
        out.append((features, taken))
    return out


def mean_auc(weights: np.ndarray, impressions: list[tuple[np.ndarray, int]]) -> float:
    return float(np.mean([auc(np.eye(10)[taken], features @ weights) for features, taken in impressions]))


def test_on_a_stream_whose_right_weights_are_known_the_default_learned_ranker_moves_toward_them() -> None:
    truth = np.asarray([1.0, 0.5, 0.0, 0.8, -0.3, 1.5, 0.6])  # freshness and click-through matter, trend hurts
    defaults = Settings()
    ranker = OnlineRanker(HAND_SET, defaults.ranker_learning_rate, defaults.ranker_l2)
    for features, taken in synthetic_impressions(10_000, truth, seed=1):  # the default rate is a slow one
        assert ranker.taken(ShownItems([f"i{j}" for j in range(10)], features, None), f"i{taken}")
    held_out = synthetic_impressions(500, truth, seed=2)
    assert mean_auc(ranker.weights(), held_out) > mean_auc(HAND_SET, held_out) + 0.05
    learned = ranker.weights()
    assert learned[3] > 0.3 and learned[5] > HAND_SET[5] + 0.3 and learned[4] < 0  # the signs the truth has
    assert ranker.updates == 10_000


def test_it_starts_from_the_hand_set_weights_and_keeps_the_interest_weight_at_one() -> None:
    ranker = OnlineRanker(HAND_SET, learning_rate=0.1, l2=0.0)
    np.testing.assert_allclose(ranker.weights(), HAND_SET)
    ranker.learn(np.asarray([1.0, 0, 0, 0, 0, 1.0, 0]), np.zeros((3, len(FEATURES))))
    assert ranker.weights()[0] == 1.0 and ranker.raw[0] > 1.0
    assert RankParams().with_weights(ranker.weights()).ctr_weight == pytest.approx(ranker.weights()[5])


def test_with_positions_only_the_items_above_the_taken_one_and_the_next_count_as_passed_over() -> None:
    shown = ShownItems(["a", "b", "c", "d", "e"], np.zeros((5, len(FEATURES))), (4, 0, 1, 2, 3))
    assert shown.passed_over("d").tolist() == [1, 2, 4]  # b and c above it, e right after it
    shown.taken.add("d")
    assert shown.passed_over("b").tolist() == [2]  # nothing above; c right after
    assert ShownItems(["a", "b", "c"], np.zeros((3, 7)), None).passed_over("b").tolist() == [0, 2]


def test_only_a_first_click_on_an_item_of_the_users_latest_impression_teaches_and_frozen_learns_nothing() -> None:
    ranker = OnlineRanker(HAND_SET, learning_rate=0.1, l2=0.0)
    features = np.eye(3, len(FEATURES))
    shown = ShownItems(["a", "b", "c"], features, None)
    assert not ranker.taken(shown, "z")  # not shown
    assert not ranker.taken(None, "a")  # no impression
    assert ranker.taken(shown, "a")
    assert not ranker.taken(shown, "a")  # the same click again
    assert not ranker.taken(ShownItems(["a", "b"], np.ones((2, 3)), None), "a")  # another version's terms
    frozen = OnlineRanker(HAND_SET, learning_rate=0.1, l2=0.0, frozen=True)
    assert not frozen.taken(ShownItems(["a", "b", "c"], features, None), "a") and frozen.updates == 0
    np.testing.assert_allclose(frozen.weights(), HAND_SET)


async def engine_with_variants(tmp_path: Path, variants: str) -> Recommender:
    """An engine over the test catalog whose learned ranker learns fast, with ``variants``."""
    settings = Settings(
        store_backend="edge",
        store_path=str(tmp_path / "store"),
        unknown_item_wait_s=5.0,
        variants=variants,
        ranker_learning_rate=0.5,
    )
    rec = Recommender(settings, open_store(settings, dim=DIM), encoder=None, dim=DIM, clock_ms=Clock())
    await rec.start()
    await rec.handle_items(catalog())
    return rec


@pytest.fixture
async def learning_engine(tmp_path: Path) -> Recommender:
    return await engine_with_variants(tmp_path, "learned=50 ranker=learned; fixed=50")


async def test_impressions_and_their_clicks_teach_the_engines_learned_ranker(learning_engine: Recommender) -> None:
    rec, profiles = learning_engine, dict[bytes, bytes]()
    await rec.handle_events([event("u1", "t0-en-0")], profiles)
    shown = Impression("imp-1", "u1", ("t0-en-1", "t1-en-0", "t2-en-0"), T0)
    await rec.handle_events([shown, event("u1", "t1-en-0", ts=T0 + 1)], profiles)
    assert rec.ranker.updates == 1
    assert not np.allclose(rec.ranker.weights(), HAND_SET)
    learned = rec.params_of("learned")
    assert learned.ctr_weight == pytest.approx(rec.ranker.weights()[5])
    assert rec.params_of("fixed") == rec.variant_params["fixed"]  # the fixed variant keeps its settings


async def test_the_latest_impression_is_kept_in_the_profile_so_a_click_after_a_restart_still_teaches(
    learning_engine: Recommender,
) -> None:
    rec, profiles = learning_engine, dict[bytes, bytes]()
    await rec.handle_events([event("u1", "t0-en-0")], profiles)
    await rec.handle_events([Impression("imp-1", "u1", ("t0-en-1", "t1-en-0", "t2-en-0"), T0)], profiles)
    rec.ranker = OnlineRanker(HAND_SET, 0.5, 0.0)  # a restarted worker: nothing of the impression in memory
    await rec.handle_events([event("u1", "t1-en-0", ts=T0 + 1)], profiles)
    assert rec.ranker.updates == 1
    kept = UserProfile.from_bytes(profiles[b"u1"]).last_impression
    assert kept is not None and kept.item_ids == ["t0-en-1", "t1-en-0", "t2-en-0"] and kept.taken == {"t1-en-0"}


async def test_a_learned_variant_that_is_not_the_first_learns_with_its_own_settings(tmp_path: Path) -> None:
    rec = await engine_with_variants(
        tmp_path, "fixed=50; learned=50 ranker=learned language_policy=prefer ctr_weight=0.2"
    )
    assert rec.ranker.initial[FEATURES.index("ctr")] == pytest.approx(0.2)  # its hand-set weights, not fixed's
    profiles = dict[bytes, bytes]()
    await rec.handle_events([event("u1", "t0-en-0")], profiles)
    await rec.handle_events([Impression("imp-1", "u1", ("t0-en-1", "t0-de-0", "t1-ja-0"), T0)], profiles)
    kept = UserProfile.from_bytes(profiles[b"u1"]).last_impression
    assert kept is not None
    language = kept.features[:, FEATURES.index("language")]
    assert language[0] > 0 and language[1] == language[2] == 0  # prefer's term: the reader's language only
    await rec.store.close()


async def test_hostile_or_unknown_impressions_never_move_the_weights(learning_engine: Recommender) -> None:
    rec, profiles = learning_engine, dict[bytes, bytes]()
    await rec.handle_events([event("u1", "t0-en-0")], profiles)
    waiting = Impression("imp-x", "u1", ("t0-en-1", "no-such-item"), T0)
    result = await rec.handle_events([waiting, event("u1", "t0-en-1", ts=T0 + 1)], profiles)
    assert result.waiting == 1 and rec.ranker.updates == 0  # the impression waits for its item: nothing learned
    shown = Impression("imp-1", "u1", ("t0-en-2", "t1-en-0"), T0)
    await rec.handle_events([shown], profiles)
    result = await rec.handle_events([shown, event("u1", "t2-en-0", ts=T0 + 2)], profiles)
    assert result.duplicates == [shown]
    assert rec.ranker.updates == 0  # a redelivered impression, then a click on an item it did not show
    np.testing.assert_allclose(rec.ranker.weights(), HAND_SET)


def test_a_delta_round_trips_and_a_record_of_other_features_is_refused() -> None:
    ranker = OnlineRanker(HAND_SET, 0.1, 0.0)
    ranker.learn(np.ones(len(FEATURES)), np.zeros((1, len(FEATURES))))
    delta, updates = decode_delta(encode_delta(ranker))
    np.testing.assert_allclose(delta, ranker.own)
    assert updates == 1
    for bad in (b"{}", b"nope", b'{"features": ["interest"], "delta": [1], "updates": 1}'):
        with pytest.raises(ValueError):
            decode_delta(bad)


def test_a_worker_keeps_its_id_in_its_state_directory(tmp_path: Path) -> None:
    assert worker_id(tmp_path / "state") == worker_id(tmp_path / "state") != worker_id(tmp_path / "other")
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "ranker-worker-id").write_text("abc123")  # the file's name before it was shared
    assert worker_id(tmp_path / "older") == "abc123"


def test_the_sync_takes_other_workers_deltas_of_its_generation_and_goes_on_from_its_own(tmp_path: Path) -> None:
    settings = Settings(app_id="app", ranker_generation=2, state_dir=str(tmp_path / "state"))
    ranker = OnlineRanker(HAND_SET, 0.1, 0.0)
    runtime = SimpleNamespace(
        settings=settings,
        recommender=SimpleNamespace(ranker=ranker),
        topics=SimpleNamespace(ranker="t"),
        metrics=XrecMetrics(),
    )
    sync = RankerWeightsSync(runtime, "localhost:9092")  # type: ignore[arg-type]
    other = OnlineRanker(HAND_SET, 0.1, 0.0)
    other.learn(np.ones(len(FEATURES)), np.zeros((1, len(FEATURES))))
    sync.apply(b"app/2/elsewhere", encode_delta(other))
    sync.apply(b"app/1/old-generation", encode_delta(other))
    sync.apply(b"other-app/2/x", encode_delta(other))
    sync.apply(sync.key.encode(), encode_delta(other))  # what this worker published before it restarted
    np.testing.assert_allclose(ranker.others, other.own)
    sync.caught_up()
    np.testing.assert_allclose(ranker.own, other.own)
    assert ranker.updates == 1
    sync.apply(b"app/2/elsewhere", None)  # gone from the topic
    np.testing.assert_allclose(ranker.others, np.zeros(len(FEATURES)))
