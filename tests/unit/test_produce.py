"""``xrec produce`` input handling: JSON Lines and CSV become contract records keyed right, and every
line that cannot be sent is reported with its line number and reason."""

from __future__ import annotations

import io

import pytest

from xrec.commands.produce import (
    Line,
    convert_row,
    decode_lines,
    detect_format,
    read_csv,
    read_jsonl,
    read_lines,
    record_key,
    validate,
)
from xrec.events import Limits

TS = 1731412486000


def _numbered(text: str) -> list[tuple[int, str | None]]:
    return list(decode_lines(io.BytesIO(text.encode())))


def test_json_lines_are_read_with_their_line_numbers_and_blank_lines_are_skipped_silently() -> None:
    text = '{"item_id": "a", "title": "x"}\n\nnot json\n[1, 2]\n{"item_id": "b", "title": "y"}\n'
    lines = list(read_jsonl(_numbered(text)))
    assert [(line.number, line.value is not None) for line in lines] == [(1, True), (3, False), (4, False), (5, True)]
    assert lines[1].error is not None and lines[1].error.startswith("not_json")
    assert lines[2].error is not None and lines[2].error.startswith("not_object")


def test_a_line_that_is_not_utf8_is_reported_not_guessed() -> None:
    raw = io.BytesIO(b'{"item_id": "a", "title": "x"}\n{"item_id": "\xff"}\n')
    lines = list(read_jsonl(decode_lines(raw)))
    assert lines[1] == Line(2, error="invalid_utf8: the line is not valid UTF-8")


def test_csv_cells_become_lists_numbers_and_booleans_and_empty_cells_are_left_out() -> None:
    text = (
        "item_id,title,lang,tags,available,ts,category\n"
        "N1,Hello,en,royals|  news |,true,1731412486000,\n"
        'N2,"Comma, inside",de,,0,2024-11-12T12:00:00Z,sport\n'
    )
    lines = list(read_csv(_numbered(text)))
    assert lines[0] == Line(
        2,
        {"item_id": "N1", "title": "Hello", "lang": "en", "tags": ["royals", "news"], "available": True, "ts": TS},
    )
    assert lines[1].value == {
        "item_id": "N2",
        "title": "Comma, inside",
        "lang": "de",
        "available": False,
        "ts": "2024-11-12T12:00:00Z",
        "category": "sport",
    }


def test_csv_ratings_and_vectors_are_numbers_and_a_bad_number_is_a_skipped_line() -> None:
    assert convert_row({"rating": "4", "vector": "0.5|-1|2e-3"}) == {"rating": 4, "vector": [0.5, -1, 0.002]}
    assert convert_row({"rating": "4.5"}) == {"rating": 4.5}
    text = "user_id,item_id,type,ts,rating\nU1,N1,review,1731412486000,five\nU1,N1,click,1731412486000,,extra\n"
    lines = list(read_csv(_numbered(text)))
    assert [line.number for line in lines] == [2, 3]
    assert lines[0].error is not None and "rating must be a number" in lines[0].error
    assert lines[1].error is not None and "cells but the header has" in lines[1].error


def test_records_that_break_the_contract_are_refused_with_the_parsers_reason() -> None:
    limits = Limits()
    good = Line(1, {"user_id": "U1", "item_id": "N1", "type": "click", "ts": TS})
    assert validate("events", good, limits) == good
    bad_type = Line(2, {"user_id": "U1", "item_id": "N1", "type": "teleport", "ts": TS})
    assert (validate("events", bad_type, limits).error or "").startswith("unknown_event_type")
    seconds = Line(3, {"item_id": "N1", "title": "t", "ts": 1731412486})
    assert (validate("items", seconds, limits).error or "").startswith("bad_timestamp")
    assert (validate("control", Line(4, {"type": "forget_user"}), limits).error or "").startswith("missing_field")


def test_without_validation_only_the_key_field_is_required() -> None:
    limits = Limits()
    odd = Line(1, {"user_id": "U1", "type": "teleport"})
    assert validate("events", odd, limits, check_contract=False) == odd
    assert validate("items", Line(2, {"title": "no id"}), limits, check_contract=False).error is not None


def test_items_are_keyed_by_item_id_and_events_and_control_by_user_id() -> None:
    assert record_key("items", {"item_id": 42, "user_id": "U"}) == b"42"
    assert record_key("events", {"item_id": "N", "user_id": "U7"}) == b"U7"
    assert record_key("control", {"type": "forget_user", "user_id": "U7"}) == b"U7"


@pytest.mark.parametrize(
    ("path", "first", "expected"),
    [
        ("items.csv", '{"a": 1}', "csv"),
        ("items.jsonl", "a,b", "jsonl"),
        ("-", '  {"item_id": 1}', "jsonl"),
        ("-", "item_id,title", "csv"),
        ("data.txt", None, "csv"),
    ],
)
def test_the_format_follows_the_extension_else_the_first_character(path: str, first: str | None, expected: str) -> None:
    assert detect_format(path, first) == expected


def test_auto_format_peeks_without_losing_the_first_line_and_drops_a_bom() -> None:
    fmt, lines = read_lines(io.BytesIO(b'\xef\xbb\xbf\n{"item_id": "a", "title": "x"}\n'), "auto", "-")
    assert fmt == "jsonl"
    assert list(lines) == [Line(2, {"item_id": "a", "title": "x"})]
    fmt, lines = read_lines(io.BytesIO(b"\xef\xbb\xbfitem_id,title\nN1,Hi\n"), "auto", "-")
    assert fmt == "csv"
    assert list(lines) == [Line(2, {"item_id": "N1", "title": "Hi"})]
