"""Hostile input, property-based: whatever bytes or JSON a producer sends, every parser returns its typed
object or raises RecordError (never another exception, so a worker can always route it to the DLQ), what
it returns satisfies the contract's invariants, and valid records survive the trip through JSON."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xrec.config import EVENT_TYPES
from xrec.events import (
    DLQ_VALUE_LIMIT,
    MAX_ID_CHARS,
    MAX_LANG_CHARS,
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
    dlq_record,
    parse_control,
    parse_event,
    parse_item,
    parse_timestamp,
    parse_vector,
)

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PARSERS = {"item": parse_item, "event": parse_event, "control": parse_control}
FIELD_NAMES = [
    "item_id",
    "user_id",
    "event_id",
    "type",
    "ts",
    "title",
    "body",
    "lang",
    "category",
    "tags",
    "available",
    "deleted",
    "vector",
    "text",
    "rating",
]
LIMIT_CHOICES = [Limits(), Limits(max_record_bytes=2_000, max_text_chars=40, max_tags=3, vector_dim=4)]

# --- strategies ----------------------------------------------------------------------------------

utf8 = st.characters(codec="utf-8")
utf8_text = st.text(utf8, max_size=60)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | utf8_text
    | st.sampled_from(["", " ", "click", "review", "forget_user", "2024-11-12T11:54:46Z", "en", "\x00", "\u0085"])
    | st.integers(min_value=MIN_TS_MS - 10, max_value=MAX_TS_MS + 10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(utf8_text, inner, max_size=6),
    max_leaves=40,
)
small_json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(utf8_text, inner, max_size=4),
    max_leaves=8,
)
json_objects = st.dictionaries(st.sampled_from(FIELD_NAMES) | utf8_text, small_json_values, max_size=10)

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=MAX_ID_CHARS).filter(
    lambda s: bool(s.strip())
)
ts_ms = st.integers(min_value=MIN_TS_MS, max_value=MAX_TS_MS - 1)
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
langs = st.from_regex(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,2}", fullmatch=True)
texts = st.text(utf8, max_size=200)


def iso(ms: int, tz: timezone) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).astimezone(tz).isoformat()


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[int | float | str, int]:
    """A wire timestamp in one of its three forms, and the epoch milliseconds it means."""
    ms = draw(ts_ms)
    form = draw(st.sampled_from(["int", "float", "iso", "iso_z"]))
    if form == "int":
        return ms, ms
    if form == "float":
        return ms + draw(st.sampled_from([0.0, 0.25, 0.5, 0.75])), ms
    if form == "iso_z":
        return iso(ms, UTC).replace("+00:00", "Z"), ms
    return iso(ms, draw(offsets)), ms


@st.composite
def unit_vectors(draw: st.DrawFn, dim: int) -> list[float]:
    values = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=dim, max_size=dim))
    assume(any(v != 0.0 for v in values))
    return values


# --- invariants ----------------------------------------------------------------------------------


def check_id(value: str) -> None:
    assert isinstance(value, str)
    assert value.strip() and len(value) <= MAX_ID_CHARS
    assert not any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value)


def check_lang(value: str | None) -> None:
    if value is not None:
        assert value and len(value) <= MAX_LANG_CHARS
        assert value == value.lower() and value.isascii() and "_" not in value


def check_invariants(rec: Any, limits: Limits) -> None:
    if isinstance(rec, ItemUpsert):
        check_id(rec.item_id)
        assert rec.ts == 0 or MIN_TS_MS <= rec.ts < MAX_TS_MS
        check_lang(rec.lang)
        assert len(rec.title) <= limits.max_text_chars and len(rec.body) <= limits.max_text_chars
        assert isinstance(rec.tags, tuple) and len(rec.tags) <= limits.max_tags
        assert all(isinstance(t, str) for t in rec.tags)
        assert isinstance(rec.available, bool)
        assert rec.title or rec.body or rec.vector is not None
        if rec.vector is not None:
            assert rec.vector.dtype == np.float32 and rec.vector.ndim == 1
            assert limits.vector_dim is None or rec.vector.shape == (limits.vector_dim,)
            assert np.all(np.isfinite(rec.vector))
            assert abs(float(np.linalg.norm(rec.vector)) - 1.0) < 1e-4
    elif isinstance(rec, ItemDelete):
        check_id(rec.item_id)
        assert rec.ts == 0 or MIN_TS_MS <= rec.ts < MAX_TS_MS
    elif isinstance(rec, Interaction):
        for value in (rec.event_id, rec.user_id, rec.item_id):
            check_id(value)
        assert rec.type in EVENT_TYPES
        assert MIN_TS_MS <= rec.ts < MAX_TS_MS and isinstance(rec.ts, int)
        assert rec.rating is None or (isinstance(rec.rating, float) and 1.0 <= rec.rating <= 5.0)
        assert rec.text is None or (rec.text and len(rec.text) <= limits.max_text_chars)
        check_lang(rec.lang)
    elif isinstance(rec, ForgetUser):
        check_id(rec.user_id)
    else:
        raise AssertionError(f"unexpected result {rec!r}")


def parse_or_refuse(kind: str, raw: Any, limits: Limits) -> Any:
    """Parse; a RecordError is a fine outcome, any other exception fails the property."""
    try:
        rec = PARSERS[kind](raw, limits)
    except RecordError as exc:
        assert exc.reason in REASONS
        assert exc.message
        return None
    check_invariants(rec, limits)
    return rec


# --- properties: nothing but typed objects or RecordError -----------------------------------------


@PROPS
@given(raw=st.binary(max_size=300), kind=st.sampled_from(sorted(PARSERS)), limits=st.sampled_from(LIMIT_CHOICES))
def test_arbitrary_bytes_give_a_typed_record_or_a_record_error(raw: bytes, kind: str, limits: Limits) -> None:
    parse_or_refuse(kind, raw, limits)


@PROPS
@given(obj=json_objects, kind=st.sampled_from(sorted(PARSERS)), limits=st.sampled_from(LIMIT_CHOICES))
def test_arbitrary_json_objects_give_a_typed_record_or_a_record_error(obj: dict, kind: str, limits: Limits) -> None:
    parse_or_refuse(kind, orjson.dumps(obj), limits)


@PROPS
@given(value=json_values, kind=st.sampled_from(sorted(PARSERS)))
def test_arbitrary_json_values_give_a_typed_record_or_a_record_error(value: Any, kind: str) -> None:
    parse_or_refuse(kind, orjson.dumps(value), Limits())


VALID: dict[str, dict[str, Any]] = {
    "item": {"item_id": "N1", "title": "t", "body": "b", "lang": "en", "tags": ["x"], "ts": 1731412486000},
    "event": {"event_id": "e", "user_id": "U1", "item_id": "N1", "type": "review", "ts": 1731412486000, "rating": 3},
    "control": {"type": "forget_user", "user_id": "U1"},
}


@PROPS
@given(
    kind=st.sampled_from(sorted(PARSERS)),
    name=st.sampled_from(FIELD_NAMES),
    value=json_values,
    limits=st.sampled_from(LIMIT_CHOICES),
)
def test_a_valid_record_with_one_field_replaced_by_anything_is_parsed_or_refused(
    kind: str, name: str, value: Any, limits: Limits
) -> None:
    parse_or_refuse(kind, orjson.dumps({**VALID[kind], name: value}), limits)


@FEW
@given(
    depth=st.integers(min_value=1, max_value=3000), kind=st.sampled_from(sorted(PARSERS)), opener=st.sampled_from("[{")
)
def test_deeply_nested_records_are_refused_without_crashing(depth: int, kind: str, opener: str) -> None:
    nested = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth
    raw = orjson.dumps(VALID[kind])[:-1] + b', "vector": ' + nested.encode() + b', "tags": ' + nested.encode() + b"}"
    parse_or_refuse(kind, raw, Limits(max_record_bytes=100_000))


@FEW
@given(
    kind=st.sampled_from(sorted(PARSERS)),
    good=st.binary(min_size=1, max_size=50),
    bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82"]),
)
def test_invalid_utf8_anywhere_in_a_record_is_refused_as_invalid_utf8(kind: str, good: bytes, bad: bytes) -> None:
    raw = b'{"item_id": "' + bad + b'", "user_id": "u", "junk": "' + good.hex().encode() + b'"}'
    with pytest.raises(RecordError) as info:
        PARSERS[kind](raw, Limits())
    assert info.value.reason == "invalid_utf8"


@PROPS
@given(value=json_values | st.floats() | st.text(max_size=50))
def test_parse_timestamp_gives_epoch_ms_in_range_or_a_bad_timestamp(value: Any) -> None:
    try:
        ms = parse_timestamp(value)
    except RecordError as exc:
        assert exc.reason == "bad_timestamp"
        return
    assert isinstance(ms, int) and MIN_TS_MS <= ms < MAX_TS_MS


@PROPS
@given(value=st.lists(st.floats() | st.integers() | st.booleans() | st.text(max_size=3) | st.none(), max_size=8))
def test_parse_vector_gives_a_finite_unit_vector_or_a_bad_vector(value: list) -> None:
    try:
        vec = parse_vector(value, None)
    except RecordError as exc:
        assert exc.reason == "bad_vector"
        return
    assert vec.shape == (len(value),) and np.all(np.isfinite(vec))
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4


# --- properties: valid records round-trip ---------------------------------------------------------


@PROPS
@given(
    event_id=st.none() | ids,
    user_id=ids,
    item_id=ids,
    etype=st.sampled_from(EVENT_TYPES),
    ts=timestamps(),
    text=st.none() | texts,
    rating=st.none() | st.integers(1, 5) | st.floats(1, 5),
    lang=st.none() | langs,
    extra=st.dictionaries(st.text(utf8, max_size=8).filter(lambda k: k not in FIELD_NAMES), json_scalars, max_size=3),
)
def test_a_valid_event_round_trips_through_json(
    event_id: str | None,
    user_id: str,
    item_id: str,
    etype: str,
    ts: tuple[int | float | str, int],
    text: str | None,
    rating: float | None,
    lang: str | None,
    extra: dict,
) -> None:
    wire = {**extra, "user_id": user_id, "item_id": item_id, "type": etype, "ts": ts[0]}
    wire |= {"event_id": event_id, "text": text, "rating": rating, "lang": lang}
    rec = parse_event(orjson.dumps(wire), Limits())
    assert isinstance(rec, Interaction)
    check_invariants(rec, Limits())
    assert (rec.user_id, rec.item_id, rec.type, rec.ts) == (user_id, item_id, etype, ts[1])
    assert rec.text == ((text or "").strip() or None)
    assert rec.rating == (None if rating is None else float(rating))
    assert rec.lang == (None if lang is None else lang.lower().replace("_", "-"))
    if event_id is not None:
        assert rec.event_id == event_id
    else:  # derived from the content, so the same event sent twice gets the same id
        assert rec.event_id == parse_event(orjson.dumps(wire), Limits()).event_id


@PROPS
@given(
    item_id=ids,
    title=texts,
    body=texts,
    lang=st.none() | langs,
    category=st.text(utf8, max_size=30),
    tags=st.lists(st.text(utf8, max_size=20), max_size=64),
    available=st.booleans(),
    ts=st.none() | timestamps(),
    vector=st.none() | unit_vectors(8),
)
def test_a_valid_item_round_trips_through_json(
    item_id: str,
    title: str,
    body: str,
    lang: str | None,
    category: str,
    tags: list[str],
    available: bool,
    ts: tuple[int | float | str, int] | None,
    vector: list[float] | None,
) -> None:
    assume(title.strip() or body.strip() or vector is not None)
    wire = {
        "item_id": item_id,
        "title": title,
        "body": body,
        "lang": lang,
        "category": category,
        "tags": tags,
        "available": available,
        "ts": None if ts is None else ts[0],
        "vector": vector,
    }
    limits = Limits(vector_dim=8)
    rec = parse_item(orjson.dumps(wire), limits)
    assert isinstance(rec, ItemUpsert)
    check_invariants(rec, limits)
    assert rec == ItemUpsert(
        item_id=item_id,
        title=title.strip(),
        body=body.strip(),
        lang="und" if lang is None else lang.lower().replace("_", "-"),
        category=category,
        tags=tuple(tags),
        available=available,
        ts=0 if ts is None else ts[1],
    )
    if vector is None:
        assert rec.vector is None
    else:
        assert rec.vector is not None
        scaled = np.asarray(vector) / np.abs(vector).max()  # so a subnormal component's square does not vanish
        expected = scaled / np.linalg.norm(scaled)
        np.testing.assert_allclose(rec.vector, expected, rtol=1e-5, atol=1e-6)
    payload = rec.payload()
    assert orjson.loads(orjson.dumps(payload)) == payload


@PROPS
@given(item_id=ids, ts=st.none() | timestamps())
def test_a_valid_delete_round_trips_through_json(item_id: str, ts: tuple[int | float | str, int] | None) -> None:
    wire = {"item_id": item_id, "deleted": True, "ts": None if ts is None else ts[0]}
    assert parse_item(orjson.dumps(wire), Limits()) == ItemDelete(item_id, 0 if ts is None else ts[1])


@PROPS
@given(user_id=ids)
def test_a_valid_forget_user_round_trips_through_json(user_id: str) -> None:
    assert parse_control(orjson.dumps({"type": "forget_user", "user_id": user_id}), Limits()) == ForgetUser(user_id)


@PROPS
@given(ms=ts_ms, tz=offsets)
def test_the_iso_and_epoch_forms_of_one_instant_give_the_same_milliseconds(ms: int, tz: timezone) -> None:
    assert parse_timestamp(iso(ms, tz)) == parse_timestamp(ms) == ms


@PROPS
@given(
    user_id=ids,
    generated_at=ts_ms,
    trigger=st.none() | ids,
    strategy=st.sampled_from(["multi-interest", "popular", "cold-start"]),
    variant=st.sampled_from(["A", "B"]),
    items=st.lists(
        st.builds(
            RecommendedItem,
            item_id=ids,
            score=st.floats(-10, 10, allow_nan=False).map(lambda x: round(x, 5)),
            lang=langs,
            because=st.none() | ids,
        ),
        max_size=8,
    ),
)
def test_a_recommendation_list_round_trips_through_json(
    user_id: str, generated_at: int, trigger: str | None, strategy: str, variant: str, items: list[RecommendedItem]
) -> None:
    rec = RecommendationList(user_id, generated_at, trigger, strategy, tuple(items), variant)
    assert RecommendationList.from_json(rec.to_json()) == rec


# --- properties: the DLQ record ------------------------------------------------------------------

# Lone surrogates included (st.text would merge them away): exception messages can carry them.
any_text = st.lists(st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=80).map(
    "".join
)


@PROPS
@given(
    key=st.none() | st.binary(max_size=40),
    value=st.none() | st.binary(max_size=300) | texts.map(str.encode),
    error=any_text,
    topic=any_text,
    reason=st.sampled_from(REASONS),
    partition=st.none() | st.integers(0, 2**31 - 1),
    offset=st.none() | st.integers(0, 2**63 - 1),
)
def test_dlq_record_never_raises_and_keeps_the_value_recoverable(
    key: bytes | None,
    value: bytes | None,
    error: str,
    topic: str,
    reason: str,
    partition: int | None,
    offset: int | None,
) -> None:
    raw = dlq_record(
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        reason=reason,
        error=error,
        exception="ValueError",
        failed_at_ms=1731412486000,
    )
    out = orjson.loads(raw)
    assert out["error_class"] == reason and out["partition"] == partition and out["offset"] == offset
    assert isinstance(out["error"], str) and isinstance(out["source_topic"], str)
    if value is None:
        assert out["value"] is None and out["value_base64"] is None and out["value_size"] is None
        return
    assert out["value_size"] == len(value) and out["value_truncated"] is False
    if out["value"] is not None:
        assert out["value_base64"] is None and out["value"].encode() == value
    else:
        assert base64.b64decode(out["value_base64"]) == value


@FEW
@given(
    prefix=st.binary(max_size=4),
    char=st.sampled_from(["a", "é", "€", "😀"]),
    extra=st.integers(0, 7),
)
def test_dlq_record_of_an_oversize_value_keeps_a_decodable_prefix(prefix: bytes, char: str, extra: int) -> None:
    value = prefix + char.encode() * (DLQ_VALUE_LIMIT // len(char.encode()) + extra + 1)
    out = orjson.loads(
        dlq_record(
            source_topic="xrec.items",
            partition=0,
            offset=0,
            key=None,
            value=value,
            reason="too_large",
            error="too_large",
            failed_at_ms=0,
        )
    )
    assert out["value_truncated"] is True and out["value_size"] == len(value)
    if out["value"] is not None:
        kept = out["value"].encode()
        assert value.startswith(kept) and DLQ_VALUE_LIMIT - 3 <= len(kept) <= DLQ_VALUE_LIMIT
    else:
        assert base64.b64decode(out["value_base64"]) == value[:DLQ_VALUE_LIMIT]


def test_the_strategies_reach_every_parser_outcome() -> None:
    """Guard against vacuous properties: the generators above must produce both accepted and refused records."""
    outcomes: set[str] = set()

    @settings(max_examples=400, deadline=None, database=None, derandomize=True)  # a coverage guard: never flaky
    @given(kind=st.sampled_from(sorted(PARSERS)), name=st.sampled_from(FIELD_NAMES), value=json_values)
    def probe(kind: str, name: str, value: Any) -> None:
        try:
            PARSERS[kind](orjson.dumps({**VALID[kind], name: value}), Limits())
            outcomes.add("accepted")
        except RecordError as exc:
            outcomes.add(exc.reason)

    probe()
    assert "accepted" in outcomes
    assert {"wrong_type", "missing_field", "bad_timestamp"} <= outcomes
