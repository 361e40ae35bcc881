"""The language-neutral space (``xrec.space``): statistics, centres, query directions, and the engine on them.

The synthetic vectors here are built like a multilingual encoder's: one direction every text shares, one
per language, and a weaker one per topic. Raw cosine then matches language first; the neutral space
must match topic first.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from xrec.config import Settings
from xrec.events import Interaction, ItemDelete, ItemUpsert
from xrec.pipeline import Recommender
from xrec.profile import ProfileParams, UserProfile
from xrec.ranking import Candidates, RankParams, candidate_queries, score_candidates
from xrec.space import MIN_ITEMS, PRIOR_ITEMS, LanguageSpace, LanguageStats
from xrec.store import open_store

DIM = 16
T0 = 1_700_000_000_000
LANGS = ("en", "zh", "sw")
TOPICS = 4
PP = ProfileParams(k=1, threshold=0.0, half_life_hours=24.0)
RP = RankParams(trending_weight=0.0, mmr_lambda=1.0)


def encoded(lang: int, topic: int, rng: np.random.Generator, topic_strength: float = 0.35) -> np.ndarray:
    """Shared direction + a strong language direction + a weaker topic direction + noise, unit length."""
    v = np.zeros(DIM)
    v[0] = 1.0
    v[1 + lang] = 0.6
    v[4 + topic] = topic_strength
    v += rng.normal(0, 0.04, DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def catalog(per_cell: int = 12, seed: int = 0) -> list[tuple[str, str, int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (f"{LANGS[lang]}-{topic}-{n}", LANGS[lang], topic, encoded(lang, topic, rng))
        for lang in range(len(LANGS))
        for topic in range(TOPICS)
        for n in range(per_cell)
    ]


def space_of(items: list[tuple[str, str, int, np.ndarray]], **kwargs: object) -> LanguageSpace:
    space = LanguageSpace(DIM, **kwargs)  # type: ignore[arg-type]
    for _, lang, _, v in items:
        space.count("p", lang, v[None, :])
    return space


# --- statistics --------------------------------------------------------------------------------------


def test_language_stats_add_remove_and_merge_like_sums() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, DIM)), rng.normal(size=(2, DIM))
    stats = LanguageStats(DIM)
    stats.add("en", a)
    stats.add("zh", b)
    stats.remove("en", a[:1])
    assert stats.counts == {"en": 2, "zh": 2}
    np.testing.assert_allclose(stats.sums["en"], a[1:].sum(axis=0))
    other = LanguageStats(DIM)
    other.add("en", a[:1])
    total = LanguageStats.total(DIM, [stats, other])
    assert total.counts == {"en": 3, "zh": 2}
    np.testing.assert_allclose(total.sums["en"], a.sum(axis=0))
    stats.remove("zh", b)
    assert "zh" not in stats.counts and "zh" not in stats.sums  # a language nobody writes in any more is gone


def test_language_stats_survive_bytes_exactly() -> None:
    stats = LanguageStats(DIM)
    stats.add("zh-hant", np.random.default_rng(2).normal(size=(4, DIM)))
    stats.add("eng", np.ones((1, DIM)))
    back = LanguageStats.from_bytes(stats.to_bytes())
    assert back.counts == stats.counts
    for lang in stats.sums:
        np.testing.assert_array_equal(back.sums[lang], stats.sums[lang])
    with pytest.raises(ValueError):
        LanguageStats.from_bytes(b"nope" + stats.to_bytes())


def test_the_space_is_the_sum_of_its_parts_and_a_part_can_be_taken_from_elsewhere() -> None:
    items = catalog()
    whole = space_of(items)
    split = LanguageSpace(DIM)
    for n, (_, lang, _, v) in enumerate(items):
        split.count(f"part-{n % 3}", lang, v[None, :])
    shared = LanguageSpace(DIM)
    for key in ("part-0", "part-1", "part-2"):
        shared.set_part(key, split.part(key))
    for space in (split, shared):
        assert space.stats.counts == whole.stats.counts
        mine, wanted = space.view().mean, whole.view().mean
        assert mine is not None and wanted is not None
        np.testing.assert_allclose(mine, wanted, atol=1e-6)


# --- the neutral space -------------------------------------------------------------------------------


def test_below_the_minimum_catalog_vectors_are_compared_as_encoded() -> None:
    items = catalog(per_cell=1)
    assert len(items) < MIN_ITEMS
    view = space_of(items).view()
    assert not view.active
    vectors = np.stack([v for *_, v in items])
    assert view.neutral(vectors, [lang for _, lang, _, _ in items]) is not None
    np.testing.assert_array_equal(view.neutral(vectors, ["en"] * len(items)), vectors)


def test_an_item_is_its_vector_minus_its_languages_centre_at_unit_length() -> None:
    items = catalog()
    space = space_of(items)
    view = space.view()
    stats = space.stats
    mean = sum(stats.sums.values()) / stats.items
    zh = stats.sums["zh"] / stats.counts["zh"]
    centre = (stats.counts["zh"] * zh + PRIOR_ITEMS * mean) / (stats.counts["zh"] + PRIOR_ITEMS)
    x = items[60][3]
    want = (x - centre) / np.linalg.norm(x - centre)
    np.testing.assert_allclose(view.neutral(x, ["zh"])[0], want, atol=1e-5)


def test_a_language_with_few_items_is_centred_mostly_by_the_catalog_mean() -> None:
    items = [*catalog(), ("lg-0", "lg", 0, catalog(per_cell=1, seed=9)[0][3])]
    view = space_of(items).view()
    # One Luganda item: its centre is 1/(1+k) of the way from the catalog mean to that item.
    x = items[-1][3]
    mean = view.mean
    assert mean is not None
    np.testing.assert_allclose(view.centres["lg"], mean + (x - mean) / (1 + PRIOR_ITEMS), atol=1e-5)


def test_query_directions_have_no_language_component_left() -> None:
    items = catalog()
    view = space_of(items).view()
    assert len(view.basis) == len(LANGS) - 1
    directions = view.query_directions(np.stack([v for *_, v in items[:20]]))
    offsets = np.stack([view.centres[lang] - view.mean for lang in LANGS])
    np.testing.assert_allclose(directions @ offsets.T, 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-5)


def test_a_plain_cosine_search_with_a_query_direction_ranks_as_the_centred_comparison() -> None:
    """Why the store can keep raw vectors: for d orthogonal to the language offsets, x·d and (x − centre)·d
    differ by one constant for every language, so the store's top answers are the centred ones."""
    items = catalog()
    view = space_of(items).view()
    vectors = np.stack([v for *_, v in items])
    langs = [lang for _, lang, _, _ in items]
    d = view.query_directions(view.neutral(vectors[:3], langs[:3]).mean(axis=0))[0]
    raw = vectors @ d
    centred = np.stack([vectors[i] - view.centres[lang] for i, lang in enumerate(langs)]) @ d
    np.testing.assert_allclose(raw - centred, (raw - centred)[0], atol=1e-5)


