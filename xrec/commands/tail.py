"""``xrec tail``: follow the recommendations topic and print each list readably, with item titles.

Titles come from the items topic, read once at start into a bounded dict (latest upsert per item,
deletes honoured), so a list reads as headlines rather than ids. It reads without a consumer group,
so tailing never moves anyone's committed offsets.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from xrec.errors import CommandError

log = logging.getLogger(__name__)

MAX_TITLES = 200_000  # items whose titles are kept; a larger catalog shows ids for the rest
TITLE_CHARS = 120


@dataclass(frozen=True)
class ItemInfo:
    title: str
    lang: str


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "tail",
        help="follow the recommendations topic and print each list with item titles",
        description=(
            "Subscribes to the recommendations topic (XREC_TOPIC_RECOMMENDATIONS) and prints every list: user, "
            "strategy, then each item with score, language and title (looked up once in the items topic). "
            "A tombstone (after forget_user) prints as 'user X forgotten'."
        ),
    )
    p.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest retained list (the topic is compacted: the latest list per user)",
    )
    p.add_argument("--user", action="append", metavar="U", help="only this user's lists (repeatable)")
    p.add_argument("--max", type=int, metavar="N", help="exit after N lists")
    p.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds without a new list")
    p.add_argument("--no-titles", action="store_true", help="do not read the items topic for titles")
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON Lines: one JSON object per list (as published, each item with its title when known); "
        'a tombstone is {"user_id": U, "forgotten": true}',
    )
    p.set_defaults(handler=run)


# --- formatting -------------------------------------------------------------------------------------


def format_list(value: dict[str, Any], titles: dict[str, ItemInfo]) -> str:
    """A published list as text: a header line, then one line per item."""
    generated = value.get("generated_at")
    when = datetime.fromtimestamp(generated / 1000).strftime("%H:%M:%S.%f")[:-3] if generated else "?"
    trigger = value.get("trigger_event_id")
    head = f"{value.get('user_id', '?')}  {value.get('strategy', '?')}"
    if value.get("variant"):
        head += f" (variant {value['variant']})"
    head += f"  at {when}"
    if trigger:
        head += f"  after event {trigger}"
    lines = [head]
    items = value.get("items") or []
    if not items:
        lines.append("    (empty list)")
    for rank, item in enumerate(items, start=1):
        info = titles.get(str(item.get("item_id")))
        lang = item.get("lang") or (info.lang if info else "?")
        score = item.get("score")
        score_text = f"{score:6.3f}" if isinstance(score, int | float) else "     ?"
        title = f"{info.title}  [{item.get('item_id')}]" if info else f"[{item.get('item_id')}]"
        lines.append(f"  {rank:2d}. {score_text}  {lang:<5} {title}")
    return "\n".join(lines)


def with_titles(value: dict[str, Any], titles: dict[str, ItemInfo]) -> dict[str, Any]:
    """The list with ``title`` added to each item whose title is known (for ``--json``)."""
    items = []
    for item in value.get("items") or []:
        info = titles.get(str(item.get("item_id")))
        items.append({**item, "title": info.title} if info else item)
    return {**value, "items": items}


# --- reading ----------------------------------------------------------------------------------------


async def load_titles(
    kwargs: dict[str, Any], topic: str, limit: int = MAX_TITLES, timeout_s: float = 30.0
) -> dict[str, ItemInfo]:
    """Titles and languages of the items topic up to its current end (bounded in items and time)."""
    from xrec.kafka import read_to_end

    titles: dict[str, ItemInfo] = {}
    if not await read_to_end(kwargs, topic, lambda r: _remember(titles, r.key, r.value, limit), timeout_s=timeout_s):
        log.warning("read %d titles from %s in %.0f s and stopped there", len(titles), topic, timeout_s)
    return titles


def _remember(titles: dict[str, ItemInfo], key: bytes | None, value: bytes | None, limit: int) -> None:
    try:
        obj = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return
    item_id = obj.get("item_id") if isinstance(obj, dict) else (key.decode(errors="replace") if key else None)
    if item_id is None:
        return
    item_id = str(item_id)
    if not isinstance(obj, dict) or obj.get("deleted"):
        titles.pop(item_id, None)
    elif item_id in titles or len(titles) < limit:
        title = str(obj.get("title") or obj.get("body") or "")[:TITLE_CHARS]
        titles[item_id] = ItemInfo(title, str(obj.get("lang") or "?"))


async def follow(args: argparse.Namespace, kwargs: dict[str, Any], topic: str, titles: dict[str, ItemInfo]) -> int:
    """Print lists until ``--max`` lists, ``--timeout`` seconds of silence, or Ctrl-C; returns lists printed."""
    from aiokafka import AIOKafkaConsumer

    from xrec.commands import print_json

    users = set(args.user or [])
    consumer = AIOKafkaConsumer(
        topic,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        **kwargs,
    )
    await consumer.start()
    shown = 0
    try:
        while args.max is None or shown < args.max:
            timeout_ms = int(args.timeout * 1000) if args.timeout is not None else 1000
            batches = await consumer.getmany(timeout_ms=timeout_ms)
            records = sorted((r for rs in batches.values() for r in rs), key=lambda r: r.timestamp)
            if not records and args.timeout is not None:
                break
            for record in records:
                key = record.key.decode(errors="replace") if record.key is not None else ""
                if users and key not in users:
                    continue
                if record.value is None:
                    if args.json:
                        print_json({"user_id": key, "forgotten": True})
                    else:
                        print(f"user {key} forgotten\n", flush=True)
                else:
                    try:
                        value = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        print(f"skipped a record that is not JSON at offset {record.offset}", file=sys.stderr)
                        continue
                    if args.json:
                        print_json(with_titles(value, titles))
                    else:
                        print(format_list(value, titles) + "\n", flush=True)
                shown += 1
                if args.max is not None and shown >= args.max:
                    break
    finally:
        await consumer.stop()
    return shown


def run(args: argparse.Namespace) -> int:
    from xrec.commands.produce import kafka_client_kwargs
    from xrec.config import Settings, SettingsError

    if args.max is not None and args.max < 1:
        raise CommandError("--max must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise CommandError("--timeout must be positive")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None
    kwargs = kafka_client_kwargs(settings)
    titles: dict[str, ItemInfo] = {}
    if not args.no_titles:
        titles = asyncio.run(load_titles(kwargs, settings.topic_items))
        log.info("%d item titles read from %s", len(titles), settings.topic_items)
    asyncio.run(follow(args, kwargs, settings.topic_recommendations, titles))
    return 0
