"""A/B variants: how XREC_VARIANTS is read, how users are assigned, and two variants in one engine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.unit.test_pipeline import DIM, Clock, catalog, event
from xrec.config import Settings, SettingsError, VariantSpec, parse_variants
from xrec.metrics import XrecMetrics
from xrec.pipeline import Recommender
from xrec.store import open_store
from xrec.variants import Variants

pytestmark = pytest.mark.unit

USERS = [f"user-{n}" for n in range(20_000)]


def test_no_variants_setting_means_everyone_in_variant_a_with_the_settings_as_they_are() -> None:
    assert parse_variants("") == (VariantSpec("A", 1.0),)
    variants = Variants(Settings(mmr_lambda=0.7))
    assert variants.names == ("A",) and variants.of("anyone") == "A"
    assert variants.settings["A"].mmr_lambda == 0.7


def test_a_variants_spec_gives_names_shares_and_typed_overrides() -> None:
    specs = parse_variants(" A=70 ;B=30 ctr_weight=0 language_policy=prefer list_length=5; ")
    assert specs == (
        VariantSpec("A", 70.0),
        VariantSpec("B", 30.0, (("ctr_weight", 0.0), ("language_policy", "prefer"), ("list_length", 5))),
    )


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("A", "not name=share"),
        ("A=50; B/2=50", "not name=share"),
        ("A=0; B=50", "positive number"),
        ("A=fifty", "positive number"),
        ("A=nan", "positive number"),
        ("A=50; A=50", "twice"),
        ("A=50; B=50 interests_k=2", "cannot set 'interests_k=2'"),
        ("A=50; B=50 ctr_weight", "cannot set 'ctr_weight'"),
        ("A=50; B=50 ctr_weight=lots", "XREC_CTR_WEIGHT='lots'"),
        ("A=50; B=50 language_policy=sometimes", "XREC_LANGUAGE_POLICY='sometimes'"),
    ],
)
def test_a_broken_variants_spec_is_refused_when_the_settings_are_read(spec: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says.replace("(", r"\(").replace("[", r"\[")):
        Settings.from_env({"XREC_VARIANTS": spec})


def test_users_are_split_by_the_shares_and_each_one_lands_the_same_way_every_time() -> None:
    settings = Settings(variants="A=50; B=30; C=20")
    first, again = Variants(settings), Variants(Settings.from_env({"XREC_VARIANTS": "A=50; B=30; C=20"}))
    assigned = [first.of(u) for u in USERS]
    assert assigned == [again.of(u) for u in USERS]  # a pure function of the id: every worker, every restart
    shares = {k: v / len(USERS) for k, v in Counter(assigned).items()}
    assert shares == pytest.approx({"A": 0.5, "B": 0.3, "C": 0.2}, abs=0.015)


def test_overrides_do_not_move_users_and_growing_a_variant_moves_only_users_into_it() -> None:
    plain = Variants(Settings(variants="A=50; B=50"))
    tuned = Variants(Settings(variants="A=50 mmr_lambda=0.8; B=50 ctr_weight=0"))
    assert [plain.of(u) for u in USERS] == [tuned.of(u) for u in USERS]
    grown = Variants(Settings(variants="A=40; B=60"))
    moved = [(plain.of(u), grown.of(u)) for u in USERS if plain.of(u) != grown.of(u)]
    assert moved and all(change == ("A", "B") for change in moved)
    assert len(moved) / len(USERS) == pytest.approx(0.1, abs=0.015)


async def test_two_variants_rank_side_by_side_in_one_engine_each_with_its_settings(tmp_path: Path) -> None:
    settings = Settings(
        store_backend="edge", store_path=str(tmp_path / "store"), variants="A=50; B=50 list_length=2", list_length=6
    )
    metrics = XrecMetrics(variants=["A", "B"])
    rec = Recommender(settings, open_store(settings, dim=DIM), encoder=None, dim=DIM, clock_ms=Clock(), metrics=metrics)
    await rec.start()
    await rec.handle_items(catalog())
    users = [f"u{n}" for n in range(40)]
    result = await rec.handle_events([event(u, "t1-en-0") for u in users], {})
    by_user = {lst.user_id: lst for lst in result.lists}
    assert set(by_user) == set(users)
    for user, lst in by_user.items():
        assert lst.variant == rec.variants.of(user)
        assert len(lst.items) == (2 if lst.variant == "B" else 6)
    assert {lst.variant for lst in by_user.values()} == {"A", "B"}
    cold = await rec.recommend({"new-user": rec.load_profile({}, "new-user")}, {})
    assert cold[0].variant == rec.variants.of("new-user")


def test_lists_and_events_are_counted_by_variant() -> None:
    m = XrecMetrics(variants=["A", "B"])
    m.list_published(5, variant="B")
    m.variant_event("B", "impression", items_shown=7)
    m.variant_event("B", "click")
    sample = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in m.registry.collect() for s in f.samples}
    assert sample[("xrec_lists_published_total", (("variant", "B"),))] == 1
    assert sample[("xrec_lists_published_total", (("variant", "A"),))] == 0  # declared at zero
    assert sample[("xrec_variant_items_shown_total", (("variant", "B"),))] == 7
    assert sample[("xrec_variant_events_total", (("type", "click"), ("variant", "B")))] == 1
    assert sample[("xrec_variant_events_total", (("type", "click"), ("variant", "A")))] == 0
