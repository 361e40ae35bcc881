"""The demo's closing figures: latency percentiles from event ts to arrival, language and topic shares
over each user's latest list, coverage over every list, and the terminal view's CJK-aware clipping."""

from __future__ import annotations

import orjson

from xrec.demo.catalog import DemoItem
from xrec.demo.simulate import DemoUser, PlannedEvent
from xrec.demo.summary import DemoStats, percentile
from xrec.demo.view import clip, display_width
from xrec.events import Impression, Limits, parse_event

T0 = 1_763_900_000_000
CATALOG = [
    DemoItem("jazz-de", "jazz", "de", "Jazz auf Deutsch", "b", T0),
    DemoItem("jazz-ja", "jazz", "ja", "ジャズ", "b", T0),
    DemoItem("jazz-fr", "jazz", "fr", "Le jazz", "b", T0),
    DemoItem("cook-de", "cooking", "de", "Kochen", "b", T0),
    DemoItem("cook-ja", "cooking", "ja", "料理", "b", T0),
]
ANNA = DemoUser("anna", "de", "jazz")


def _list(user: str, trigger: str, *items: tuple[str, str]) -> dict[str, object]:
    return {
        "user_id": user,
        "generated_at": T0,
        "trigger_event_id": trigger,
        "strategy": "multi-interest",
        "items": [{"item_id": i, "score": 0.5, "lang": lang, "because": None} for i, lang in items],
    }


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_latency_runs_from_the_event_timestamp_to_the_arrival_of_the_list_it_triggered() -> None:
    stats = DemoStats([ANNA], CATALOG)
    stats.record_sent(PlannedEvent("anna", "jazz-de", "click", "de"), "e1", T0)
    stats.record_sent(PlannedEvent("anna", "jazz-de", "like", "de"), "e2", T0 + 100)
    stats.record_list(_list("anna", "e1", ("jazz-ja", "ja")), "anna", T0 + 40)
    stats.record_list(_list("anna", "e2", ("jazz-ja", "ja")), "anna", T0 + 100 + 60)
    summary = stats.summary()
    assert summary["latency_ms"]["p50"] == 40.0
    assert summary["latency_ms"]["p99"] == 60.0
    assert summary["lists_received"] == 2 and summary["events_sent"] == 2


def test_shares_count_the_latest_list_and_a_language_the_user_read_is_not_new() -> None:
    stats = DemoStats([ANNA], CATALOG)
    stats.record_sent(PlannedEvent("anna", "jazz-de", "click", "de"), "e1", T0)
    stats.record_list(_list("anna", "e1", ("cook-ja", "ja")), "anna", T0 + 5)  # replaced below
    stats.record_list(
        _list("anna", "e1", ("jazz-ja", "ja"), ("jazz-fr", "fr"), ("cook-de", "de"), ("cook-ja", "ja")),
        "anna",
        T0 + 9,
    )
    summary = stats.summary()
    assert summary["share_new_language"] == 0.75  # ja, fr, ja; de is hers
    assert summary["share_on_topic"] == 0.5
    assert summary["share_on_topic_new_language"] == 0.5
    assert summary["coverage"] == 4 / 5  # every list counts: cook-ja, jazz-ja, jazz-fr, cook-de
    assert summary["languages_in_final_lists"] == ["de", "fr", "ja"]


def test_a_user_is_done_only_when_a_list_answers_their_latest_event() -> None:
    stats = DemoStats([ANNA], CATALOG)
    stats.record_sent(PlannedEvent("anna", "jazz-de", "click", "de"), "e1", T0)
    stats.record_sent(PlannedEvent("anna", "jazz-de", "like", "de"), "e2", T0 + 1)
    stats.record_list(_list("anna", "e1", ("jazz-ja", "ja")), "anna", T0 + 5)
    assert stats.users_done() == []
    stats.record_list(_list("anna", "e2", ("jazz-fr", "fr")), "anna", T0 + 6)
    assert stats.users_done() == ["anna"]


def test_tombstones_and_lists_of_other_users_are_counted_but_not_scored() -> None:
    stats = DemoStats([ANNA], CATALOG)
    assert stats.record_list(_list("bob", "x", ("jazz-ja", "ja")), "bob", T0) is None
    assert stats.record_list(None, "anna", T0) is None
    summary = stats.summary()
    assert summary["tombstones"] == 1 and summary["lists_received"] == 0
    assert summary["share_on_topic"] is None and summary["coverage"] == 0.0


def test_clip_counts_cjk_characters_as_two_columns_and_pads_to_the_width() -> None:
    assert clip("abc", 5) == "abc  "
    assert display_width(clip("ジャズ喫茶の名盤", 9)) == 9
    assert clip("ジャズ喫茶の名盤", 9).rstrip().endswith("…")
    assert display_width(clip("Le festival de jazz de Marciac", 10)) == 10


def test_a_list_shown_to_its_reader_becomes_an_impression_event_and_later_clicks_on_it_are_counted() -> None:
    stats = DemoStats([ANNA], CATALOG)
    stats.record_sent(PlannedEvent("anna", "jazz-de", "click", "de"), "e1", T0)
    value = {**_list("anna", "e1", ("jazz-ja", "ja"), ("jazz-fr", "fr")), "list_id": "0123456789abcdef"}
    lst = stats.record_list(value, "anna", T0 + 5)
    assert lst is not None
    shown = lst.impression(T0 + 6, "imp-1")
    assert parse_event(orjson.dumps(shown), Limits()) == Impression(
        "imp-1", "anna", ("jazz-ja", "jazz-fr"), T0 + 6, (0, 1), "0123456789abcdef"
    )
    stats.record_shown(lst)
    stats.record_sent(PlannedEvent("anna", "jazz-fr", "click", "de"), "e2", T0 + 10)  # shown: counted
    stats.record_sent(PlannedEvent("anna", "cook-de", "click", "de"), "e3", T0 + 11)  # never shown
    stats.record_sent(PlannedEvent("anna", "jazz-ja", "view", "de"), "e4", T0 + 12)  # shown, but not a click
    assert stats.summary()["impressions"] == {"sent": 1, "clicks_on_shown_items": 1, "clicks": 3}
