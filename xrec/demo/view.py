"""The demo's terminal view: a line per list as it arrives, each user's latest list, the summary.

Items in a language the user never read are flagged with ``*`` (and colour on a terminal), which is
the point of the demo: the encoder matches meaning across languages. CJK titles count two columns.
"""

from __future__ import annotations

import os
import sys
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from xrec.demo.simulate import DemoUser
from xrec.demo.summary import ArrivedList, DemoStats


def char_width(ch: str) -> int:
    """Terminal columns of one character: CJK wide and full-width characters take two."""
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def display_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal columns (with an ellipsis when cut) and padded to exactly that width."""
    used = display_width(text)
    if used <= width:
        return text + " " * (width - used)
    out, used = [], 0
    for ch in text:
        if used + char_width(ch) > width - 1:
            break
        out.append(ch)
        used += char_width(ch)
    return "".join(out) + "…" + " " * (width - 1 - used)


@dataclass
class Console:
    """Where the demo talks: steps and the live view on stdout, or on stderr when ``--json`` owns stdout."""

    as_json: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.as_json:
            self.stream = sys.stderr
        self.color = self.stream.isatty() and os.environ.get("NO_COLOR") is None

    def say(self, message: str) -> None:
        self.stream.write(f"[{time.monotonic() - self.started:6.1f}s] {message}\n")
        self.stream.flush()

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def mark_lang(self, lang: str, other: bool) -> str:
        """A language code, flagged with ``*`` (and colour on a terminal) when the user never read it."""
        text = f"{lang}*" if other else f"{lang} "
        return f"\033[1;36m{text}\033[0m" if other and self.color else text

    def live(self, lst: ArrivedList, stats: DemoStats, top: int = 3) -> None:
        if self.as_json:
            return
        user = lst.user
        what = lst.trigger.type if lst.trigger else "list"
        shown = " · ".join(
            f"{self.mark_lang(item.lang, stats.is_other_language(user, item))}{clip(item.title or item.item_id, 24)}"
            for item in lst.items[:top]
        )
        latency = f"{lst.latency_ms:5.0f} ms" if lst.latency_ms is not None else "      ? "
        self.line(f"  {user.user_id} {user.lang}/{user.topic:<11} {what:<7} {latency}  {shown}")

    def live_other(self, user_id: str, items: Sequence[dict[str, Any]], titles: dict[str, str], top: int = 3) -> None:
        """A list for a user the demo did not simulate (``--keep-running`` with your own events)."""
        if self.as_json:
            return
        shown = " · ".join(
            f"{item.get('lang', '?')} {clip(titles.get(str(item.get('item_id')), str(item.get('item_id'))), 24)}"
            for item in items[:top]
        )
        self.line(f"  {user_id} (your user)  {shown}")

    def final_lists(self, stats: DemoStats, users: Sequence[DemoUser], top: int) -> None:
        self.line("")
        self.line(f"Latest list per user (top {top}; * = a language the user never used):")
        for user in users:
            lst = stats.latest.get(user.user_id)
            used = ",".join(sorted(stats.used_languages(user.user_id))) or user.lang
            if lst is None:
                self.line(f"  {user.user_id}  reads {user.lang} {user.topic}: no list received")
                continue
            self.line(f"  {user.user_id}  reads {user.lang} {user.topic} (used: {used}), strategy {lst.strategy}")
            for rank, item in enumerate(lst.items[:top], start=1):
                mark = self.mark_lang(item.lang, stats.is_other_language(user, item))
                topic = item.topic or "?"
                self.line(f"     {rank}. {item.score:6.3f}  {mark} {topic:<11} {item.title or item.item_id}")

    def summary(self, summary: dict[str, Any]) -> None:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.0f}%"

        lat = summary["latency_ms"]
        worker = summary.get("worker", {})
        shown = f" and {summary['impressions']['sent']} impressions" if summary["impressions"]["sent"] else ""
        self.line("")
        self.line(f"Summary of {summary['run']} ({summary['seconds']['total']:.0f} s in all):")
        rows = [
            (
                "events",
                f"{summary['events_sent']} sent by {summary['users']} users{shown}, "
                f"{worker.get('events_processed', '?')} processed by the worker, "
                f"{worker.get('dlq_records', '?')} to the DLQ; {summary['lists_received']} lists received",
            ),
            (
                "event → list latency",
                f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
                f"(event ts to arrival at this consumer, {lat['lists_measured']} lists)",
            ),
            ("on the user's topic", f"{pct(summary['share_on_topic'])} of the items in the latest lists"),
            (
                "new language",
                f"{pct(summary['share_new_language'])} are in a language the user never used "
                f"(on topic and new language: {pct(summary['share_on_topic_new_language'])})",
            ),
            (
                "coverage",
                f"{summary['distinct_items_recommended']} of {summary['catalog_items']} catalog items "
                f"({pct(summary['coverage'])}) appeared in some list",
            ),
        ]
        if summary["impressions"]["sent"]:
            rows.insert(
                1,
                (
                    "impressions",
                    f"each list shown to its reader, {worker.get('impressions_processed', '?')} processed; "
                    f"{summary['impressions']['clicks_on_shown_items']} of the readers' "
                    f"{summary['impressions']['clicks']} clicks were on items a list had shown them",
                ),
            )
        for name, value in rows:
            self.line(f"  {name:<21} {value}")
