"""The recommender engine a worker runs, batch by batch, with no Faust in it.

``streams/`` hands it parsed records and a mapping of stored profiles (a Faust table in the worker,
a dict in tests and evaluation); it returns what to publish. Per batch it does each expensive thing
once: one forward pass for all texts, one store fetch for unknown item vectors, one batched store
query for every user touched, one list per user however many of their events the batch held.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from xrec.config import Settings
from xrec.events import (
    Event,
    Impression,
    Interaction,
    ItemDelete,
    ItemRecord,
    ItemUpsert,
    RecommendationList,
    RecordError,
)
from xrec.exposure import ClickThrough
from xrec.langid import UNDETERMINED, LanguageResolver
from xrec.metrics import XrecMetrics
from xrec.profile import ProfileParams, UserProfile, event_weight, review_vector
from xrec.ranker import OnlineRanker, ShownItems
from xrec.ranking import (
    CANDIDATE_PAYLOAD,
    Candidates,
    CandidateTable,
    Popularity,
    RankParams,
    candidate_queries_many,
    expand_interests,
    rank_many,
    score_candidates,
)
from xrec.space import LOCAL_PART, LanguageSpace, LanguageStats, NeutralSpace
from xrec.store.base import HitColumns, ItemPoint, StoreError, VectorQuery, VectorStore
from xrec.variants import Variants

log = logging.getLogger(__name__)

ProfileTable = MutableMapping[bytes, bytes]
STRATEGY_INTERESTS = "multi-interest"
STRATEGY_POPULAR = "popular"


class Encoder(Protocol):
    """What the engine needs of ``xrec.encoder.TextEncoder``."""

    dim: int

    async def encode_many(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray: ...


@dataclass(frozen=True)
class ItemMeta:
    """An item as the store holds it: its vector as encoded, and its (resolved) language."""

    vector: np.ndarray
    lang: str
    ts: int = 0  # as the item record said (0: unknown): what freshness reads


class ItemCache:
    """Bounded LRU of item vectors in front of the store: hot items never cost a store call.

    An entry is a plain tuple of a vector, a string and an int, which Python's garbage collector stops
    tracking after its first look: a full collection then never walks the cache (up to 100k items), where
    an ``ItemMeta`` per entry would be walked every time, pausing the event loop.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[np.ndarray, str, int]] = OrderedDict()

    def get(self, item_id: str) -> ItemMeta | None:
        entry = self._items.get(item_id)
        if entry is None:
            return None
        self._items.move_to_end(item_id)
        return ItemMeta(*entry)

    def put(self, item_id: str, meta: ItemMeta) -> None:
        self._items[item_id] = (meta.vector, meta.lang, meta.ts)
        self._items.move_to_end(item_id)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def discard(self, item_id: str) -> None:
        self._items.pop(item_id, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Rejected:
    """A record the engine refused: it goes to the DLQ with ``error.reason``."""

    record: Any
    error: RecordError


@dataclass
class ItemBatchResult:
    upserted: int = 0
    deleted: int = 0
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class EventBatchResult:
    processed: list[Event] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    waiting: int = 0  # events held for an item that has not arrived yet
    lists: list[RecommendationList] = field(default_factory=list)
    #: The users to answer with a list (changed by the batch, or sent an event again) and the latest event of each.
    changed: dict[str, UserProfile] = field(default_factory=dict, repr=False)
    triggers: dict[str, Interaction] = field(default_factory=dict, repr=False)


class WaitingEvents:
    """Events whose item is not in the catalog yet, each with the time it started waiting, in arrival order.

    The engine owns them: each batch tries them again first, applies those whose item has come,
    dead-letters those that waited ``XREC_UNKNOWN_ITEM_WAIT_S`` and keeps the rest. An event is known by
    its object (a redelivered copy is another event), and the object is kept alive while it waits.
    """

    def __init__(self) -> None:
        self._since: dict[int, tuple[Event, float]] = {}

    def __len__(self) -> int:
        return len(self._since)

    def __contains__(self, event: object) -> bool:
        return id(event) in self._since

    def events(self) -> list[Event]:
        return [event for event, _ in self._since.values()]

    def since(self, event: Event, default: float) -> float:
        entry = self._since.get(id(event))
        return entry[1] if entry is not None else default

    def keep(self, event: Event, since_ms: float) -> None:
        self._since[id(event)] = (event, since_ms)

    def drop_all(self) -> list[Event]:
        """Let go of every waiting event (the caller dead-letters them, or their messages are read again)."""
        events = self.events()
        self._since.clear()
        return events

    def drop_user(self, user_id: str) -> list[Event]:
        gone = [event for event, _ in self._since.values() if event.user_id == user_id]
        for event in gone:
            del self._since[id(event)]
        return gone

    def drop(self, events: Sequence[Event]) -> None:
        for event in events:
            self._since.pop(id(event), None)


def _group_view(columns: HitColumns, spans: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], HitColumns]:
    """One variant's users' queries (a contiguous run of a batch's queries) as a batch of their own, for
    ``rank_many``: the same rows, only their queries, the spans counted from 0."""
    if not spans:
        return spans, columns
    start, stop = spans[0][0], spans[-1][1]
    view = replace(columns, per_query=columns.per_query[start:stop], scores=columns.scores[start:stop])
    return [(a - start, b - start) for a, b in spans], view


