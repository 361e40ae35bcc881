"""``xrec produce items|events|control FILE``: send records from JSONL or CSV to their topic, keyed right.

Each line is checked against the wire contract first (``xrec.events``), so a bad line is reported
with its line number and reason instead of landing in the workers' DLQ; ``--no-validate`` sends
anything that is a JSON object with its key field (handy to exercise the DLQ). Sends are batched:
the producer gets every record without waiting for its acknowledgement, and delivery is checked in
chunks and at the final flush, so a file goes out at the broker's pace, not one round trip a line.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from xrec.commands import print_json
from xrec.errors import CommandError

KINDS = ("items", "events", "control")
KEY_FIELD = {"items": "item_id", "events": "user_id", "control": "user_id"}
#: CSV cells that hold lists, split on ``|``.
LIST_COLUMNS = {"tags"}
#: CSV cells that hold numbers (``ts`` stays text when it is ISO-8601).
NUMBER_COLUMNS = {"ts", "rating"}
BOOL_COLUMNS = {"available", "deleted"}
CHECK_EVERY = 5000  # sends between delivery checks: bounds memory and reports broker errors early


@dataclass(frozen=True)
class Line:
    """One input record: its line number, and either the object to send or why it cannot be sent."""

    number: int
    value: dict[str, Any] | None = None
    error: str | None = None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "produce",
        help="send items, events or control commands from a JSONL or CSV file to their topic",
        description=(
            "Reads JSON Lines (one object per line) or CSV (a header row; `tags` split on '|', `vector` split on "
            "'|' into numbers, `ts` and `rating` as numbers, `available`/`deleted` as booleans) and sends each "
            "record to its topic keyed by item_id (items) or user_id (events, control). Lines that break the "
            "wire contract are reported with their line number and not sent."
        ),
    )
    p.add_argument("kind", choices=KINDS, help="which topic the records belong to")
    p.add_argument("file", help="a .jsonl or .csv file; - reads stdin")
    p.add_argument("--topic", help="send here instead of the configured topic (XREC_TOPIC_ITEMS, …)")
    p.add_argument(
        "--format",
        choices=("auto", "jsonl", "csv"),
        default="auto",
        help="input format (auto: by file extension, else by the first character: '{' means JSON Lines)",
    )
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="only require a JSON object with its key field (to send deliberately bad records to the DLQ)",
    )
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any line was skipped")
    p.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    p.set_defaults(handler=run)


# --- reading ---------------------------------------------------------------------------------------


def detect_format(path: str, first_line: str | None) -> str:
    suffix = Path(path).suffix.lower() if path != "-" else ""
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "jsonl" if first_line is not None and first_line.lstrip().startswith("{") else "csv"


def decode_lines(raw: Iterable[bytes]) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)``, text None for a line that is not valid UTF-8 (a leading BOM is dropped)."""
    for number, data in enumerate(raw, start=1):
        if number == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            yield number, data.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None


def read_jsonl(lines: Iterable[tuple[int, str | None]]) -> Iterator[Line]:
    for number, text in lines:
        if text is None:
            yield Line(number, error="invalid_utf8: the line is not valid UTF-8")
            continue
        if not text.strip():
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield Line(number, error=f"not_json: {exc}")
            continue
        if not isinstance(value, dict):
            yield Line(number, error=f"not_object: expected a JSON object, got {type(value).__name__}")
            continue
        yield Line(number, value)


def read_csv(lines: Iterable[tuple[int, str | None]]) -> Iterator[Line]:
    """CSV rows as objects; ``number`` is the line a row ends on (the header is a line too)."""
    bad: list[int] = []

    def texts() -> Iterator[str]:
        for number, text in lines:
            if text is None:
                bad.append(number)
                yield "\n"  # an empty row in its place keeps the line count right
            else:
                yield text

    reader = csv.reader(texts())
    header: list[str] | None = None
    for row in reader:
        while bad:
            yield Line(bad.pop(0), error="invalid_utf8: the line is not valid UTF-8")
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [h.strip() for h in row]
            continue
        if len(row) > len(header):
            yield Line(reader.line_num, error=f"wrong_type: {len(row)} cells but the header has {len(header)}")
            continue
        try:
            yield Line(reader.line_num, convert_row(dict(zip(header, row, strict=False))))
        except ValueError as exc:
            yield Line(reader.line_num, error=f"wrong_type: {exc}")
    while bad:
        yield Line(bad.pop(0), error="invalid_utf8: the line is not valid UTF-8")