def test_a_vector_without_a_language_has_the_known_language_offsets_projected_out() -> None:
    items = catalog()
    view = space_of(items).view()
    x = items[5][3]
    got = view.neutral(x, ["und"])[0]
    offsets = np.stack([view.centres[lang] - view.mean for lang in LANGS])
    np.testing.assert_allclose(got @ offsets.T, 0.0, atol=1e-5)


def test_in_the_neutral_space_topic_outranks_language() -> None:
    items = catalog()
    view = space_of(items).view()
    vectors = np.stack([v for *_, v in items])
    langs = [lang for _, lang, _, _ in items]
    topics = np.asarray([t for _, _, t, _ in items])
    profile = UserProfile(dim=DIM)
    for i in (0, 1, 2):  # three English items of topic 0
        profile.observe(view.neutral(vectors[i], ["en"])[0], 1.0, T0, items[i][0], "en", PP)
    cands = Candidates(ids=[i for i, *_ in items], vectors=vectors, langs=langs, ts=np.zeros(len(items), np.int64))
    raw_profile = UserProfile(dim=DIM)
    for i in (0, 1, 2):
        raw_profile.observe(vectors[i], 1.0, T0, items[i][0], "en", PP)
    raw, _ = score_candidates(raw_profile, cands, RP, PP, T0)
    neutral, _ = score_candidates(profile, cands, RP, PP, T0, space=view)
    top_raw, top_neutral = np.argsort(-raw)[:20], np.argsort(-neutral)[:20]
    assert {langs[i] for i in top_raw} == {"en"}  # as encoded, language wins
    assert set(topics[top_neutral]) == {0}  # neutral: every top item is on the topic
    assert {langs[i] for i in top_neutral} == set(LANGS)  # in every language


def test_catalog_mode_removes_only_the_shared_direction() -> None:
    items = catalog()
    view = space_of(items, mode="catalog").view()
    assert not view.centres and not len(view.basis)
    x = items[0][3]
    mean = view.mean
    assert mean is not None
    np.testing.assert_allclose(view.neutral(x, ["en"])[0], (x - mean) / np.linalg.norm(x - mean), atol=1e-5)
    assert not space_of(items, mode="raw").view().active


def test_store_queries_carry_the_interests_with_language_offsets_projected_out() -> None:
    items = catalog()
    view = space_of(items).view()
    profile = UserProfile(dim=DIM)
    profile.observe(view.neutral(items[0][3], ["en"])[0], 1.0, T0, "liked", "en", PP)
    [query] = candidate_queries(profile, RP, view)
    np.testing.assert_allclose(query.vector, view.query_directions(profile.centroids)[0], atol=1e-6)
    [plain] = candidate_queries(profile, RP)
    np.testing.assert_allclose(plain.vector, profile.centroids[0])


