"""Wire contracts: parse, validate and serialize the JSON records of every xrec topic (orjson).

Parsing never lets a malformed record through half-checked: it returns a typed object or raises
``RecordError`` with a short, stable ``reason`` code (a metrics label and DLQ field) and a message a
human can act on. Unknown fields are ignored so producers can add their own.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from xrec.config import EVENT_TYPES, EventType, Settings
from xrec.errors import XrecError

#: Stable reason codes. They are metric labels and DLQ fields, so the set stays small and fixed.
REASONS = (
    "too_large",
    "invalid_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "unknown_event_type",
    "bad_timestamp",
    "text_too_long",
    "too_many_tags",
    "too_many_items",
    "bad_vector",
    "bad_vector_record",
    "other_vector_space",
    "unknown_item",
    "unknown_command",
    "processing_error",
)

#: Timestamps outside [2000-01-01, 2100-01-01) are refused: almost always seconds sent as
#: milliseconds (or the reverse), which would wreck time decay.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
MAX_ID_CHARS = 256
MAX_LANG_CHARS = 35  # BCP 47 tags are at most 35 characters
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


class RecordError(XrecError, ValueError):
    """A record that cannot be processed; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Limits:
    """Size limits that protect workers and the encoder from hostile or broken producers."""

    max_record_bytes: int = 1_000_000
    max_text_chars: int = 20_000
    max_tags: int = 64
    vector_dim: int | None = None
    max_impression_items: int = 100

    @classmethod
    def from_settings(cls, settings: Settings, vector_dim: int | None = None) -> Limits:
        return cls(
            settings.max_record_bytes,
            settings.max_text_chars,
            settings.max_tags,
            vector_dim,
            settings.max_impression_items,
        )


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemUpsert:
    item_id: str
    title: str = ""
    body: str = ""
    lang: str = "und"
    category: str = ""
    tags: tuple[str, ...] = ()
    available: bool = True
    ts: int = 0
    vector: np.ndarray | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        """What the encoder reads: title and body, as one passage."""
        return f"{self.title}. {self.body}" if self.title and self.body else self.title or self.body

    def payload(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title[:300],
            "lang": self.lang,
            "category": self.category,
            "tags": list(self.tags),
            "available": self.available,
            "ts": self.ts,
        }


@dataclass(frozen=True)
class ItemDelete:
    item_id: str
    ts: int = 0


@dataclass(frozen=True)
class Interaction:
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    ts: int
    text: str | None = None
    rating: float | None = None
    lang: str | None = None

    def to_json(self) -> bytes:
        """The event as the events topic carries it (what ``parse_event`` reads back)."""
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "user_id": self.user_id,
                "item_id": self.item_id,
                "type": self.type,
                "ts": self.ts,
                "text": self.text,
                "rating": self.rating,
                "lang": self.lang,
            }
        )


IMPRESSION = "impression"
#: Largest position an impression may report (a page deeper than this is a broken producer).
MAX_POSITION = 100_000


@dataclass(frozen=True)
class Impression:
    """Items shown to a user (an event of the events topic with ``"type": "impression"``).

    What the user passed over is as telling as what they took: impressions feed the items' real-time
    click-through rates and the user's fatigue with items shown often and never taken. ``list_id``
    names the published list they came from, when it was xrec's.
    """

    event_id: str
    user_id: str
    item_ids: tuple[str, ...]
    ts: int
    positions: tuple[int, ...] | None = None
    list_id: str | None = None

    @property
    def type(self) -> str:
        return IMPRESSION

    def to_json(self) -> bytes:
        """The event as the events topic carries it (what ``parse_event`` reads back)."""
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "user_id": self.user_id,
                "type": IMPRESSION,
                "item_ids": list(self.item_ids),
                "positions": None if self.positions is None else list(self.positions),
                "list_id": self.list_id,
                "ts": self.ts,
            }
        )


#: A record of the events topic: something a user did with one item, or what they were shown.
Event = Interaction | Impression


@dataclass(frozen=True)
class ForgetUser:
    user_id: str


ItemRecord = ItemUpsert | ItemDelete
ControlCommand = ForgetUser


# --- parsing -----------------------------------------------------------------------------------