def convert_row(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells → JSON values: empty cells are left out; lists, numbers and booleans converted."""
    out: dict[str, Any] = {}
    for name, raw in row.items():
        cell = raw.strip()
        if not name or not cell:
            continue
        if name in LIST_COLUMNS:
            out[name] = [t.strip() for t in cell.split("|") if t.strip()]
        elif name == "vector":
            out[name] = [_number(name, x) for x in cell.split("|")]
        elif name in NUMBER_COLUMNS:
            out[name] = cell if name == "ts" and not _looks_numeric(cell) else _number(name, cell)
        elif name in BOOL_COLUMNS:
            out[name] = _boolean(name, cell)
        else:
            out[name] = cell
    return out


def _looks_numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _number(name: str, cell: str) -> int | float:
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {cell[:40]!r}") from None
    if math.isfinite(value) and value.is_integer() and "." not in cell and "e" not in cell.lower():
        return int(cell)
    return value


def _boolean(name: str, cell: str) -> bool:
    low = cell.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {cell[:40]!r}")


def validate(kind: str, line: Line, limits: Any, check_contract: bool = True) -> Line:
    """The line with an error if its object breaks the contract (or has no key, without full checks)."""
    from xrec.events import RecordError, parse_control, parse_event, parse_item

    if line.value is None:
        return line
    key = line.value.get(KEY_FIELD[kind])
    if key is None or isinstance(key, bool) or not isinstance(key, str | int) or not str(key).strip():
        return Line(line.number, error=f"missing_field: no {KEY_FIELD[kind]} to key the record by")
    if check_contract:
        parse = {"items": parse_item, "events": parse_event, "control": parse_control}[kind]
        try:
            parse(orjson.dumps(line.value), limits)
        except RecordError as exc:
            return Line(line.number, error=str(exc))
    return line


def record_key(kind: str, value: dict[str, Any]) -> bytes:
    return str(value[KEY_FIELD[kind]]).encode()


def open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # closed by the caller
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None


def read_lines(stream: Iterable[bytes], fmt: str, path: str) -> tuple[str, Iterator[Line]]:
    """``(format, lines)``; peeks at the first non-blank line when the format must be guessed."""
    numbered = decode_lines(stream)
    head: list[tuple[int, str | None]] = []
    first = None
    for pair in numbered:
        head.append(pair)
        if pair[1] is None or pair[1].strip():
            first = pair[1]
            break
    if fmt == "auto":
        fmt = detect_format(path, first)

    def all_lines() -> Iterator[tuple[int, str | None]]:
        yield from head
        yield from numbered

    return fmt, (read_jsonl(all_lines()) if fmt == "jsonl" else read_csv(all_lines()))


def count_lines(path: str) -> int | None:
    """Lines in a file (for the progress bar); None for stdin."""
    if path == "-":
        return None
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# --- progress ---------------------------------------------------------------------------------------


@dataclass
class Progress:
    """A one-line progress bar on stderr, redrawn with ``\\r`` at most 10 times a second (only on a terminal)."""

    label: str
    total: int | None
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def __post_init__(self) -> None:
        self.enabled = self.stream.isatty()

    def update(self, done: int, skipped: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        rate = done / max(now - self.started, 1e-6)
        if self.total:
            frac = min(1.0, (done + skipped) / self.total)
            bar = "#" * int(frac * 30)
            text = f"{self.label} [{bar:<30}] {done}/{self.total} {100 * frac:3.0f}%"
        else:
            text = f"{self.label} {done}"
        self.stream.write(f"\r{text}  {rate:,.0f}/s  {skipped} skipped ")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A message on its own line, clearing the bar first so the two do not mix."""
        self.stream.write(("\r\033[K" if self.enabled else "") + message + "\n")
        self.stream.flush()
        self._last = 0.0  # redraw the bar right away

    def close(self, done: int, skipped: int) -> None:
        if self.enabled:
            self.update(done, skipped, force=True)
            self.stream.write("\n")
            self.stream.flush()


# --- sending ----------------------------------------------------------------------------------------


@dataclass
class ProduceReport:
    kind: str
    topic: str
    file: str
    format: str
    sent: int = 0
    skipped: list[Line] = field(default_factory=list)
    failed: int = 0
    first_failure: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "topic": self.topic,
            "file": self.file,
            "format": self.format,
            "sent": self.sent,
            "skipped": len(self.skipped),
            "skipped_lines": [{"line": s.number, "error": s.error} for s in self.skipped[:1000]],
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }


