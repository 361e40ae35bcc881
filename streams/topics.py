"""The topics a worker reads and writes, with partition counts and compaction, from Settings."""

from __future__ import annotations

from dataclasses import dataclass

from xrec.config import Settings
from xrec.kafka import TopicSpec


@dataclass(frozen=True)
class TopicNames:
    items: str
    events: str
    events_by_user: str  # events re-keyed by user_id when producers key them otherwise
    control: str
    recommendations: str
    dlq: str
    language_stats: str  # the neutral space's statistics, per store and items partition (compacted)

    @classmethod
    def from_settings(cls, s: Settings) -> TopicNames:
        return cls(
            items=s.topic_items,
            events=s.topic_events,
            events_by_user=f"{s.topic_events}-by-user",
            control=s.topic_control,
            recommendations=s.topic_recommendations,
            dlq=s.topic_dlq,
            language_stats=s.topic_language_stats,
        )


def topic_specs(s: Settings) -> list[TopicSpec]:
    """Every topic xrec needs. Events, control, re-keyed events and lists share a partition count so
    one user's records, profile and list live on the same partition number (co-partitioned)."""
    names = TopicNames.from_settings(s)
    return [
        TopicSpec(names.items, s.item_partitions, config={"cleanup.policy": "compact"}),
        TopicSpec(names.events, s.partitions),
        TopicSpec(names.events_by_user, s.partitions),
        TopicSpec(names.control, s.partitions),
        TopicSpec(names.recommendations, s.partitions, compacted=True),
        TopicSpec(names.dlq, 1),
        TopicSpec(names.language_stats, 1, compacted=True),
    ]
