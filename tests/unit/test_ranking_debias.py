"""De-biasing interests by the catalog's mean item vector (``CatalogCentre``, ``debiased``).

Item vectors here share one strong direction, as a sentence encoder's do, plus a weaker topic
direction: raw cosine then favours whatever is most typical; the de-biased interest favours the topic.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from xrec.config import Settings
from xrec.events import Interaction, ItemUpsert
from xrec.pipeline import Recommender
from xrec.profile import ProfileParams, UserProfile
from xrec.ranking import Candidates, CatalogCentre, RankParams, candidate_queries, debiased, rank, score_candidates
from xrec.store import open_store

DIM = 8
T0 = 1_700_000_000_000
PP = ProfileParams(k=4, threshold=0.99, half_life_hours=24.0)
RP = RankParams(interest_temperature=20.0, trending_weight=0.0, mmr_lambda=1.0)


def item(shared: float, topic: int, strength: float) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[0] = shared
    v[1 + topic] = strength
    return v / np.linalg.norm(v)


def cands(vectors: dict[str, np.ndarray]) -> Candidates:
    return Candidates(
        ids=list(vectors),
        vectors=np.stack(list(vectors.values())),
        langs=["en"] * len(vectors),
        ts=np.zeros(len(vectors)),
    )


def test_the_centre_answers_only_once_it_has_seen_enough_items() -> None:
    centre = CatalogCentre(DIM, min_items=3)
    centre.add(np.stack([item(1.0, 0, 0.5), item(1.0, 1, 0.5)]))
    assert centre.vector is None
    centre.add(item(1.0, 2, 0.5))
    expected = np.mean([item(1.0, t, 0.5) for t in range(3)], axis=0)
    assert centre.vector == pytest.approx(expected, abs=1e-6)


def test_debiased_rows_are_unit_vectors_of_the_direction_minus_the_centre() -> None:
    directions = np.stack([item(1.0, 0, 0.5), item(1.0, 1, 0.5)])
    centre = np.mean([item(1.0, t, 0.5) for t in range(4)], axis=0).astype(np.float32)
    out = debiased(directions, centre, 1.0)
    expected = (directions[0] - centre) / np.linalg.norm(directions[0] - centre)
    assert out[0] == pytest.approx(expected, abs=1e-6)
    assert np.linalg.norm(out, axis=1) == pytest.approx([1.0, 1.0])
    assert debiased(directions, None, 1.0) is directions
    assert debiased(directions, centre, 0.0) is directions


def test_a_direction_the_centre_would_cancel_is_kept_as_it_was() -> None:
    d = item(1.0, 0, 0.5)[None, :]
    assert debiased(d, d[0].copy(), 1.0) == pytest.approx(d)


def test_the_debiased_interest_prefers_the_users_topic_to_a_merely_typical_item() -> None:
    profile = UserProfile(dim=DIM)
    for _ in range(3):
        profile.observe(item(1.0, 0, 0.6), 1.0, T0, "liked", "en", PP)
    catalog = [item(1.0, t, 0.6) for t in range(5)]
    centre = np.mean(catalog, axis=0).astype(np.float32)
    c = cands({"on-topic-but-unusual": item(0.3, 0, 1.0), "typical": item(1.0, 1, 0.05)})
    raw, _ = score_candidates(profile, c, RP, PP, T0)
    fair, _ = score_candidates(profile, c, RP, PP, T0, centre=centre)
    assert raw[1] > raw[0]  # raw cosine: the item nearest the shared direction wins
    assert fair[0] > fair[1]  # de-biased: the item on the user's topic wins
    no_debias, _ = score_candidates(profile, c, replace(RP, debias=0.0), PP, T0, centre=centre)
    assert no_debias == pytest.approx(raw)
    assert rank(profile, c, RP, PP, T0, centre=centre)[0].item_id == "on-topic-but-unusual"


def test_store_queries_carry_the_debiased_interests() -> None:
    profile = UserProfile(dim=DIM)
    profile.observe(item(1.0, 0, 0.6), 1.0, T0, "liked", "en", PP)
    centre = np.mean([item(1.0, t, 0.6) for t in range(5)], axis=0).astype(np.float32)
    [query] = candidate_queries(profile, RP, centre)
    assert query.vector == pytest.approx(debiased(profile.centroids, centre, 1.0)[0])
    [plain] = candidate_queries(profile, RP)
    assert plain.vector == pytest.approx(profile.centroids[0])


def test_the_engine_feeds_its_centre_from_indexed_items_and_from_events(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> CatalogCentre:
        settings = Settings(store_path=str(tmp_path / "store"), trending_weight=0.0)
        store = open_store(settings, dim=DIM)
        rec = Recommender(settings, store, encoder=None, dim=DIM, clock_ms=lambda: float(T0))
        await rec.start()
        vectors = [item(1.0, t % 5, 0.3 + 0.01 * t) for t in range(60)]
        await rec.handle_items(
            [ItemUpsert(item_id=f"i{t}", title="x", lang="en", ts=T0, vector=v) for t, v in enumerate(vectors)]
        )
        events = [
            Interaction(event_id=f"e{n}", user_id="u", item_id=f"i{n % 60}", type="click", ts=T0) for n in range(50)
        ]
        await rec.handle_events(events, {})
        await store.close()
        expected = (np.sum(vectors, axis=0) + np.sum([vectors[n % 60] for n in range(50)], axis=0)) / 110
        assert rec.centre.count == 110
        assert rec.centre.vector == pytest.approx(expected, abs=1e-5)
        return rec.centre

    asyncio.run(scenario())
