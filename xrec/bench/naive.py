"""The naive baseline of ``xrec bench pipeline``: the same events, one at a time, no Faust.

What it does per event, awaiting each step before the next: read one record (aiokafka consumer,
``getone``); parse it (``xrec.events.parse_event``); load the user's profile from an in-memory table
where profiles are JSON with vectors as lists of floats; fetch the item's vector from the store (one
call, no cache); update the profile with the same user model (``UserProfile.observe``); write the
profile back as JSON; run the user's candidate queries (one batched store call) and rank them with
the same ranking code (``xrec.ranking.rank_many`` for one user); publish the list with ``send_and_wait`` (one send per
event, no batching, no coalescing). Offsets are auto-committed every second, as the Faust worker
commits on an interval, and the profile table has no changelog (the worker writes one): both choices
favour the baseline. Same store backend and data as the worker (a copy of its store directory).

Run as ``python -m xrec.bench.naive …`` so it is its own process, measured like the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from xrec.config import Settings
from xrec.events import Interaction, Limits, RecommendationList, RecordError, parse_event
from xrec.profile import ProfileParams, UserProfile, event_weight
from xrec.ranking import CANDIDATE_PAYLOAD, Popularity, RankParams, candidate_queries, rank_many
from xrec.store.base import HitColumns, VectorStore

log = logging.getLogger(__name__)


def profile_to_json(profile: UserProfile) -> bytes:
    """The profile as a JSON object with every vector a list of floats (what the baseline stores)."""
    return orjson.dumps(
        {
            "dim": profile.dim,
            "centroids": profile.centroids.tolist(),
            "weights": profile.weights.tolist(),
            "anchors": profile.anchors,
            "negative": profile.negative.tolist() if profile.negative is not None else None,
            "negative_weight": profile.negative_weight,
            "seen": list(profile.seen),
            "disliked": list(profile.disliked),
            "languages": profile.languages,
            "event_ids": [e.hex() for e in profile.event_ids],
            "last_ts": profile.last_ts,
            "events": profile.events,
        }
    )


def profile_from_json(raw: bytes) -> UserProfile:
    obj = orjson.loads(raw)
    dim = int(obj["dim"])
    centroids = np.asarray(obj["centroids"], np.float32).reshape(-1, dim)
    return UserProfile(
        dim=dim,
        centroids=centroids,
        weights=np.asarray(obj["weights"], np.float64),
        anchors=list(obj["anchors"]),
        negative=np.asarray(obj["negative"], np.float32) if obj["negative"] is not None else None,
        negative_weight=float(obj["negative_weight"]),
        seen=OrderedDict.fromkeys(obj["seen"]),
        disliked=OrderedDict.fromkeys(obj["disliked"]),
        languages=dict(obj["languages"]),
        event_ids=OrderedDict.fromkeys(bytes.fromhex(e) for e in obj["event_ids"]),
        last_ts=int(obj["last_ts"]),
        events=int(obj["events"]),
    )


@dataclass
class NaiveCounts:
    processed: int = 0
    duplicates: int = 0
    unknown_items: int = 0
    rejected: int = 0
    lists: int = 0


class NaiveEngine:
    """One event in, one list out: the per-event work of the baseline, without the Kafka loop."""

    def __init__(
        self,
        settings: Settings,
        store: VectorStore,
        dim: int,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.dim = dim
        self.clock_ms = clock_ms
        self.profile_params = ProfileParams.from_settings(settings)
        self.rank_params = RankParams.from_settings(settings)
        self.weights = settings.weights
        self.dedup_window = max(16, settings.dedup_window)
        self.popularity = Popularity()
        self.table: dict[str, bytes] = {}  # user_id -> profile JSON
        self.counts = NaiveCounts()

    async def process(self, event: Interaction) -> RecommendationList | None:
        """Apply one event and build that user's list; None for a duplicate or an unknown item."""
        raw = self.table.get(event.user_id)
        profile = profile_from_json(raw) if raw else UserProfile(dim=self.dim)
        stored = await self.store.fetch([event.item_id])
        item = stored.get(event.item_id)
        if item is None:
            self.counts.unknown_items += 1
            return None
        if not profile.remember_event(event.event_id, self.dedup_window):
            self.counts.duplicates += 1
            return None
        lang = str(item.payload.get("lang", "und"))
        weight = event_weight(event.type, event.rating, self.weights)
        ts = min(event.ts, int(self.clock_ms()) + 60_000)
        disliked = event.type == "dislike" or (event.type == "review" and weight < 0)
        profile.observe(item.vector, weight, ts, event.item_id, lang, self.profile_params, dislike=disliked)
        if weight > 0:
            self.popularity.add(event.item_id, lang, ts, weight)
        self.table[event.user_id] = profile_to_json(profile)
        self.counts.processed += 1
        now = self.clock_ms()
        if profile.has_interests:
            queries = candidate_queries(profile, self.rank_params)
            hits = await self.store.query_batch(queries, with_vectors=True)
            columns = HitColumns.from_hits(hits, self.dim, CANDIDATE_PAYLOAD)
            trend = self.popularity.trend(columns.item_ids) if self.rank_params.trending_weight else None
            [items] = rank_many(
                [profile], columns, [(0, len(queries))], self.rank_params, self.profile_params, int(now), trend
            )
            strategy = "multi-interest"
        else:
            langs = [event.lang] if event.lang else []
            items = self.popularity.cold_start(profile, self.rank_params.list_length, langs)
            strategy = "popular"
        self.counts.lists += 1
        return RecommendationList(
            user_id=event.user_id,
            generated_at=int(now),
            trigger_event_id=event.event_id,
            strategy=strategy,
            items=tuple(items),
        )


