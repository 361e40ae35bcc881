"""Simulated readers for the demo: each reads one topic in one language, then the demo plays their events.

A user's session is short and realistic: views, clicks, a like, a review written in the user's own
language with a rating, and a dislike of an item on another topic. Events get ids and timestamps
when they are sent (``PlannedEvent.record``), so event-to-publish latency is measured from now.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xrec.demo.catalog import LANGUAGES, TOPICS, DemoItem

#: A review in each language, naming the topic the way a reader would.
REVIEW_TEMPLATES = {
    "en": "Really enjoyed this one, more stories about {topic} like it, please.",
    "de": "Sehr gern gelesen, bitte mehr solche Artikel über {topic}!",
    "fr": "Article passionnant, j'aimerais en lire davantage sur {topic}.",
    "es": "Me ha encantado, quiero leer más sobre {topic}.",
    "ja": "とても面白かった。{topic}の記事をもっと読みたい。",
    "zh": "写得很好，希望多看一些关于{topic}的文章。",
    "ru": "Отличная статья, хочу читать больше про {topic}.",
}
TOPIC_WORDS = {
    "en": {"football": "football", "cooking": "cooking", "astronomy": "astronomy", "jazz": "jazz",
           "hiking": "hiking", "programming": "programming"},
    "de": {"football": "Fußball", "cooking": "Kochen", "astronomy": "Astronomie", "jazz": "Jazz",
           "hiking": "Wandern", "programming": "Programmieren"},
    "fr": {"football": "le football", "cooking": "la cuisine", "astronomy": "l'astronomie", "jazz": "le jazz",
           "hiking": "la randonnée", "programming": "la programmation"},
    "es": {"football": "el fútbol", "cooking": "la cocina", "astronomy": "la astronomía", "jazz": "el jazz",
           "hiking": "el senderismo", "programming": "la programación"},
    "ja": {"football": "サッカー", "cooking": "料理", "astronomy": "天文学", "jazz": "ジャズ",
           "hiking": "ハイキング", "programming": "プログラミング"},
    "zh": {"football": "足球", "cooking": "烹饪", "astronomy": "天文", "jazz": "爵士乐",
           "hiking": "徒步", "programming": "编程"},
    "ru": {"football": "футбол", "cooking": "кулинарию", "astronomy": "астрономию", "jazz": "джаз",
           "hiking": "походы", "programming": "программирование"},
}  # fmt: skip


@dataclass(frozen=True)
class DemoUser:
    user_id: str
    lang: str
    topic: str


@dataclass(frozen=True)
class PlannedEvent:
    """An interaction to send; ``record`` stamps it with an event id and the send time."""

    user_id: str
    item_id: str
    type: str
    lang: str
    text: str | None = None
    rating: int | None = None

    def record(self, ts_ms: int, event_id: str | None = None) -> dict[str, Any]:
        return {
            "event_id": event_id or uuid.uuid4().hex,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type,
            "ts": ts_ms,
            "text": self.text,
            "rating": self.rating,
            "lang": self.lang,
        }


def make_users(count: int, prefix: str = "u") -> list[DemoUser]:
    """``count`` users; user i reads language i mod 7 and topic i mod 6, so two readers of one
    language (users i and i+7) always follow different topics, and 42 users cover every pair."""
    if count < 1:
        raise ValueError("the demo needs at least one user")
    return [
        DemoUser(f"{prefix}{i + 1:02d}", LANGUAGES[i % len(LANGUAGES)], TOPICS[i % len(TOPICS)]) for i in range(count)
    ]


def review_text(lang: str, topic: str) -> str:
    return REVIEW_TEMPLATES[lang].format(topic=TOPIC_WORDS[lang][topic])


def user_session(user: DemoUser, catalog: Sequence[DemoItem], rng: random.Random) -> list[PlannedEvent]:
    """One user's events in order: read up to three on-topic items in their language, like one, review
    one (5 stars, in their language) and dislike one off-topic item in their language."""
    own = [i for i in catalog if i.lang == user.lang and i.topic == user.topic]
    off = [i for i in catalog if i.lang == user.lang and i.topic != user.topic]
    if not own or not off:
        raise ValueError(f"the catalog has no {user.topic} items or no other topics in {user.lang}")
    read = rng.sample(own, k=min(3, len(own)))
    first, second, third = read[0], read[min(1, len(read) - 1)], read[-1]

    def ev(item: DemoItem, etype: str, **extra: Any) -> PlannedEvent:
        return PlannedEvent(user.user_id, item.item_id, etype, user.lang, **extra)

    return [
        ev(first, "view"),
        ev(first, "click"),
        ev(second, "view"),
        ev(second, "click"),
        ev(third, "view"),
        ev(second, "like"),
        ev(third, "click"),
        ev(first, "review", text=review_text(user.lang, user.topic), rating=5),
        ev(rng.choice(off), "dislike"),
    ]


def play_order(users: Sequence[DemoUser], catalog: Sequence[DemoItem], seed: int = 7) -> list[PlannedEvent]:
    """All users' sessions interleaved round-robin, as if they were reading at the same time."""
    rng = random.Random(seed)
    sessions = [user_session(user, catalog, rng) for user in users]
    order: list[PlannedEvent] = []
    for step in range(max(len(s) for s in sessions)):
        order.extend(s[step] for s in sessions if step < len(s))
    return order