async def send_lines(
    lines: Iterable[Line], kind: str, topic: str, kwargs: dict[str, Any], report: ProduceReport, progress: Progress
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(linger_ms=10, **kwargs)
    await producer.start()
    pending: list[asyncio.Future[Any]] = []

    async def settle() -> None:
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(outcome, BaseException):
                report.failed += 1
                report.first_failure = report.first_failure or f"{type(outcome).__name__}: {outcome}"
            else:
                report.sent += 1
        pending.clear()

    try:
        for line in lines:
            if line.value is None:
                report.skipped.append(line)
                progress.note(f"line {line.number}: {line.error}")
            else:
                future = await producer.send(topic, value=orjson.dumps(line.value), key=record_key(kind, line.value))
                pending.append(future)
                if len(pending) >= CHECK_EVERY:
                    await settle()
            progress.update(report.sent + len(pending), len(report.skipped))
        await producer.flush()
        await settle()
    finally:
        await producer.stop()


def client_bootstrap(settings: Any) -> str:
    """The broker a client command talks to: ``XREC_KAFKA_BOOTSTRAP``, else the local broker if it runs.

    Unlike ``xrec worker`` and ``xrec demo``, a producer or subscriber never starts a broker itself.
    """
    import logging

    from xrec.broker import LocalBroker

    if settings.kafka_bootstrap:
        return str(settings.kafka_bootstrap)
    status = LocalBroker.from_settings(settings).status()
    if not status.running:
        raise CommandError(
            "no Kafka broker: XREC_KAFKA_BOOTSTRAP is not set and the local broker is not running "
            "(start it with `xrec broker start`)"
        )
    logging.getLogger(__name__).info("using the local Kafka broker on %s", status.bootstrap)
    return status.bootstrap


def kafka_client_kwargs(settings: Any) -> dict[str, Any]:
    """aiokafka kwargs for the broker ``client_bootstrap`` finds, after checking that it answers."""
    from xrec.kafka import KafkaConnection, KafkaSettingsError, KafkaUnreachableError, check_connection, run_blocking

    try:
        connection = KafkaConnection.from_settings(settings, client_bootstrap(settings))
        run_blocking(lambda: check_connection(connection), timeout_s=30)
    except (KafkaSettingsError, KafkaUnreachableError) as exc:
        raise CommandError(str(exc)) from None
    return connection.aiokafka_kwargs()


def run(args: argparse.Namespace) -> int:
    from xrec.config import Settings, SettingsError
    from xrec.events import Limits

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None
    topic = (
        args.topic
        or {
            "items": settings.topic_items,
            "events": settings.topic_events,
            "control": settings.topic_control,
        }[args.kind]
    )
    from xrec.kafka import KafkaSettingsError, compression_type

    try:
        kwargs = {**kafka_client_kwargs(settings), "compression_type": compression_type(settings)}
    except KafkaSettingsError as exc:
        raise CommandError(str(exc)) from None
    limits = Limits.from_settings(settings)
    stream = open_input(args.file)
    started = time.monotonic()
    try:
        fmt, raw_lines = read_lines(stream, args.format, args.file)
        total = count_lines(args.file)
        if total is not None and fmt == "csv":
            total -= 1  # the header
        lines = (validate(args.kind, line, limits, not args.no_validate) for line in raw_lines)
        report = ProduceReport(args.kind, topic, args.file, fmt)
        progress = Progress(f"{args.kind} → {topic}", total)
        asyncio.run(send_lines(lines, args.kind, topic, kwargs, report, progress))
        progress.close(report.sent, len(report.skipped))
    finally:
        if args.file != "-":
            stream.close()
    report.seconds = time.monotonic() - started
    if args.json:
        print_json(report.to_dict())
    else:
        rate = report.sent / report.seconds if report.seconds > 0 else 0.0
        print(
            f"{args.kind}: sent {report.sent} records to {topic} in {report.seconds:.2f} s ({rate:,.0f}/s); "
            f"skipped {len(report.skipped)} line{'' if len(report.skipped) == 1 else 's'}"
        )
    if report.failed:
        raise CommandError(f"{report.failed} records were not delivered to {topic}: {report.first_failure}")
    if args.strict and report.skipped:
        return 1
    return 0