async def run_naive(args: argparse.Namespace) -> NaiveCounts:
    """Consume ``--events-topic`` one record at a time until ``--stop-after`` events or ``--idle-s`` of quiet."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from xrec.kafka import aiokafka_kwargs
    from xrec.store import open_store
    from xrec.store.exact import use_one_blas_thread

    settings = Settings.from_env()
    use_one_blas_thread()  # as the worker does
    store = open_store(settings, dim=args.dim)
    await store.ensure_collection(args.dim)
    engine = NaiveEngine(settings, store, args.dim)
    limits = Limits.from_settings(settings, vector_dim=args.dim)
    kwargs = aiokafka_kwargs(settings, args.bootstrap)
    consumer = AIOKafkaConsumer(
        args.events_topic,
        group_id=args.group,
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
        auto_offset_reset="earliest",
        **kwargs,
    )
    producer = AIOKafkaProducer(**kwargs)
    await producer.start()
    await consumer.start()
    print("ready", flush=True)
    seen = 0
    try:
        while seen < args.stop_after:
            try:
                message = await asyncio.wait_for(consumer.getone(), timeout=args.idle_s)
            except TimeoutError:
                log.warning("naive baseline: no event for %.0fs after %d; stopping", args.idle_s, seen)
                break
            seen += 1
            try:
                event = parse_event(message.value, limits)
            except RecordError:
                engine.counts.rejected += 1
                continue
            if not isinstance(event, Interaction):  # the bench offers no impressions; the baseline skips them
                engine.counts.rejected += 1
                continue
            lst = await engine.process(event)
            if lst is not None:
                await producer.send_and_wait(args.output_topic, key=lst.user_id.encode(), value=lst.to_json())
    finally:
        await consumer.stop()
        await producer.stop()
        await store.close()
    return engine.counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="naive one-event-at-a-time baseline of xrec bench pipeline")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--events-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--stop-after", type=int, required=True, help="records to consume, then exit")
    parser.add_argument("--idle-s", type=float, default=60.0, help="exit after this long without a record")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    counts = asyncio.run(run_naive(args))
    print(orjson.dumps(counts.__dict__).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