def test_a_profile_of_raw_vectors_is_moved_into_the_space() -> None:
    items = catalog()
    view = space_of(items).view()
    old = UserProfile(dim=DIM, neutral=False)
    old.observe(items[0][3], 1.0, T0, "a", "en", PP)
    old.observe(items[1][3], -1.0, T0, "b", "en", PP, dislike=True)
    back = UserProfile.from_bytes(old.to_bytes())
    assert not back.neutral
    back.move_to(view)
    assert back.neutral
    np.testing.assert_allclose(back.centroids, view.neutral(old.centroids, ["und"]), atol=1e-6)
    assert back.negative is not None and old.negative is not None
    assert np.linalg.norm(back.negative) == pytest.approx(np.linalg.norm(old.negative), rel=1e-5)
    assert UserProfile.from_bytes(back.to_bytes()).neutral


# --- the engine keeps the statistics -----------------------------------------------------------------


def engine(tmp_path, **settings: object) -> Recommender:  # type: ignore[no-untyped-def]
    s = Settings(store_path=str(tmp_path / "store"), trending_weight=0.0, **settings)  # type: ignore[arg-type]
    return Recommender(s, open_store(s, dim=DIM), encoder=None, dim=DIM, clock_ms=lambda: float(T0))


def upserts(items: list[tuple[str, str, int, np.ndarray]]) -> list[ItemUpsert]:
    return [ItemUpsert(item_id=i, title="t", lang=lang, ts=T0, vector=v) for i, lang, _, v in items]


def test_the_engine_counts_each_item_once_under_its_language(tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = catalog()

    async def scenario() -> None:
        rec = engine(tmp_path, language_detection="off")
        await rec.start()
        await rec.handle_items(upserts(items))
        await rec.handle_items(upserts(items[:10]))  # sent again: replaced, not counted twice
        stats = rec.space.stats
        assert stats.counts == {lang: TOPICS * 12 for lang in LANGS}
        moved = [(items[0][0], "zh", 0, items[0][3])]  # relabelled: moves from en to zh
        await rec.handle_items(upserts(moved))
        await rec.handle_items([ItemDelete(items[1][0])])
        stats = rec.space.stats
        assert stats.counts == {"en": TOPICS * 12 - 2, "zh": TOPICS * 12 + 1, "sw": TOPICS * 12}
        want = np.sum([v for _, lang, _, v in items if lang == "en"][2:], axis=0)
        np.testing.assert_allclose(stats.sums["en"], want, atol=1e-5)
        counted = rec.space.part("local")
        await rec.handle_items(upserts(items[2:4]), counted=True)  # a replay the statistics already hold
        assert rec.space.part("local").counts == counted.counts
        await rec.store.close()

    asyncio.run(scenario())


def test_the_engine_hands_the_part_to_before_store_before_it_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = catalog()

    async def scenario() -> None:
        rec = engine(tmp_path, language_detection="off")
        await rec.start()
        seen: list[tuple[dict[str, int], int]] = []

        async def before_store(stats: LanguageStats) -> None:
            seen.append((dict(stats.counts), await rec.store.count()))

        await rec.handle_items(upserts(items[:5]), part="items/0", before_store=before_store)
        assert seen == [({"en": 5}, 0)]  # the statistics went out while the store was still empty
        assert await rec.store.count() == 5
        await rec.store.close()

    asyncio.run(scenario())


def test_a_reader_of_one_language_is_served_the_topic_in_every_language(tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = catalog()

    async def scenario() -> list[str]:
        rec = engine(tmp_path, language_detection="off", mmr_lambda=1.0, interest_threshold=0.0)
        await rec.start()
        await rec.handle_items(upserts(items))
        clicks = [Interaction(f"e{n}", "u", items[n][0], "click", T0 + n) for n in range(3)]
        result = await rec.handle_events(clicks, {})
        await rec.store.close()
        return [x.item_id for x in result.lists[0].items]

    served = asyncio.run(scenario())
    topics = {i: t for i, _, t, _ in items}
    langs = {i: lang for i, lang, _, _ in items}
    assert all(topics[i] == 0 for i in served), served
    assert {langs[i] for i in served} == set(LANGS), served
    raw = asyncio.run(_raw_list(tmp_path / "raw", items))
    assert {langs[i] for i in raw} == {"en"}  # the same engine comparing raw vectors never leaves English


async def _raw_list(path, items) -> list[str]:  # type: ignore[no-untyped-def]
    rec = engine(path, language_detection="off", mmr_lambda=1.0, interest_threshold=0.0, vector_space="raw")
    await rec.start()
    await rec.handle_items(upserts(items))
    result = await rec.handle_events([Interaction(f"e{n}", "u", items[n][0], "click", T0 + n) for n in range(3)], {})
    await rec.store.close()
    return [x.item_id for x in result.lists[0].items]


def test_rank_and_profile_params_default_to_the_settings_defaults() -> None:
    assert RankParams() == RankParams.from_settings(Settings())
    assert ProfileParams() == ProfileParams.from_settings(Settings())
    assert RankParams.from_settings(Settings(query_expansion=7)).query_expansion == 7
    assert replace(RP, query_expansion=3).query_expansion == 3
