"""The wire contracts of DESIGN.md: every valid record parses into its typed object, every bad one is
refused with the right reason, the DLQ record keeps what failed, and the output list round-trips."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from xrec.config import EVENT_TYPES, Settings
from xrec.events import (
    DLQ_VALUE_LIMIT,
    MAX_ID_CHARS,
    MAX_TS_MS,
    MIN_TS_MS,
    REASONS,
    ForgetUser,
    Interaction,
    ItemDelete,
    ItemUpsert,
    Limits,
    RecommendationList,
    RecommendedItem,
    RecordError,
    decode_json_object,
    derive_event_id,
    dlq_record,
    parse_control,
    parse_event,
    parse_item,
    parse_timestamp,
    parse_vector,
)

LIMITS = Limits()
TS = 1731412486000


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def event(**fields: Any) -> bytes:
    base: dict[str, Any] = {"event_id": "e1", "user_id": "U81994", "item_id": "N55528", "type": "click", "ts": TS}
    base.update(fields)
    return dumps({k: v for k, v in base.items() if v is not _DROP})


def item(**fields: Any) -> bytes:
    base: dict[str, Any] = {"item_id": "N55528", "title": "A royal visit", "ts": TS}
    base.update(fields)
    return dumps({k: v for k, v in base.items() if v is not _DROP})


_DROP = object()


def reason_of(parse: Any, raw: Any, limits: Limits = LIMITS) -> str:
    with pytest.raises(RecordError) as info:
        parse(raw, limits)
    assert info.value.reason in REASONS
    assert str(info.value).startswith(info.value.reason + ": ")
    return info.value.reason


# --- valid records -------------------------------------------------------------------------------


def test_an_item_upsert_with_every_field_parses_into_an_item_upsert() -> None:
    raw = dumps(
        {
            "item_id": "N55528",
            "title": " 王室访问 ",
            "body": "The royals visited the city.",
            "lang": "ZH_Hans",
            "category": "news",
            "tags": ["royals", "visit"],
            "available": False,
            "ts": TS,
            "producer_extra": {"ignored": True},
        }
    )
    rec = parse_item(raw, LIMITS)
    assert rec == ItemUpsert(
        item_id="N55528",
        title="王室访问",
        body="The royals visited the city.",
        lang="zh-hans",
        category="news",
        tags=("royals", "visit"),
        available=False,
        ts=TS,
    )
    assert rec.vector is None
    assert rec.text == "王室访问. The royals visited the city."
    assert rec.payload()["tags"] == ["royals", "visit"]


def test_a_minimal_item_gets_the_documented_defaults() -> None:
    rec = parse_item(b'{"item_id": "N1", "body": "only a body"}', LIMITS)
    assert rec == ItemUpsert(item_id="N1", body="only a body", lang="und", tags=(), available=True, ts=0)
    assert rec.text == "only a body"


def test_an_integer_item_id_is_read_as_its_decimal_text() -> None:
    rec = parse_item(b'{"item_id": 42, "title": "x"}', LIMITS)
    assert rec.item_id == "42"


def test_a_record_with_deleted_true_is_an_item_delete() -> None:
    rec = parse_item(b'{"item_id": "N55528", "deleted": true, "ts": 1731412499000}', LIMITS)
    assert rec == ItemDelete(item_id="N55528", ts=1731412499000)


def test_a_delete_needs_no_title_and_deleted_false_is_an_upsert() -> None:
    assert isinstance(parse_item(b'{"item_id": "N1", "deleted": true}', LIMITS), ItemDelete)
    assert isinstance(parse_item(b'{"item_id": "N1", "deleted": false, "title": "t"}', LIMITS), ItemUpsert)


def test_an_item_with_a_precomputed_vector_keeps_it_l2_normalized() -> None:
    rec = parse_item(item(title=_DROP, vector=[3, 4, 0]), Limits(vector_dim=3))
    assert isinstance(rec, ItemUpsert)
    assert rec.vector is not None
    assert rec.vector.dtype == np.float32
    np.testing.assert_allclose(rec.vector, [0.6, 0.8, 0.0], rtol=1e-6)


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_every_event_type_parses_into_an_interaction(etype: str) -> None:
    rec = parse_event(event(type=etype), LIMITS)
    assert rec == Interaction(event_id="e1", user_id="U81994", item_id="N55528", type=etype, ts=TS)  # type: ignore[arg-type]
    assert parse_event(rec.to_json(), LIMITS) == rec  # what the DLQ keeps of an event reads back as the event


def test_a_review_keeps_its_text_rating_and_language() -> None:
    rec = parse_event(event(type="review", text="  Très bien écrit.  ", rating=4, lang="FR"), LIMITS)
    assert isinstance(rec, Interaction)
    assert parse_event(rec.to_json(), LIMITS) == rec
    assert rec.text == "Très bien écrit."
    assert rec.rating == 4.0 and isinstance(rec.rating, float)
    assert rec.lang == "fr"


def test_explicit_nulls_mean_absent() -> None:
    rec = parse_event(event(text=None, rating=None, lang=None), LIMITS)
    assert isinstance(rec, Interaction)
    assert (rec.text, rec.rating, rec.lang) == (None, None, None)


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (TS, TS),
        (1731412486000.9, 1731412486000),
        ("2024-11-12T11:54:46Z", 1731412486000),
        ("2024-11-12T11:54:46.000+00:00", 1731412486000),
        ("2024-11-12T12:54:46+01:00", 1731412486000),
        ("2024-11-12 11:54:46.5Z", 1731412486500),
    ],
)
def test_timestamps_in_epoch_ms_and_iso_8601_give_epoch_ms(ts: Any, expected: int) -> None:
    assert parse_timestamp(ts) == expected
    assert parse_event(event(ts=ts), LIMITS).ts == expected


def test_a_missing_event_id_is_derived_from_the_content_so_redelivery_is_still_a_duplicate() -> None:
    a = parse_event(event(event_id=_DROP), LIMITS)
    b = parse_event(event(event_id=_DROP, ts="2024-11-12T11:54:46Z"), LIMITS)
    c = parse_event(event(event_id=_DROP, type="like"), LIMITS)
    assert a.event_id == b.event_id == derive_event_id("U81994", "N55528", "click", TS)
    assert a.event_id.startswith("d-")
    assert c.event_id != a.event_id


def test_forget_user_parses_into_a_forget_user_command() -> None:
    assert parse_control(b'{"type": "forget_user", "user_id": "U81994"}', LIMITS) == ForgetUser("U81994")


def test_str_input_is_accepted_as_well_as_bytes() -> None:
    assert parse_control('{"type": "forget_user", "user_id": "Ü"}', LIMITS) == ForgetUser("Ü")


def test_limits_follow_the_settings() -> None:
    s = Settings(max_record_bytes=10, max_text_chars=20, max_tags=3)
    assert Limits.from_settings(s, vector_dim=384) == Limits(10, 20, 3, 384)


# --- invalid records -----------------------------------------------------------------------------

ALL_PARSERS = [parse_item, parse_event, parse_control]


@pytest.mark.parametrize("parse", ALL_PARSERS)
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not_json"),
        (b"{", "not_json"),
        (b"{'item_id': 1}", "not_json"),
        (b'{"a": NaN}', "not_json"),
        (b'{"a": Infinity}', "not_json"),
        (b'{"ts": 1e400}', "not_json"),  # inf cannot be written in JSON; orjson refuses the overflow
        (b'"\\ud800"', "not_json"),  # a lone surrogate escape
        (b"[" * 2000, "not_json"),  # deeper than orjson's nesting limit
        (b"\xef\xbb\xbf{}", "not_json"),  # a BOM is valid UTF-8 but not JSON
        (b"\xff", "invalid_utf8"),
        (b'{"item_id": "\xc3\x28"}', "invalid_utf8"),
        (b'{"item_id": "\xed\xa0\x80"}', "invalid_utf8"),  # an encoded surrogate
        ("{}\ud800", "invalid_utf8"),
        (b"[]", "not_object"),
        (b'"text"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (None, "missing_field"),
    ],
)
def test_records_that_are_not_json_objects_are_refused_with_their_reason(parse: Any, raw: Any, reason: str) -> None:
    assert reason_of(parse, raw) == reason


@pytest.mark.parametrize("parse", ALL_PARSERS)
def test_an_oversize_record_is_refused_before_it_is_parsed(parse: Any) -> None:
    limits = Limits(max_record_bytes=100)
    assert reason_of(parse, b" " * 101, limits) == "too_large"
    assert reason_of(parse, b"{}" + b" " * 98, limits) != "too_large"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"item_id": _DROP}, "missing_field"),
        ({"item_id": None}, "missing_field"),
        ({"item_id": ["N1"]}, "wrong_type"),
        ({"item_id": True}, "wrong_type"),
        ({"item_id": 1.5}, "wrong_type"),
        ({"item_id": {"id": 1}}, "wrong_type"),
        ({"item_id": ""}, "invalid_value"),
        ({"item_id": "   "}, "invalid_value"),
        ({"item_id": "x" * (MAX_ID_CHARS + 1)}, "invalid_value"),
        ({"item_id": "N1\n"}, "invalid_value"),
        ({"item_id": "N\x001"}, "invalid_value"),
        ({"item_id": "N\x7f1"}, "invalid_value"),
        ({"item_id": "N\x851"}, "invalid_value"),
        ({"title": _DROP}, "missing_field"),
        ({"title": "   "}, "missing_field"),
        ({"title": 5}, "wrong_type"),
        ({"body": ["a"]}, "wrong_type"),
        ({"tags": "royals"}, "wrong_type"),
        ({"tags": ["ok", 3]}, "wrong_type"),
        ({"tags": [["nested"]]}, "wrong_type"),
        ({"tags": ["x" * (MAX_ID_CHARS + 1)]}, "wrong_type"),
        ({"tags": ["t"] * 65}, "too_many_tags"),
        ({"available": "yes"}, "wrong_type"),
        ({"available": 1}, "wrong_type"),
        ({"deleted": "true"}, "wrong_type"),
        ({"category": 7}, "wrong_type"),
        ({"category": "c" * (MAX_ID_CHARS + 1)}, "invalid_value"),
        ({"lang": 5}, "wrong_type"),
        ({"lang": "en us"}, "invalid_value"),
        ({"lang": "x" * 36}, "invalid_value"),
        ({"lang": "中文"}, "invalid_value"),
        ({"ts": "yesterday"}, "bad_timestamp"),
        ({"ts": 1731412486}, "bad_timestamp"),
        ({"ts": True}, "bad_timestamp"),
        ({"title": "t" * 20_001}, "text_too_long"),
        ({"body": "b" * 20_001}, "text_too_long"),
        ({"vector": "0.1,0.2"}, "bad_vector"),
    ],
)
def test_bad_item_fields_are_refused_with_their_reason(fields: dict[str, Any], reason: str) -> None:
    assert reason_of(parse_item, item(**fields)) == reason


def test_a_deleted_record_still_needs_a_valid_id_and_timestamp() -> None:
    assert reason_of(parse_item, b'{"deleted": true}') == "missing_field"
    assert reason_of(parse_item, b'{"item_id": "N1", "deleted": true, "ts": "now"}') == "bad_timestamp"


def test_text_and_tag_limits_follow_the_limits_object() -> None:
    limits = Limits(max_text_chars=5, max_tags=2)
    assert parse_item(item(title="12345", tags=["a", "b"]), limits).title == "12345"  # type: ignore[union-attr]
    assert reason_of(parse_item, item(title="123456"), limits) == "text_too_long"
    assert reason_of(parse_item, item(title="t", tags=["a", "b", "c"]), limits) == "too_many_tags"
    assert reason_of(parse_event, event(type="review", text="123456"), limits) == "text_too_long"


@pytest.mark.parametrize(
    ("vector", "reason_text"),
    [
        ([1.0, 0.0], "dimensions"),
        ([1.0, 0.0, 0.0, 0.0], "dimensions"),
        ([], "non-empty"),
        ([0, 0, 0], "all zeros"),
        ([0.0, -0.0, 0.0], "all zeros"),
        (["1", "2", "3"], "numbers"),
        ([True, False, True], "numbers"),
        ([1, None, 2], "numbers"),
        ([[1, 2, 3], [4, 5, 6], [7, 8, 9]], "numbers"),
        ([[1], [2], [3]], "numbers"),
        ([1, {"x": 2}, 3], "numbers"),
        ({"0": 1}, "non-empty list"),
    ],
)
def test_bad_vectors_are_refused(vector: Any, reason_text: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_item(item(vector=vector), Limits(vector_dim=3))
    assert info.value.reason == "bad_vector"
    assert reason_text in info.value.message


def test_vectors_of_huge_or_tiny_finite_numbers_still_normalize_to_unit_length() -> None:
    for values in ([1e308, 1e308, -1e308], [1e-200, 2e-200, 0.0], [5e-324, 0.0, 0.0]):
        vec = parse_vector(values, 3)
        assert np.all(np.isfinite(vec))
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5, values


def test_a_vector_of_any_dimension_is_accepted_when_the_store_dimension_is_unknown() -> None:
    assert parse_vector([1, 2, 3, 4, 5], None).shape == (5,)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"user_id": _DROP}, "missing_field"),
        ({"item_id": _DROP}, "missing_field"),
        ({"type": _DROP}, "missing_field"),
        ({"ts": _DROP}, "missing_field"),
        ({"ts": None}, "missing_field"),
        ({"user_id": ["U1"]}, "wrong_type"),
        ({"user_id": False}, "wrong_type"),
        ({"user_id": ""}, "invalid_value"),
        ({"user_id": "U\t1"}, "invalid_value"),
        ({"event_id": ["e"]}, "wrong_type"),
        ({"event_id": ""}, "invalid_value"),
        ({"event_id": "e" * (MAX_ID_CHARS + 1)}, "invalid_value"),
        ({"type": "teleport"}, "unknown_event_type"),
        ({"type": "Click"}, "unknown_event_type"),
        ({"type": 3}, "unknown_event_type"),
        ({"type": ["click"]}, "unknown_event_type"),
        ({"ts": "2024-11-12T11:54:46"}, "bad_timestamp"),
        ({"ts": "2024-11-12"}, "bad_timestamp"),
        ({"ts": "garbage"}, "bad_timestamp"),
        ({"ts": ""}, "bad_timestamp"),
        ({"ts": "2024-11-12T11:54:46.000000000000000000000000Z"}, "bad_timestamp"),
        ({"ts": "9" * 41}, "bad_timestamp"),
        ({"ts": 1731412486}, "bad_timestamp"),
        ({"ts": 0}, "bad_timestamp"),
        ({"ts": -1}, "bad_timestamp"),
        ({"ts": MIN_TS_MS - 1}, "bad_timestamp"),
        ({"ts": MAX_TS_MS}, "bad_timestamp"),
        ({"ts": 1e300}, "bad_timestamp"),
        ({"ts": "1999-12-31T23:59:59Z"}, "bad_timestamp"),
        ({"ts": "2100-01-01T00:00:00Z"}, "bad_timestamp"),
        ({"ts": True}, "bad_timestamp"),
        ({"ts": [TS]}, "bad_timestamp"),
        ({"ts": {"ms": TS}}, "bad_timestamp"),
        ({"rating": "5"}, "wrong_type"),
        ({"rating": True}, "wrong_type"),
        ({"rating": [5]}, "wrong_type"),
        ({"rating": 0}, "invalid_value"),
        ({"rating": 5.5}, "invalid_value"),
        ({"rating": -3}, "invalid_value"),
        ({"text": 12}, "wrong_type"),
        ({"text": "t" * 20_001}, "text_too_long"),
        ({"lang": ["en"]}, "wrong_type"),
        ({"lang": "en;drop"}, "invalid_value"),
    ],
)
def test_bad_event_fields_are_refused_with_their_reason(fields: dict[str, Any], reason: str) -> None:
    assert reason_of(parse_event, event(**fields)) == reason


def test_the_timestamp_window_is_inclusive_at_2000_and_exclusive_at_2100() -> None:
    assert parse_timestamp(MIN_TS_MS) == MIN_TS_MS
    assert parse_timestamp(MAX_TS_MS - 1) == MAX_TS_MS - 1
    assert parse_timestamp("2000-01-01T00:00:00Z") == MIN_TS_MS
    assert int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000) == MIN_TS_MS
    assert int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000) == MAX_TS_MS


def test_timestamp_errors_say_what_to_fix() -> None:
    with pytest.raises(RecordError, match="no time zone"):
        parse_timestamp("2024-11-12T11:54:46")
    with pytest.raises(RecordError, match="seconds sent as ms"):
        parse_timestamp(1731412486)
    with pytest.raises(RecordError, match="not a finite number"):
        parse_timestamp(float("inf"))
    with pytest.raises(RecordError, match="not a finite number"):
        parse_timestamp(float("nan"))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"type": "forget_everyone", "user_id": "U1"}', "unknown_command"),
        (b'{"user_id": "U1"}', "unknown_command"),
        (b'{"type": ["forget_user"], "user_id": "U1"}', "unknown_command"),
        (b'{"type": "forget_user"}', "missing_field"),
        (b'{"type": "forget_user", "user_id": ["U1"]}', "wrong_type"),
        (b'{"type": "forget_user", "user_id": ""}', "invalid_value"),
        (b'{"type": "forget_user", "user_id": "U\\u00001"}', "invalid_value"),
    ],
)
def test_bad_control_commands_are_refused_with_their_reason(raw: bytes, reason: str) -> None:
    assert reason_of(parse_control, raw) == reason


def test_decode_json_object_returns_the_dict_for_a_valid_object() -> None:
    assert decode_json_object(b'{"a": [1, 2.5, null]}', LIMITS) == {"a": [1, 2.5, None]}


def test_a_record_error_only_accepts_known_reasons() -> None:
    with pytest.raises(AssertionError):
        RecordError("made_up", "nope")


# --- DLQ record ----------------------------------------------------------------------------------


def make_dlq(value: bytes | None, key: bytes | None = b"U1", error: str = "not_json: record is not valid JSON") -> dict:
    raw = dlq_record(
        source_topic="xrec.events",
        partition=3,
        offset=1234,
        key=key,
        value=value,
        reason="not_json",
        error=error,
        failed_at_ms=TS,
    )
    assert isinstance(raw, bytes)
    out = orjson.loads(raw)
    assert isinstance(out, dict)
    return out


def test_a_dlq_record_keeps_a_text_value_as_text_with_where_and_why() -> None:
    out = make_dlq(b'{"user_id": "U1", "ts": ')
    assert out == {
        "source_topic": "xrec.events",
        "partition": 3,
        "offset": 1234,
        "key": "U1",
        "value": '{"user_id": "U1", "ts": ',
        "value_base64": None,
        "value_size": 24,
        "value_truncated": False,
        "error": "not_json: record is not valid JSON",
        "error_class": "not_json",
        "exception": "RecordError",
        "failed_at": TS,
    }


def test_a_dlq_record_keeps_a_binary_value_as_base64() -> None:
    value = b"\xff\xfe\x00binary\x80"
    out = make_dlq(value)
    assert out["value"] is None
    assert base64.b64decode(out["value_base64"]) == value
    assert out["value_size"] == len(value)


def test_a_dlq_record_truncates_a_huge_value_and_says_so() -> None:
    value = b"x" * (DLQ_VALUE_LIMIT * 3)
    out = make_dlq(value)
    assert out["value_truncated"] is True
    assert out["value_size"] == len(value)
    assert out["value"] == "x" * DLQ_VALUE_LIMIT


def test_a_dlq_record_cut_inside_a_multibyte_character_stays_text() -> None:
    value = "é".encode() * DLQ_VALUE_LIMIT  # two bytes each: the cut falls on a character boundary
    assert make_dlq(value)["value"] == "é" * (DLQ_VALUE_LIMIT // 2)
    value = "€".encode() * DLQ_VALUE_LIMIT  # three bytes each: the cut at 65536 splits one
    out = make_dlq(value)
    assert out["value_truncated"] is True
    assert out["value"] == "€" * (DLQ_VALUE_LIMIT // 3)


def test_a_huge_binary_value_is_truncated_before_base64() -> None:
    value = bytes(range(256)) * (DLQ_VALUE_LIMIT // 64)
    out = make_dlq(value)
    assert out["value_truncated"] is True
    assert base64.b64decode(out["value_base64"]) == value[:DLQ_VALUE_LIMIT]


def test_a_dlq_record_handles_missing_key_and_value_and_a_binary_key() -> None:
    out = make_dlq(None, key=None)
    assert (out["key"], out["value"], out["value_base64"], out["value_size"]) == (None, None, None, None)
    assert out["value_truncated"] is False
    assert base64.b64decode(make_dlq(b"{}", key=b"\xff\x00")["key"]) == b"\xff\x00"


def test_a_dlq_record_survives_an_error_message_with_lone_surrogates_and_cuts_long_ones() -> None:
    out = make_dlq(b"{}", error="cannot open /data/\udcff.bin")
    assert out["error"] == "cannot open /data/\\udcff.bin"
    assert len(make_dlq(b"{}", error="e" * 10_000)["error"]) == 2000


def test_a_parse_failure_flows_into_a_dlq_record_with_its_reason() -> None:
    raw = event(type="teleport")
    with pytest.raises(RecordError) as info:
        parse_event(raw, LIMITS)
    out = orjson.loads(
        dlq_record(
            source_topic="xrec.events",
            partition=0,
            offset=7,
            key=b"U81994",
            value=raw,
            reason=info.value.reason,
            error=str(info.value),
            failed_at_ms=TS,
        )
    )
    assert out["error_class"] == "unknown_event_type"
    assert "teleport" in out["error"]
    assert orjson.loads(out["value"])["type"] == "teleport"


# --- recommendations -----------------------------------------------------------------------------


def test_a_recommendation_list_round_trips_through_json() -> None:
    rec = RecommendationList(
        user_id="U81994",
        generated_at=1731412486042,
        trigger_event_id="8b1f",
        strategy="multi-interest",
        variant="B",
        items=(
            RecommendedItem("N1234", 0.83, "en", "N55528"),
            RecommendedItem("N99", -0.125, "zh", None),
        ),
    )
    raw = rec.to_json()
    assert RecommendationList.from_json(raw) == rec
    assert RecommendationList.from_json(raw.decode()) == rec
    obj = orjson.loads(raw)
    assert set(obj) == {"list_id", "user_id", "generated_at", "trigger_event_id", "strategy", "variant", "items"}
    assert obj["items"][0] == {"item_id": "N1234", "score": 0.83, "lang": "en", "because": "N55528"}


def test_a_recommendation_list_rounds_scores_to_five_decimals_and_allows_an_empty_list() -> None:
    rec = RecommendationList("U1", TS, None, "popular", (RecommendedItem("N1", 1 / 3, "und"),))
    back = RecommendationList.from_json(rec.to_json())
    assert back.items[0].score == 0.33333
    assert back.trigger_event_id is None and back.variant == "A"
    empty = RecommendationList("U1", TS, None, "popular", ())
    assert RecommendationList.from_json(empty.to_json()) == empty