def _items_of(event: Event) -> tuple[str, ...]:
    """The items an event needs in the catalog before it can be applied."""
    return event.item_ids if isinstance(event, Impression) else (event.item_id,)


class Recommender:
    """Item indexing, profile updates and list building for one worker."""

    def __init__(
        self,
        settings: Settings,
        store: VectorStore,
        encoder: Encoder | None,
        metrics: XrecMetrics | None = None,
        dim: int | None = None,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        if encoder is None and dim is None:
            raise ValueError("the recommender needs an encoder or an explicit vector dimension")
        self.settings = settings
        self.store = store
        self.encoder = encoder
        self.metrics = metrics
        self.dim = dim if dim is not None else encoder.dim  # type: ignore[union-attr]
        self.clock_ms = clock_ms
        self.profile_params = ProfileParams.from_settings(settings)
        self.variants = Variants(settings)
        #: Each A/B variant's ranking settings (``rank_params``: the first variant's).
        self.variant_params = {name: RankParams.from_settings(s) for name, s in self.variants.settings.items()}
        self.learned = {name for name, s in self.variants.settings.items() if s.ranker == "learned"}
        #: The variant whose settings the learned ranker starts from and computes an impression's terms
        #: with: the first learned one, so what it learns is weighed against the terms it is served with.
        self.learning_variant = next((n for n in self.variants.names if n in self.learned), self.variants.default)
        self.ranker = OnlineRanker(
            self.variant_params[self.learning_variant].weights(),
            settings.ranker_learning_rate,
            settings.ranker_l2,
            frozen=settings.ranker_learning == "frozen",
        )
        self.weights = settings.weights
        self.cache = ItemCache(settings.item_cache_size)
        self.popularity = Popularity()
        self.exposure = ClickThrough(settings.ctr_half_life_hours, settings.ctr_prior_impressions)
        self.space = LanguageSpace(self.dim, settings.vector_space)
        self.languages = LanguageResolver(settings.language_detection)
        self.waiting = WaitingEvents()
        self.dedup_window = max(16, settings.dedup_window)

    async def start(self) -> None:
        await self.store.ensure_collection(self.dim)

    # --- items -------------------------------------------------------------------------------
    async def handle_items(
        self,
        records: Sequence[ItemRecord],
        part: str = LOCAL_PART,
        *,
        counted: bool = False,
        before_store: Callable[[LanguageStats], Awaitable[None]] | None = None,
    ) -> ItemBatchResult:
        """Encode every text item of the batch in one pass, then upsert and delete in one call each.

        Each item's language is resolved (``xrec.langid``), and the language statistics of ``part``
        follow the batch: an upserted item counts under its language in place of its previous version,
        a deleted one stops counting. ``before_store`` receives the part's new statistics before the
        store is written, so a caller that persists them there first can tell after a crash which
        records were ``counted`` already (their statistics are then left as they are).
        """
        result = ItemBatchResult()
        latest: dict[str, ItemRecord] = {}
        for record in records:  # the last record of an id in the batch wins, as in the topic
            latest.pop(record.item_id, None)
            latest[record.item_id] = record
        upserts = [self._resolve_language(r) for r in latest.values() if isinstance(r, ItemUpsert)]
        deletes = [r.item_id for r in latest.values() if isinstance(r, ItemDelete)]
        ready, result.rejected = await self.encode_items(upserts)
        points = [ItemPoint(u.item_id, u.vector, u.payload()) for u in ready if u.vector is not None]
        metas = {
            p.item_id: ItemMeta(np.asarray(p.vector, np.float32), str(p.payload["lang"]), int(p.payload.get("ts") or 0))
            for p in points
        }
        if not counted and (metas or deletes):
            with self._stage("query"):
                previous = await self._item_meta(set(metas) | set(deletes))  # what the statistics count now
            self._count_languages(part, previous, metas)
        if before_store is not None:
            await before_store(self.space.part(part))
        if points:
            with self._store_op("upsert"):
                await self.store.upsert(points)
            for p in points:
                self.cache.put(p.item_id, metas[p.item_id])
                if not p.payload.get("available", True):
                    self.popularity.discard(p.item_id)  # queries filter it out; the cold-start list must too
        if deletes:
            with self._store_op("delete"):
                await self.store.delete(deletes)
            for item_id in deletes:
                self.cache.discard(item_id)
                self.popularity.discard(item_id)
                self.exposure.discard(item_id)
        result.upserted, result.deleted = len(points), len(deletes)
        return result

    async def encode_items(self, upserts: Sequence[ItemUpsert]) -> tuple[list[ItemUpsert], list[Rejected]]:
        """Each upsert with its vector, the texts that came without one encoded in one pass; an upsert that
        cannot have one (no encoder here, a vector of the wrong dimension) is rejected with the reason."""
        rejected: list[Rejected] = []
        to_encode = [u for u in upserts if u.vector is None]
        encoded: dict[int, np.ndarray] = {}
        if to_encode and self.encoder is None:
            error = RecordError("bad_vector", "this worker has no encoder: send a vector")
            rejected += [Rejected(u, error) for u in to_encode]
        elif to_encode:
            assert self.encoder is not None
            with self._stage("encode"):
                vectors = await self.encoder.encode_many([u.text for u in to_encode], kind="passage")
            encoded = {id(u): v for u, v in zip(to_encode, vectors, strict=True)}
        ready: list[ItemUpsert] = []
        for u in upserts:
            if id(u) in encoded:
                ready.append(replace(u, vector=encoded[id(u)]))
            elif u.vector is not None and len(u.vector) != self.dim:
                error = RecordError("bad_vector", f"vector has {len(u.vector)} dimensions; the store uses {self.dim}")
                rejected.append(Rejected(u, error))
            elif u.vector is not None:
                ready.append(u)
        return ready, rejected

    def _resolve_language(self, item: ItemUpsert) -> ItemUpsert:
        """The item with the language its label and text resolve to (counted in metrics by source)."""
        resolved = self.languages.resolve(None if item.lang == UNDETERMINED else item.lang, item.text)
        if self.metrics:
            self.metrics.language_resolved("item", resolved.source)
        return item if resolved.lang == item.lang else replace(item, lang=resolved.lang)

    def _count_languages(self, part: str, previous: dict[str, ItemMeta], now: dict[str, ItemMeta]) -> None:
        """Move the part's statistics from the items' previous versions to their new ones."""
        for sign, metas in ((-1, previous), (1, now)):
            by_lang: dict[str, list[np.ndarray]] = {}
            for meta in metas.values():
                by_lang.setdefault(meta.lang, []).append(meta.vector)
            for lang, vectors in by_lang.items():
                self.space.count(part, lang, np.stack(vectors), sign)

    # --- events ------------------------------------------------------------------------------
    async def handle_events(self, events: Sequence[Event], profiles: ProfileTable) -> EventBatchResult:
        """Update every touched profile, then build one list per touched user."""
        result = await self.apply_events(events, profiles)
        result.lists = await self.recommend(result.changed, result.triggers)
        return result

    async def apply_events(self, events: Sequence[Event], profiles: ProfileTable) -> EventBatchResult:
        """The first half of ``handle_events``: every touched profile updated and written, no lists yet.

        A worker builds the lists (``recommend``, whose store search runs off the event loop) while it
        applies the next batch; everything that must happen in event order happens here.
        """
        result = EventBatchResult()
        now = self.clock_ms()
        earlier = self.waiting
        batch = [*earlier.events(), *events]
        with self._stage("query"):
            known = await self._item_meta({i for e in batch for i in _items_of(e)})
        ready: list[Event] = []
        still = WaitingEvents()  # replaces ``self.waiting`` in one step: readers never see a half-built set
        for event in batch:
            since = earlier.since(event, now)
            unknown = [i for i in _items_of(event) if i not in known]
            if not unknown:
                ready.append(event)
            elif now - since >= self.settings.unknown_item_wait_s * 1000:
                reason = f"item {unknown[0]!r} is not in the catalog (waited {self.settings.unknown_item_wait_s:g}s)"
                result.rejected.append(Rejected(event, RecordError("unknown_item", reason)))
            else:
                still.keep(event, since)
        self.waiting = still
        result.waiting = len(still)
        space = self.space.view()
        interactions = [e for e in ready if isinstance(e, Interaction)]
        texts = await self._encode_reviews(interactions, space)

        profiles_now: dict[str, UserProfile] = {}
        triggers: dict[str, Interaction] = {}  # the latest processed interaction of each changed user
        written: set[str] = set()  # users whose profile changed (an impression changes one without a list)
        # A redelivered event is answered again (its profile is left as it is): the worker that applied it
        # may have died after writing the profile change and before sending the list.
        redelivered: dict[str, Interaction] = {}
        with self._stage("profile"):
            metas = [known[event.item_id] for event in interactions]
            neutral: dict[int, np.ndarray] = {}
            if interactions:
                vectors = space.neutral(np.asarray([m.vector for m in metas]), [m.lang for m in metas])
                neutral = dict(zip(map(id, interactions), vectors, strict=True))
            for event in ready:
                profile = profiles_now.get(event.user_id)
                if profile is None:
                    profile = profiles_now[event.user_id] = self._load(profiles, event.user_id.encode(), space)
                if not profile.remember_event(event.event_id, self.dedup_window):
                    result.duplicates.append(event)
                    if isinstance(event, Interaction):
                        redelivered[event.user_id] = event
                    continue
                if isinstance(event, Impression):
                    await self._shown(profile, event, [known[i] for i in event.item_ids], space)
                else:
                    meta = known[event.item_id]
                    self._apply(profile, event, meta, neutral[id(event)], texts.get(event.event_id))
                    triggers[event.user_id] = event
                written.add(event.user_id)
                result.processed.append(event)
            for user_id in written:
                profiles[user_id.encode()] = profiles_now[user_id].to_bytes()
        answers = {**{u: e for u, e in redelivered.items() if u not in triggers}, **triggers}
        result.changed = {u: profiles_now[u] for u in answers}
        result.triggers = answers
        return result

    def forget(self, user_id: str, profiles: ProfileTable) -> bool:
        """Erase a user's profile (and with it their dedup state); True if there was one. The user's
        waiting events go too (else they would rebuild it): ``waiting.drop_user`` first, to count them."""
        self.waiting.drop_user(user_id)
        key = user_id.encode()
        if key in profiles:
            del profiles[key]
            return True
        return False

    async def recommend(
        self, users: dict[str, UserProfile], triggers: dict[str, Interaction]
    ) -> list[RecommendationList]:
        """Lists for many users: one batched store query for all their interests, then ranking for
        all of them at once (per A/B variant, each with its own ranking settings)."""
        now = self.clock_ms()
        space = self.space.view()
        by_variant: dict[str, list[str]] = {}
        for user_id, profile in users.items():
            if profile.has_interests:
                by_variant.setdefault(self.variants.of(user_id), []).append(user_id)
        groups = [(self.params_of(v), [users[u] for u in ids]) for v, ids in by_variant.items()]
        columns, spans = await self._search(groups, space)
        lists: list[RecommendationList] = []
        with self._stage("rank"):
            first = 0
            for (variant, warm), (params, profiles) in zip(by_variant.items(), groups, strict=True):
                trend = self.popularity.trend(columns.item_ids) if params.trending_weight else None
                ctr = self._click_through(params, columns.item_ids, columns.payload.get("lang") or [])
                own, view = _group_view(columns, spans[first : first + len(warm)])
                first += len(warm)
                ranked = rank_many(profiles, view, own, params, self.profile_params, int(now), trend, space, ctr)
                for user_id, items in zip(warm, ranked, strict=True):
                    lists.append(self._list(user_id, triggers.get(user_id), STRATEGY_INTERESTS, items, now, variant))
            for user_id, profile in users.items():
                if not profile.has_interests:
                    variant = self.variants.of(user_id)
                    trigger = triggers.get(user_id)
                    langs = [trigger.lang] if trigger is not None and trigger.lang else []
                    length = self.params_of(variant).list_length
                    items = self.popularity.cold_start(profile, length, langs)
                    lists.append(self._list(user_id, trigger, STRATEGY_POPULAR, items, now, variant))
        return lists

    async def relevance(
        self, profile: UserProfile, cands: Candidates, now_ms: int, variant: str | None = None
    ) -> np.ndarray:
        """The served relevance score of any candidates for one profile (what ``recommend`` scores before
        MMR), its interests expanded by their own store queries' answers as ``recommend`` expands them,
        with the ranking settings of ``variant`` (default: the first). For evaluations: what they measure
        is what is served."""
        space = self.space.view()
        params = self.params_of(variant or self.variants.default)
        centroids = await self._expanded(profile, params, space)
        trend = self.popularity.trend(cands.ids) if params.trending_weight else None
        ctr = self._click_through(params, cands.ids, cands.langs)
        scores, _ = score_candidates(profile, cands, params, self.profile_params, now_ms, trend, space, centroids, ctr)
        return scores

    async def _expanded(self, profile: UserProfile, params: RankParams, space: NeutralSpace) -> np.ndarray | None:
        """One profile's interests expanded by their own store queries' answers, as ``recommend`` expands
        them (None: no expansion, or no interests)."""
        if not params.query_expansion or not profile.has_interests:
            return None
        columns, spans = await self._search([(params, [profile])], space)
        neutral = space.neutral(columns.vectors, Candidates.from_columns(columns).langs)
        [centroids] = expand_interests([profile], columns, spans, neutral, params.query_expansion)
        return centroids

    def params_of(self, variant: str) -> RankParams:
        """A variant's ranking settings; a learned ranker's weights are the ones learned so far."""
        params = self.variant_params[variant]
        return params.with_weights(self.ranker.weights()) if variant in self.learned else params

    @property
    def rank_params(self) -> RankParams:
        """The ranking settings of the first (with ``XREC_VARIANTS`` unset: the only) variant."""
        return self.variant_params[self.variants.default]

    @rank_params.setter
    def rank_params(self, params: RankParams) -> None:
        self.variant_params[self.variants.default] = params

    async def click_through_of(self, item_id: str) -> dict[str, Any] | None:
        """An item's click-through counts and rates as ranking uses them (None: not in the catalog)."""
        meta = (await self._item_meta({item_id})).get(item_id)
        return None if meta is None else self.exposure.explain(item_id, meta.lang)

    def _click_through(
        self, params: RankParams, item_ids: Sequence[str], langs: Sequence[Any], always: bool = False
    ) -> dict[str, float] | None:
        """Click-through lift by item id, or None when it does not count (off, or no impression yet)."""
        if not (params.ctr_weight or always) or not self.exposure.impressions:
            return None
        named = [str(lang) if lang is not None else UNDETERMINED for lang in langs] or [UNDETERMINED] * len(item_ids)
        return dict(zip(item_ids, self.exposure.lift(item_ids, named).tolist(), strict=True))

    async def _search(
        self, groups: Sequence[tuple[RankParams, Sequence[UserProfile]]], space: NeutralSpace
    ) -> tuple[HitColumns, list[tuple[int, int]]]:
        """The candidates of some users (grouped by their ranking settings) from one store call, and which
        queries are whose, in the order of the groups' users."""
        queries: list[VectorQuery] = []
        spans: list[tuple[int, int]] = []
        for params, profiles in groups:
            for qs in candidate_queries_many(profiles, params, space):
                spans.append((len(queries), len(queries) + len(qs)))
                queries += qs
        return await self._candidate_columns(queries), spans

    # --- internals ---------------------------------------------------------------------------
    async def _candidate_columns(self, queries: list[VectorQuery]) -> HitColumns:
        """Every query's answers from one store call, as columns; built from the hits and the item cache
        when the store has no columnar answer (Qdrant's HNSW index, a Qdrant server).

        A failed search is tried once more before the batch's lists are given up: the events are
        applied already, and their users would otherwise wait for their next event to get a list.
        (An outage is waited out inside the store; this is for the error that comes once.)"""
        if not queries:
            return HitColumns.from_hits([], self.dim, CANDIDATE_PAYLOAD)
        try:
            return await self._search_store(queries)
        except StoreError as exc:
            log.warning("the store search for %d queries failed, trying it once more: %s", len(queries), exc)
            return await self._search_store(queries)

    async def _search_store(self, queries: list[VectorQuery]) -> HitColumns:
        with self._stage("query"):
            with self._store_op("query"):
                columns = await self.store.query_columns(queries)
                if columns is not None:
                    return columns
                # No vectors in the hits: turning them into Python lists cost more than the search.
                hits = await self.store.query_batch(queries, with_vectors=False)
            metas = await self._item_meta({h.item_id for per_query in hits for h in per_query})
        return HitColumns.from_hits(hits, self.dim, CANDIDATE_PAYLOAD, {i: m.vector for i, m in metas.items()})

    def _apply(
        self,
        profile: UserProfile,
        event: Interaction,
        meta: ItemMeta,
        item_vec: np.ndarray,
        text_vec: np.ndarray | None,
    ) -> None:
        """One event into its user's profile: ``item_vec`` is the item's neutral vector, ``text_vec`` a review's."""
        weight = event_weight(event.type, event.rating, self.weights)
        vector = (
            review_vector(item_vec, text_vec, self.settings.review_text_weight) if event.type == "review" else item_vec
        )
        now_ms = int(self.clock_ms())
        ts = min(event.ts, now_ms + 60_000)  # a producer clock far ahead must not freeze decay
        disliked = event.type == "dislike" or (event.type == "review" and weight < 0)
        profile.observe(vector, weight, ts, event.item_id, meta.lang, self.profile_params, dislike=disliked)
        if weight > 0:
            self.popularity.add(event.item_id, meta.lang, ts, weight)
            self.exposure.clicked(event.item_id, meta.lang, ts)
            if self.learned:
                self.ranker.taken(profile.last_impression, event.item_id)

    async def _shown(
        self, profile: UserProfile, impression: Impression, metas: list[ItemMeta], space: NeutralSpace
    ) -> None:
        """One impression: what the learned ranker saw (the terms of each item's score before it), then the
        user's fatigue with each item and the items' click-through counts."""
        ts = min(impression.ts, int(self.clock_ms()) + 60_000)
        langs = [m.lang for m in metas]
        profile.last_impression = None  # a click after this impression is about this one, or nothing
        if self.learned and profile.has_interests:
            ids = list(impression.item_ids)
            cands = Candidates(
                ids, np.stack([m.vector for m in metas]), langs, np.asarray([m.ts for m in metas], np.int64)
            )
            params = self.variant_params[self.learning_variant]
            table = CandidateTable.of(
                cands, params, self.popularity.trend(ids), space, self._click_through(params, ids, langs, always=True)
            )
            centroids = await self._expanded(profile, params, space)  # as served, so the terms are the served ones
            features, _ = table.features(
                [profile], None, params, self.profile_params, ts, None if centroids is None else [centroids]
            )
            profile.last_impression = ShownItems(ids, features[0], impression.positions)
        profile.was_shown(impression.item_ids, self.profile_params)
        self.exposure.shown(impression.item_ids, langs, ts)

    def load_profile(self, profiles: ProfileTable, user_id: str) -> UserProfile:
        """A user's profile as the engine would use it now (empty if none)."""
        return self._load(profiles, user_id.encode(), self.space.view())

    def _load(self, profiles: ProfileTable, key: bytes, space: NeutralSpace) -> UserProfile:
        raw = profiles.get(key)
        if not raw:
            return UserProfile(dim=self.dim, neutral=space.active)
        profile = UserProfile.from_bytes(raw)
        if not profile.neutral:  # built while the space was not yet active (or by an older xrec): as encoded
            profile.move_to(space)
        return profile

    async def _item_meta(self, item_ids: set[str]) -> dict[str, ItemMeta]:
        found: dict[str, ItemMeta] = {}
        missing = []
        for item_id in item_ids:
            meta = self.cache.get(item_id)
            if meta is None:
                missing.append(item_id)
            else:
                found[item_id] = meta
        if missing:
            with self._store_op("fetch"):
                stored = await self.store.fetch(missing, payload_fields=("lang", "ts"))
            for item_id, item in stored.items():
                meta = ItemMeta(
                    np.asarray(item.vector, np.float32),
                    str(item.payload.get("lang", "und")),
                    int(item.payload.get("ts") or 0),
                )
                self.cache.put(item_id, meta)
                found[item_id] = meta
        return found

    async def _encode_reviews(self, events: Sequence[Interaction], space: NeutralSpace) -> dict[str, np.ndarray]:
        """Review texts as neutral vectors, each centred by the language it is written in."""
        reviews = [e for e in events if e.type == "review" and e.text]
        if not reviews or self.encoder is None:
            return {}
        langs = []
        for review in reviews:
            resolved = self.languages.resolve(review.lang, review.text or "")
            if self.metrics:
                self.metrics.language_resolved("review", resolved.source)
            langs.append(resolved.lang)
        with self._stage("encode"):
            vectors = await self.encoder.encode_many([e.text or "" for e in reviews], kind="query")
        neutral = space.neutral(vectors, langs)
        return {e.event_id: v for e, v in zip(reviews, neutral, strict=True)}

    def _list(
        self, user_id: str, trigger: Interaction | None, strategy: str, items: list, now: float, variant: str
    ) -> RecommendationList:
        return RecommendationList(
            user_id=user_id,
            generated_at=int(now),
            trigger_event_id=trigger.event_id if trigger else None,
            strategy=strategy,
            items=tuple(items),
            variant=variant,
            list_id=secrets.token_hex(8),
        )

    def _stage(self, name: str) -> Any:
        return self.metrics.time_stage(name) if self.metrics else contextlib.nullcontext()

    def _store_op(self, name: str) -> Any:
        return self.metrics.observe_store(name, self.store.name) if self.metrics else contextlib.nullcontext()