def decode_json_object(raw: bytes | str | None, limits: Limits) -> dict[str, Any]:
    """Bytes → dict, with a precise reason for every way it can fail."""
    if raw is None:
        raise RecordError("missing_field", "record has no value")
    size = len(raw)
    if size > limits.max_record_bytes:
        raise RecordError("too_large", f"record is {size} bytes; the limit is {limits.max_record_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not _is_utf8(raw):
            raise RecordError("invalid_utf8", "record is not valid UTF-8") from None
        raise RecordError("not_json", f"record is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _is_utf8(raw: bytes | str) -> bool:
    """Decide invalid_utf8 vs not_json from the bytes, not from orjson's message (a BOM is valid UTF-8)."""
    try:
        raw.decode("utf-8") if isinstance(raw, bytes) else raw.encode("utf-8")
    except UnicodeError:
        return False
    return True


def parse_item(raw: bytes | str | None, limits: Limits) -> ItemRecord:
    """A record of the items topic: an upsert, or a delete when ``deleted`` is true."""
    obj = decode_json_object(raw, limits)
    item_id = _id(obj, "item_id")
    ts = parse_timestamp(obj["ts"]) if obj.get("ts") is not None else 0
    if _opt(obj, "deleted", bool, False):
        return ItemDelete(item_id=item_id, ts=ts)
    title = _text(obj, "title", limits)
    body = _text(obj, "body", limits)
    tags_raw = _opt(obj, "tags", list, [])
    if len(tags_raw) > limits.max_tags:
        raise RecordError("too_many_tags", f"{len(tags_raw)} tags; the limit is {limits.max_tags}")
    if not all(isinstance(t, str) and len(t) <= MAX_ID_CHARS for t in tags_raw):
        raise RecordError("wrong_type", f"tags must be strings of at most {MAX_ID_CHARS} characters")
    vector = parse_vector(obj["vector"], limits.vector_dim) if obj.get("vector") is not None else None
    if vector is None and not (title or body):
        raise RecordError("missing_field", "an item needs a title or body to encode, or a precomputed vector")
    category = _opt(obj, "category", str, "")
    if len(category) > MAX_ID_CHARS:
        raise RecordError("invalid_value", f"category longer than {MAX_ID_CHARS} characters")
    return ItemUpsert(
        item_id=item_id,
        title=title,
        body=body,
        lang=_lang(obj.get("lang")) or "und",
        category=category,
        tags=tuple(tags_raw),
        available=_opt(obj, "available", bool, True),
        ts=ts,
        vector=vector,
    )


def parse_event(raw: bytes | str | None, limits: Limits) -> Event:
    """A record of the events topic. A missing ``event_id`` is derived from the event's content."""
    obj = decode_json_object(raw, limits)
    user_id = _id(obj, "user_id")
    etype = obj.get("type")
    if etype is None:
        raise RecordError("missing_field", "missing field 'type'")
    if etype == IMPRESSION:
        return _impression(obj, user_id, limits)
    item_id = _id(obj, "item_id")
    if etype not in EVENT_TYPES:
        raise RecordError(
            "unknown_event_type",
            f"unknown event type {str(etype)[:40]!r}; expected one of {', '.join((*EVENT_TYPES, IMPRESSION))}",
        )
    if obj.get("ts") is None:
        raise RecordError("missing_field", "missing field 'ts'")
    ts = parse_timestamp(obj["ts"])
    text = _text(obj, "text", limits) or None
    rating = obj.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int | float):
            raise RecordError("wrong_type", "rating must be a number from 1 to 5")
        if not 1 <= rating <= 5:
            raise RecordError("invalid_value", f"rating {rating} is outside 1–5")
        rating = float(rating)
    has_id = obj.get("event_id") is not None
    event_id = _id(obj, "event_id") if has_id else derive_event_id(user_id, item_id, etype, ts)
    return Interaction(
        event_id=event_id,
        user_id=user_id,
        item_id=item_id,
        type=etype,
        ts=ts,
        text=text,
        rating=rating,
        lang=_lang(obj.get("lang")),
    )


def _impression(obj: dict[str, Any], user_id: str, limits: Limits) -> Impression:
    """An impression: distinct item ids (at most ``max_impression_items``), optional positions and list id."""
    raw_ids = obj.get("item_ids")
    if raw_ids is None:
        raise RecordError("missing_field", "an impression needs 'item_ids', the items shown")
    if not isinstance(raw_ids, list) or not raw_ids:
        raise RecordError("wrong_type", "item_ids must be a non-empty list of item ids")
    if len(raw_ids) > limits.max_impression_items:
        raise RecordError("too_many_items", f"{len(raw_ids)} items shown; the limit is {limits.max_impression_items}")
    item_ids = tuple(_id({"item_id": v}, "item_id") for v in raw_ids)
    if len(set(item_ids)) != len(item_ids):
        twice = next(i for i in item_ids if item_ids.count(i) > 1)
        raise RecordError("invalid_value", f"item {twice[:60]!r} is shown twice in one impression")
    positions = None
    raw_positions = obj.get("positions")
    if raw_positions is not None:
        if not isinstance(raw_positions, list) or len(raw_positions) != len(item_ids):
            raise RecordError("wrong_type", "positions must be a list with one position per item id")
        if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= MAX_POSITION for p in raw_positions):
            raise RecordError("invalid_value", f"positions must be whole numbers from 0 to {MAX_POSITION}")
        if len(set(raw_positions)) != len(raw_positions):
            raise RecordError("invalid_value", "two items are shown at the same position")
        positions = tuple(raw_positions)
    list_id = _id(obj, "list_id") if obj.get("list_id") is not None else None
    if obj.get("ts") is None:
        raise RecordError("missing_field", "missing field 'ts'")
    ts = parse_timestamp(obj["ts"])
    if obj.get("event_id") is not None:
        event_id = _id(obj, "event_id")
    else:
        event_id = derive_event_id(user_id, "\x1e".join(item_ids), IMPRESSION, ts)
    return Impression(event_id, user_id, item_ids, ts, positions, list_id)


