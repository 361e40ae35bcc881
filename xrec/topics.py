"""The names xrec gives things in Kafka: topics (with partitions and compaction), consumer groups, keys.

Plain conventions, no Faust: the worker (``streams/``), the benchmarks and the tests all name things
from here, so a benchmark can prepare what a worker will read without importing the worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

from xrec.config import Settings
from xrec.kafka import KafkaConnection, TopicSpec, create_topics
from xrec.vectors import VectorSpace

#: The largest record of a vectors topic: an item record at its limit (``XREC_MAX_RECORD_BYTES``, at most
#: about 1 MB by Kafka's defaults) plus its vector and header; the topic and its producer allow this much.
VECTOR_RECORD_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TopicNames:
    items: str
    events: str
    events_by_user: str  # events re-keyed by user_id when producers key them otherwise
    control: str
    recommendations: str
    dlq: str
    language_stats: str  # the neutral space's statistics, per store and items partition (compacted)
    ranker: str  # what each worker's learned ranker has learned (compacted)
    click_through: str  # each worker's click-through counts (compacted)

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
            ranker=s.topic_ranker,
            click_through=s.topic_click_through,
        )


def own_topics_env(prefix: str) -> dict[str, str]:
    """``XREC_TOPIC_*`` settings naming every topic under ``prefix``: a test's or a benchmark run's own topics."""
    names = [f.name.removeprefix("topic_") for f in fields(Settings) if f.name.startswith("topic_")]
    return {f"XREC_TOPIC_{name.upper()}": f"{prefix}.{name}" for name in names}


def vectors_topic(s: Settings, space: VectorSpace) -> str:
    """The encoded items of one vector space (``xrec/vectors.py``): named by its fingerprint, so a model change
    writes a new topic and no store ever mixes two spaces."""
    return f"{s.topic_items}.vectors.{space.fingerprint}"


def topic_specs(s: Settings, space: VectorSpace | None = None) -> list[TopicSpec]:
    """Every topic xrec needs (with ``space``: its vectors topic too). Events, control, re-keyed events and
    lists share a partition count so one user's records, profile and list live on the same partition number
    (co-partitioned); the vectors topic has the items topic's, as each item keeps its partition number."""
    names = TopicNames.from_settings(s)
    specs = [
        TopicSpec(names.items, s.item_partitions, config={"cleanup.policy": "compact"}),
        TopicSpec(names.events, s.partitions),
        TopicSpec(names.events_by_user, s.partitions),
        TopicSpec(names.control, s.partitions),
        TopicSpec(names.recommendations, s.partitions, compacted=True),
        TopicSpec(names.dlq, 1),
        TopicSpec(names.language_stats, 1, compacted=True),
        TopicSpec(names.ranker, 1, compacted=True),
        TopicSpec(names.click_through, 1, compacted=True),
    ]
    if space is not None:
        config = {"cleanup.policy": "compact", "max.message.bytes": str(VECTOR_RECORD_MAX_BYTES)}
        specs.append(TopicSpec(vectors_topic(s, space), s.item_partitions, config=config))
    return specs


async def prepare_topics(settings: Settings, bootstrap: str, space: VectorSpace | None = None) -> list[str]:
    """Create xrec's topics before a worker subscribes, so none is auto-created with 1 partition."""
    return await create_topics(KafkaConnection.from_settings(settings, bootstrap), topic_specs(settings, space))


def items_group_id(settings: Settings, space: VectorSpace) -> str:
    """The item indexer's consumer group: one per store and vector space. Per data directory for ``edge`` (each
    embedded store must see every item), shared for a Qdrant server (each item indexed once). With the space
    in it, a store re-indexed for another model starts its offsets and its language statistics afresh."""
    if settings.store_backend == "edge":
        where = str(settings.store_dir.resolve() / settings.collection)
    else:
        where = f"{settings.qdrant_url}/{settings.collection}"
    return f"{settings.app_id}-items-{hashlib.sha1(f'{where}#{space.fingerprint}'.encode()).hexdigest()[:12]}"


def encoder_group_id(settings: Settings, space: VectorSpace) -> str:
    """The encoding stage's consumer group: one per app and vector space, whatever the stores, so each item
    text is encoded once by all the workers that share the space."""
    return f"{settings.app_id}-encode-{space.fingerprint}"


def stats_part_key(items_group: str, partition: int) -> str:
    """The key of one part of the language statistics: an items partition as indexed by one store's group."""
    return f"{items_group}/{partition}"
