"""The demo catalog: short news items on the same topics in seven languages, three of them non-Latin.

The texts live in ``catalog.tsv`` next to this module (package data), written for the demo: each
topic has its own headlines in every language, not translations of one list, so a reader of German
jazz news who is shown a Japanese jazz item sees the encoder matching meaning, not a copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

TOPICS = ("football", "cooking", "astronomy", "jazz", "hiking", "programming")
LANGUAGES = ("en", "de", "fr", "es", "ja", "zh", "ru")
LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "ja": "Japanese",
    "zh": "Chinese",
    "ru": "Russian",
}
DATA_FILE = "catalog.tsv"
COLUMNS = ("topic", "lang", "title", "body")


@dataclass(frozen=True)
class DemoItem:
    """One catalog entry; ``record()`` is its value on the items topic (wire contract)."""

    item_id: str
    topic: str
    lang: str
    title: str
    body: str
    ts: int

    def record(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "body": self.body,
            "lang": self.lang,
            "category": self.topic,
            "tags": [self.topic, "demo"],
            "available": True,
            "ts": self.ts,
        }


def read_texts(lines: Iterable[str] | None = None) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``(topic, lang) → [(title, body), …]`` from the TSV (the packaged file unless ``lines`` are given)."""
    if lines is None:
        lines = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8").splitlines()
    texts: dict[tuple[str, str], list[tuple[str, str]]] = {}
    header_seen = False
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.rstrip("\n").split("\t")
        if not header_seen:
            if tuple(cells) != COLUMNS:
                raise ValueError(f"{DATA_FILE} line {number}: expected the header {'/'.join(COLUMNS)}")
            header_seen = True
            continue
        if len(cells) != len(COLUMNS) or not all(c.strip() for c in cells):
            raise ValueError(f"{DATA_FILE} line {number}: expected {len(COLUMNS)} non-empty tab-separated cells")
        topic, lang, title, body = (c.strip() for c in cells)
        if topic not in TOPICS or lang not in LANGUAGES:
            raise ValueError(f"{DATA_FILE} line {number}: unknown topic {topic!r} or language {lang!r}")
        texts.setdefault((topic, lang), []).append((title, body))
    return texts


def build_catalog(items_per_topic: int | None = None, now_ms: int | None = None) -> list[DemoItem]:
    """The catalog, ``items_per_topic`` per topic and language (all when None), ids ``demo-<topic>-<lang>-<n>``.

    Timestamps count back one minute per item from ``now_ms`` (default: now) so items have distinct, recent times.
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    if items_per_topic is not None and items_per_topic < 1:
        raise ValueError("items_per_topic must be at least 1")
    texts = read_texts()
    items: list[DemoItem] = []
    for topic in TOPICS:
        for lang in LANGUAGES:
            for n, (title, body) in enumerate(texts.get((topic, lang), [])[:items_per_topic], start=1):
                ts = now_ms - len(items) * 60_000
                items.append(DemoItem(f"demo-{topic}-{lang}-{n}", topic, lang, title, body, ts))
    return items


def max_items_per_topic() -> int:
    """The largest ``--items-per-topic`` every topic and language can fill."""
    texts = read_texts()
    return min(len(texts.get((t, lang), [])) for t in TOPICS for lang in LANGUAGES)
