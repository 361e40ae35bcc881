"""What the demo measures while it plays: lists as they arrive, and the figures it ends with.

Kept apart from the process and Kafka plumbing so the arithmetic (percentiles, language and topic
shares, coverage) is plain code with unit tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from xrec.demo.catalog import DemoItem
from xrec.demo.simulate import DemoUser, PlannedEvent


@dataclass(frozen=True)
class ShownItem:
    item_id: str
    score: float
    lang: str
    topic: str | None  # None: not a demo catalog item
    title: str


@dataclass(frozen=True)
class ArrivedList:
    """One list read from the recommendations topic, with the latency of the event that triggered it."""

    user: DemoUser
    items: tuple[ShownItem, ...]
    strategy: str
    trigger_event_id: str | None
    trigger: PlannedEvent | None
    latency_ms: float | None
    list_id: str | None = None

    def impression(self, ts_ms: int, event_id: str) -> dict[str, Any]:
        """The impression event a client sends when it shows this list (every item, in its order)."""
        return {
            "event_id": event_id,
            "user_id": self.user.user_id,
            "type": "impression",
            "item_ids": [item.item_id for item in self.items],
            "positions": list(range(len(self.items))),
            "list_id": self.list_id,
            "ts": ts_ms,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0–100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class DemoStats:
    """Collects lists for the demo's users; ``record_sent`` must see an event before its list arrives."""

    users: Sequence[DemoUser]
    catalog: Sequence[DemoItem]
    sent: dict[str, tuple[PlannedEvent, int]] = field(default_factory=dict)  # event_id → (event, ts_ms)
    last_event: dict[str, str] = field(default_factory=dict)  # user_id → event_id of their latest event
    latest: dict[str, ArrivedList] = field(default_factory=dict)
    arrived: list[ArrivedList] = field(default_factory=list)
    recommended_ids: set[str] = field(default_factory=set)
    tombstones: int = 0
    foreign_lists: int = 0  # lists for users this run did not simulate
    impressions_sent: int = 0
    shown_to: dict[str, set[str]] = field(default_factory=dict)  # user_id → items a list showed them
    clicks_on_shown: int = 0  # the readers' clicks on an item a list had shown them before

    def __post_init__(self) -> None:
        self._users = {u.user_id: u for u in self.users}
        self._items = {i.item_id: i for i in self.catalog}
        self._used_langs: dict[str, set[str]] = {u.user_id: set() for u in self.users}

    def record_sent(self, event: PlannedEvent, event_id: str, ts_ms: int) -> None:
        self.sent[event_id] = (event, ts_ms)
        if event.type == "click" and event.item_id in self.shown_to.get(event.user_id, ()):
            self.clicks_on_shown += 1
        self.last_event[event.user_id] = event_id
        used = self._used_langs[event.user_id]
        used.add(event.lang)
        item = self._items.get(event.item_id)
        if item is not None:
            used.add(item.lang)

    def record_list(self, value: dict[str, Any] | None, key: str, arrived_ms: float) -> ArrivedList | None:
        """Add one record of the recommendations topic (``None`` is a tombstone); returns the list if it is ours."""
        if value is None:
            self.tombstones += 1
            self.latest.pop(key, None)
            return None
        user = self._users.get(str(value.get("user_id", key)))
        if user is None:
            self.foreign_lists += 1
            return None
        shown = []
        for entry in value.get("items") or []:
            if not isinstance(entry, dict) or entry.get("item_id") is None:
                continue
            item = self._items.get(str(entry["item_id"]))
            shown.append(
                ShownItem(
                    str(entry["item_id"]),
                    float(entry.get("score", 0.0)),
                    str(entry.get("lang") or (item.lang if item else "?")),
                    item.topic if item else None,
                    item.title if item else "",
                )
            )
            self.recommended_ids.add(str(entry["item_id"]))
        trigger_id = value.get("trigger_event_id")
        trigger = self.sent.get(trigger_id or "")
        latency = arrived_ms - trigger[1] if trigger else None
        list_id = value.get("list_id")
        lst = ArrivedList(
            user,
            tuple(shown),
            str(value.get("strategy", "")),
            trigger_id,
            trigger[0] if trigger else None,
            latency,
            str(list_id) if list_id else None,
        )
        self.arrived.append(lst)
        self.latest[user.user_id] = lst
        return lst

    def record_shown(self, lst: ArrivedList) -> None:
        """An impression of ``lst`` was sent: its items were shown to its user."""
        self.impressions_sent += 1
        self.shown_to.setdefault(lst.user.user_id, set()).update(item.item_id for item in lst.items)

    def used_languages(self, user_id: str) -> set[str]:
        return set(self._used_langs.get(user_id, set()))

    def is_other_language(self, user: DemoUser, item: ShownItem) -> bool:
        return item.lang not in self._used_langs.get(user.user_id, {user.lang})

    def users_done(self) -> list[str]:
        """Users whose latest list answers their latest event (what the demo waits for)."""
        done = []
        for user_id, event_id in self.last_event.items():
            lst = self.latest.get(user_id)
            if lst is not None and lst.trigger_event_id == event_id:
                done.append(user_id)
        return done

    def summary(self) -> dict[str, Any]:
        """The demo's closing figures; shares are over each user's latest list, coverage over every list."""
        latencies = [a.latency_ms for a in self.arrived if a.latency_ms is not None]
        final_items = [(lst.user, item) for lst in self.latest.values() for item in lst.items]
        n = len(final_items)

        def share(pred: Any) -> float | None:
            return round(sum(1 for user, item in final_items if pred(user, item)) / n, 4) if n else None

        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        return {
            "users": len(self.users),
            "catalog_items": len(self.catalog),
            "events_sent": len(self.sent),
            "lists_received": len(self.arrived),
            "users_with_final_list": len(self.users_done()),
            "latency_ms": {
                "p50": round(p50, 1) if p50 is not None else None,
                "p99": round(p99, 1) if p99 is not None else None,
                "max": round(max(latencies), 1) if latencies else None,
                "lists_measured": len(latencies),
            },
            "items_in_final_lists": n,
            "share_new_language": share(self.is_other_language),
            "share_on_topic": share(lambda user, item: item.topic == user.topic),
            "share_on_topic_new_language": share(
                lambda user, item: item.topic == user.topic and self.is_other_language(user, item)
            ),
            "languages_in_final_lists": sorted({item.lang for _, item in final_items}),
            "coverage": round(len(self.recommended_ids) / len(self.catalog), 4) if self.catalog else None,
            "distinct_items_recommended": len(self.recommended_ids),
            "tombstones": self.tombstones,
            "impressions": {
                "sent": self.impressions_sent,
                "clicks_on_shown_items": self.clicks_on_shown,
                "clicks": sum(1 for event, _ in self.sent.values() if event.type == "click"),
            },
        }
