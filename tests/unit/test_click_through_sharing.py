"""Click-through counts shared between workers and kept through restarts: what a worker publishes, how
another adds it to its own, how a restarted worker takes its own back, and refusals of records that are
not counts."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from streams.click_through import ClickThroughSync, decode_counts, encode_counts
from tests.unit.test_pipeline import T0
from xrec.config import Settings
from xrec.exposure import ClickThrough, Counts, PublishedCounts
from xrec.metrics import XrecMetrics

pytestmark = pytest.mark.unit

HOUR_MS = 3_600_000
ITEMS = ["a", "b", "c", "d"]


def counting(ctr: ClickThrough, start: int, rounds: int = 50) -> ClickThrough:
    """Users shown all four items, taking "a" always, "b" one time in five, the others never."""
    for n in range(rounds):
        ts = start + n * 1000
        ctr.shown(ITEMS, ["en"] * 4, ts)
        ctr.clicked("a", "en", ts)
        if n % 5 == 0:
            ctr.clicked("b", "en", ts)
    return ctr


def lifts(ctr: ClickThrough) -> np.ndarray:
    return ctr.lift(ITEMS, ["en"] * 4)


def fresh() -> ClickThrough:
    return ClickThrough(half_life_hours=24, prior_impressions=20)


def test_a_worker_without_impressions_of_its_own_ranks_with_what_another_published() -> None:
    here = counting(fresh(), T0)
    there = fresh()
    for record in here.take_changes():
        there.report("w1", record)
    np.testing.assert_allclose(lifts(there), lifts(here))
    assert lifts(there)[0] > lifts(there)[1] > lifts(there)[2]


def test_counts_published_as_of_one_time_are_decayed_right_into_a_worker_whose_counts_started_later() -> None:
    here = counting(fresh(), T0)
    there = fresh()
    there.shown(["z"], ["en"], T0 + 48 * HOUR_MS)  # its own counts start two half-lives after the others'
    for record in here.take_changes():
        there.report("w1", record)
    a = there.explain("a", "en")
    assert a["impressions"] == pytest.approx(50 / 4, rel=0.01)  # 50 impressions, two half-lives ago
    assert a["clicks"] == pytest.approx(50 / 4, rel=0.01)


def test_a_worker_that_reports_again_replaces_its_counts_and_a_tombstone_removes_them() -> None:
    here, there = counting(fresh(), T0), fresh()
    for record in here.take_changes():
        there.report("w1", record)
    counting(here, T0 + 60_000)
    for record in here.take_changes():
        there.report("w1", record)
    assert there.explain("a", "en")["impressions"] == pytest.approx(here.explain("a", "en")["impressions"])
    here.discard("a")
    [gone] = [r for r in here.take_changes() if r.kind == "item"]
    assert gone.name == "a" and gone.counts is None
    there.report("w1", gone)
    assert there.explain("a", "en")["impressions"] == 0 and lifts(there)[0] == 0


def test_two_workers_counts_add_up() -> None:
    one, two, sum_of_both = counting(fresh(), T0), counting(fresh(), T0), fresh()
    counting(sum_of_both, T0)
    counting(sum_of_both, T0)
    for record in two.take_changes():
        one.report("w2", record)
    assert one.explain("a", "en")["impressions"] == pytest.approx(sum_of_both.explain("a", "en")["impressions"])
    assert one.explain("a", "en")["impressions_here"] == pytest.approx(two.explain("a", "en")["impressions"])
    np.testing.assert_allclose(lifts(one), lifts(sum_of_both))


def test_a_restarted_worker_goes_on_from_the_counts_it_published() -> None:
    before = counting(fresh(), T0)
    published = before.take_changes()
    after = fresh()
    after.shown(["a"], ["en"], T0 + 100_000)  # counted after the restart, before the topic was read
    for record in published:
        after.restore_own(record)
    before.shown(["a"], ["en"], T0 + 100_000)
    np.testing.assert_allclose(lifts(after), lifts(before))
    assert {(r.kind, r.name) for r in after.take_changes()} >= {(r.kind, r.name) for r in published}


def test_the_prior_weighs_the_same_however_long_ago_counting_started() -> None:
    recent = counting(fresh(), T0 + 100 * HOUR_MS, rounds=10)
    long_running = fresh()
    long_running.epoch = long_running.latest = T0  # counts kept relative to a time four days earlier
    counting(long_running, T0 + 100 * HOUR_MS, rounds=10)
    np.testing.assert_allclose(lifts(long_running), lifts(recent))


def test_an_item_explains_its_rates() -> None:
    ctr = counting(fresh(), T0)
    a = ctr.explain("a", "en")
    assert a["impressions"] == pytest.approx(50, rel=0.01) and a["clicks"] == pytest.approx(50, rel=0.01)
    assert isinstance(a["rate"], float) and isinstance(a["language_rate"], float)
    assert a["rate"] > a["language_rate"] and a["lift"] == pytest.approx(math.log(a["rate"] / a["language_rate"]))
    assert fresh().explain("a", "en")["rate"] is None


# --- the records on the topic --------------------------------------------------------------------


def test_a_count_round_trips_and_records_that_are_not_counts_are_refused() -> None:
    record = PublishedCounts("item", "a/b c", Counts(3.5, 1.0), T0)
    app_id, worker, back = decode_counts(*encode_counts("app", "w1", record))
    assert (app_id, worker, back) == ("app", "w1", record)
    gone = PublishedCounts("lang", "zh", None, T0)
    assert decode_counts(*encode_counts("app", "w1", gone))[2].counts is None
    key = encode_counts("app", "w1", record)[0]
    for bad_key, bad_value in [
        (b"nope", b"{}"),
        (b'["app", "w1", "item"]', b'{"shown": 1, "clicked": 0, "at": 1}'),
        (b'["app", "w1", "item", 7]', b'{"shown": 1, "clicked": 0, "at": 1}'),
        (None, b'{"shown": 1, "clicked": 0, "at": 1}'),
        (key, b'{"shown": -1, "clicked": 0, "at": 1}'),
        (key, b'{"shown": NaN, "clicked": 0, "at": 1}'),
        (key, b'{"shown": 1e999, "clicked": 0, "at": 1}'),
        (key, b'{"shown": "many", "clicked": 0, "at": 1}'),
        (key, b'{"clicked": 0, "at": 1}'),
    ]:
        with pytest.raises(ValueError):
            decode_counts(bad_key, bad_value)


def sync_of(tmp_path: Path, ctr: ClickThrough) -> ClickThroughSync:
    runtime = SimpleNamespace(
        settings=Settings(app_id="app", state_dir=str(tmp_path / "state")),
        recommender=SimpleNamespace(exposure=ctr),
        topics=SimpleNamespace(click_through="t"),
        metrics=XrecMetrics(),
    )
    return ClickThroughSync(runtime, "localhost:9092")  # type: ignore[arg-type]


def test_the_sync_adds_its_apps_other_workers_and_goes_on_from_its_own(tmp_path: Path) -> None:
    ctr = fresh()
    sync = sync_of(tmp_path, ctr)
    elsewhere = counting(fresh(), T0).take_changes()
    for record in elsewhere:
        sync.apply(*encode_counts("app", "w-elsewhere", record))
        sync.apply(*encode_counts("other-app", "w-elsewhere", record))  # another app's: not counted
        sync.apply(*encode_counts("app", sync.worker, record))  # what this worker published before its restart
    sync.read(b"garbage", b"\xff")  # logged, counted and skipped
    unreadable = sync.metrics.shared_state_records.labels(state="click_through", direction="read", outcome="unreadable")
    assert unreadable._value.get() == 1
    assert ctr.explain("a", "en")["impressions"] == pytest.approx(50, rel=0.01)
    assert ctr.explain("a", "en")["impressions_here"] == 0
    sync.caught_up()
    assert ctr.explain("a", "en")["impressions"] == pytest.approx(100, rel=0.01)
    assert ctr.explain("a", "en")["impressions_here"] == pytest.approx(50, rel=0.01)
    for record in elsewhere:  # the echo of what it publishes from now on changes nothing
        sync.apply(*encode_counts("app", sync.worker, record))
    assert ctr.explain("a", "en")["impressions"] == pytest.approx(100, rel=0.01)


def test_the_sync_drops_a_count_its_worker_published_as_gone(tmp_path: Path) -> None:
    ctr = fresh()
    sync = sync_of(tmp_path, ctr)
    counted = counting(fresh(), T0)
    for record in counted.take_changes():
        sync.apply(*encode_counts("app", sync.worker, record))
    counted.discard("a")
    for record in counted.take_changes():
        sync.apply(*encode_counts("app", sync.worker, record))
    sync.caught_up()
    assert ctr.explain("a", "en")["impressions"] == 0
    assert ctr.explain("b", "en")["impressions"] == pytest.approx(50, rel=0.01)


def test_changes_that_could_not_be_published_are_taken_again() -> None:
    ctr = counting(fresh(), T0, rounds=1)
    changes = ctr.take_changes()
    assert ctr.take_changes() == []
    ctr.put_back(changes)
    assert {(r.kind, r.name) for r in ctr.take_changes()} == {(r.kind, r.name) for r in changes}
