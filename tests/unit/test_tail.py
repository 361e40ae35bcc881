"""``xrec tail`` formatting: a list reads as user, strategy and titled items; titles come from item
records (deletes forget them, the bound holds); ``--json`` adds titles without changing the list."""

from __future__ import annotations

import orjson

from xrec.commands.tail import ItemInfo, _remember, format_list, with_titles

LIST = {
    "user_id": "U1",
    "generated_at": 1731412486042,
    "trigger_event_id": "ev-9",
    "strategy": "multi-interest",
    "variant": "A",
    "items": [
        {"item_id": "N1", "score": 0.83, "lang": "ja", "because": "N0"},
        {"item_id": "N2", "score": 0.5, "lang": "de", "because": None},
    ],
}
TITLES = {"N1": ItemInfo("ジャズ喫茶の名盤", "ja")}


def test_a_list_prints_user_strategy_then_each_item_with_score_language_and_title() -> None:
    text = format_list(LIST, TITLES)
    head, first, second = text.splitlines()
    assert head.startswith("U1  multi-interest (variant A)") and "after event ev-9" in head
    assert first.split() == ["1.", "0.830", "ja", "ジャズ喫茶の名盤", "[N1]"]
    assert second.split() == ["2.", "0.500", "de", "[N2]"]  # no title known: the id alone


def test_an_empty_list_says_so() -> None:
    assert "(empty list)" in format_list({**LIST, "items": []}, {})


def test_json_output_adds_titles_where_known_and_keeps_every_field() -> None:
    out = with_titles(LIST, TITLES)
    assert out["items"][0] == {**LIST["items"][0], "title": "ジャズ喫茶の名盤"}  # type: ignore[index]
    assert out["items"][1] == LIST["items"][1]  # type: ignore[index]
    assert {k: v for k, v in out.items() if k != "items"} == {k: v for k, v in LIST.items() if k != "items"}


def test_titles_follow_upserts_and_deletes_and_stop_growing_at_the_limit() -> None:
    titles: dict[str, ItemInfo] = {}
    _remember(titles, b"N1", orjson.dumps({"item_id": "N1", "title": "Old", "lang": "en"}), limit=2)
    _remember(titles, b"N1", orjson.dumps({"item_id": "N1", "title": "New", "lang": "en"}), limit=2)
    _remember(titles, b"N2", orjson.dumps({"item_id": "N2", "body": "Only a body", "lang": "fr"}), limit=2)
    _remember(titles, b"N3", orjson.dumps({"item_id": "N3", "title": "Over the limit"}), limit=2)
    assert titles == {"N1": ItemInfo("New", "en"), "N2": ItemInfo("Only a body", "fr")}
    _remember(titles, b"N1", orjson.dumps({"item_id": "N1", "deleted": True}), limit=2)
    _remember(titles, b"N2", None, limit=2)  # a tombstone on the compacted items topic
    _remember(titles, b"N9", b"not json", limit=2)
    assert titles == {}