def parse_control(raw: bytes | str | None, limits: Limits) -> ControlCommand:
    obj = decode_json_object(raw, limits)
    ctype = obj.get("type")
    if ctype != "forget_user":
        raise RecordError("unknown_command", f"unknown control command {str(ctype)[:40]!r}; expected forget_user")
    return ForgetUser(user_id=_id(obj, "user_id"))


def parse_timestamp(value: Any) -> int:
    """Epoch milliseconds (int or float) or an ISO-8601 string → epoch milliseconds."""
    if isinstance(value, bool):
        raise RecordError("bad_timestamp", "ts must be epoch milliseconds or ISO-8601, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise RecordError("bad_timestamp", "ts is not a finite number")
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > 40:
            raise RecordError("bad_timestamp", "ts string is too long to be ISO-8601")
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            raise RecordError("bad_timestamp", f"ts {text!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise RecordError("bad_timestamp", f"ts {text!r} has no time zone (add Z or an offset)")
        ms = (parsed - _EPOCH) // _ONE_MS  # exact; timestamp() * 1000 in floats loses a millisecond now and then
    else:
        raise RecordError("bad_timestamp", f"ts must be epoch milliseconds or ISO-8601, got {type(value).__name__}")
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise RecordError("bad_timestamp", f"ts {ms} is outside 2000–2100 in epoch milliseconds (seconds sent as ms?)")
    return ms


def parse_vector(value: Any, dim: int | None) -> np.ndarray:
    """A precomputed item vector: finite numbers, the store's dimension, not all zero; L2-normalized."""
    if not isinstance(value, list) or not value:
        raise RecordError("bad_vector", "vector must be a non-empty list of numbers")
    if dim is not None and len(value) != dim:
        raise RecordError("bad_vector", f"vector has {len(value)} dimensions; the store uses {dim}")
    # numpy would turn "1.5" and true into numbers and nested lists into a matrix: refuse them first.
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise RecordError("bad_vector", "vector must be a flat list of numbers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise RecordError("bad_vector", "vector must hold finite numbers only") from None
    if not np.all(np.isfinite(arr)):
        raise RecordError("bad_vector", "vector must be a flat list of finite numbers")
    peak = float(np.max(np.abs(arr)))
    if peak == 0.0:
        raise RecordError("bad_vector", "vector is all zeros")
    arr = arr / peak  # scale first so the norm neither overflows (1e308) nor underflows (1e-200)
    return (arr / float(np.linalg.norm(arr))).astype(np.float32)


def derive_event_id(user_id: str, item_id: str, etype: str, ts: int) -> str:
    """Deterministic id for producers that send none, so a redelivered event is still a duplicate."""
    digest = hashlib.blake2b(f"{user_id}\x1f{item_id}\x1f{etype}\x1f{ts}".encode(), digest_size=12)
    return "d-" + digest.hexdigest()


def _id(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise RecordError("missing_field", f"missing field {name!r}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise RecordError("invalid_value", f"{name} is empty")
    if len(text) > MAX_ID_CHARS:
        raise RecordError("invalid_value", f"{name} is longer than {MAX_ID_CHARS} characters")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in text):  # C0, DEL and C1 controls
        raise RecordError("invalid_value", f"{name} contains control characters")
    return text


def _text(obj: dict[str, Any], name: str, limits: Limits) -> str:
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limits.max_text_chars:
        raise RecordError("text_too_long", f"{name} has {len(value)} characters; the limit is {limits.max_text_chars}")
    return value.strip()


def _opt(obj: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise RecordError("wrong_type", f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _lang(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RecordError("wrong_type", "lang must be a language tag string such as 'en' or 'zh-Hant'")
    if len(value) > MAX_LANG_CHARS or not all((ch.isascii() and ch.isalnum()) or ch in "-_" for ch in value):
        raise RecordError("invalid_value", f"lang {value[:40]!r} is not a language tag")
    return value.lower().replace("_", "-")


# --- output records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    score: float
    lang: str
    because: str | None = None


@dataclass(frozen=True)
class RecommendationList:
    """What subscribers of the recommendations topic read: the latest list per user (compacted)."""

    user_id: str
    generated_at: int
    trigger_event_id: str | None
    strategy: str
    items: tuple[RecommendedItem, ...]
    variant: str = "A"
    #: Names this list, so the impression events of what a client showed from it can refer to it.
    list_id: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "list_id": self.list_id,
                "user_id": self.user_id,
                "generated_at": self.generated_at,
                "trigger_event_id": self.trigger_event_id,
                "strategy": self.strategy,
                "variant": self.variant,
                "items": [
                    {"item_id": i.item_id, "score": round(i.score, 5), "lang": i.lang, "because": i.because}
                    for i in self.items
                ],
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> RecommendationList:
        obj = orjson.loads(raw)
        return cls(
            user_id=obj["user_id"],
            generated_at=obj["generated_at"],
            trigger_event_id=obj.get("trigger_event_id"),
            strategy=obj["strategy"],
            variant=obj.get("variant", "A"),
            list_id=obj.get("list_id"),
            items=tuple(RecommendedItem(i["item_id"], i["score"], i["lang"], i.get("because")) for i in obj["items"]),
        )


#: Raw values kept in a DLQ record are cut here, so a too-large record still fits in the DLQ topic.
DLQ_VALUE_LIMIT = 64 * 1024


def dlq_record(
    *,
    source_topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    error: str,
    exception: str = "RecordError",
    failed_at_ms: int,
) -> bytes:
    """The DLQ record: where the bad record came from, its raw value (text or base64) and why it failed."""
    out: dict[str, Any] = {
        "source_topic": _safe_text(source_topic),
        "partition": partition,
        "offset": offset,
        "key": _raw_text(key, DLQ_VALUE_LIMIT)[0] if key is not None else None,
        "value": None,
        "value_base64": None,
        "value_size": None if value is None else len(value),
        "value_truncated": bool(value is not None and len(value) > DLQ_VALUE_LIMIT),
        "error": _safe_text(error[:2000]),
        "error_class": reason,
        "exception": _safe_text(exception),
        "failed_at": failed_at_ms,
    }
    if value is not None:
        text, is_text = _raw_text(value, DLQ_VALUE_LIMIT)
        out["value" if is_text else "value_base64"] = text
    return orjson.dumps(out)


def _safe_text(text: str) -> str:
    """Exception messages may hold lone surrogates (surrogateescape'd paths) that orjson refuses to write."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _raw_text(raw: bytes, limit: int) -> tuple[str, bool]:
    """UTF-8 text when the bytes are text (a cut may split one character: trim up to 3 bytes), else base64."""
    cut = raw[:limit]
    for trim in range(4 if len(raw) > limit else 1):
        try:
            return cut[: len(cut) - trim].decode("utf-8"), True
        except UnicodeDecodeError:
            continue
    return base64.b64encode(cut).decode("ascii"), False
