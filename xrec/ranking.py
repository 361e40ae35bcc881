"""From a profile to a list: candidate queries, scoring, MMR diversity, explanations, cold start.

The score of a candidate x for a user with interests c_k (importances r_k) is

    attention_k = softmax_k(τ·cos(x, c_k) + log r_k)        (which interest x speaks to)
    interest    = Σ_k attention_k · (cos(x, c_k) + (log r_k − Σ_j π_j log r_j)/τ)     (π = r / Σ r)
    score       = interest − β·strength·cos(x, dislikes) + γ·affinity(lang x) + φ·freshness(x) + ρ·trend(x)
                  + κ·ctr_lift(x) − η·log2(1 + times x was shown to the user untaken)

τ → ∞ is "best matching interest"; τ = 0 is the classic mean-of-history user (importance is then the
weight of the mean). The log r/τ term prices a match by its interest's importance: without it a match of
a long-faded interest scores as high as one of the current interest; with it each halving of importance
costs ln 2/τ of cosine (centred on the user's mean so scores stay near cosines for any τ). MMR then trades
relevance for diversity with λ. Everything is numpy over the whole candidate matrix at once, and a worker's
batch ranks its users together (``rank_many``): the distinct candidates of the batch are prepared once, and
users are scored and diversified in padded chunks, a few numpy calls per chunk rather than per list.

The neutral space. Candidates and interests are compared in ``xrec.space.NeutralSpace``: each item vector
minus its language's mean item vector, so what is scored is what is specific to the item, not what every
item (or every item of one language) shares. Profiles are built there (their interests are neutral), store
queries carry the interests with the language offsets projected out (``NeutralSpace.query_directions``),
and the candidates that come back are re-scored, and compared with each other by MMR, by their neutral
vectors. Item vectors in the store stay as encoded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from xrec.config import Settings
from xrec.events import RecommendedItem
from xrec.profile import ProfileParams, UserProfile
from xrec.space import NeutralSpace
from xrec.store.base import Hit, HitColumns, ItemFilter, VectorQuery

_DEFAULTS = Settings()  # the one source of every default; RankParams() equals the settings' defaults


@dataclass(frozen=True)
class RankParams:
    list_length: int = _DEFAULTS.list_length
    candidates_per_interest: int = _DEFAULTS.candidates_per_interest
    interest_temperature: float = _DEFAULTS.interest_temperature
    negative_weight: float = _DEFAULTS.negative_weight
    language_policy: str = _DEFAULTS.language_policy
    language_weight: float = _DEFAULTS.language_weight
    freshness_weight: float = _DEFAULTS.freshness_weight
    freshness_half_life_hours: float = _DEFAULTS.freshness_half_life_hours
    trending_weight: float = _DEFAULTS.trending_weight
    ctr_weight: float = _DEFAULTS.ctr_weight
    fatigue_weight: float = _DEFAULTS.fatigue_weight
    mmr_lambda: float = _DEFAULTS.mmr_lambda
    query_expansion: int = _DEFAULTS.query_expansion

    def weights(self) -> np.ndarray:
        """The weight of each of ``FEATURES`` in the score (the interest term's is 1)."""
        language = self.language_weight if self.language_policy != "any" else 0.0
        return np.asarray(
            [
                1.0,
                self.negative_weight,
                language,
                self.freshness_weight,
                self.trending_weight,
                self.ctr_weight,
                self.fatigue_weight,
            ]
        )

    def with_weights(self, weights: np.ndarray) -> RankParams:
        """These settings scoring with other weights (``weights()`` order; the interest weight is taken as 1)."""
        w = [float(x) for x in weights]
        return replace(
            self,
            negative_weight=w[1],
            language_weight=w[2] if self.language_policy != "any" else self.language_weight,
            freshness_weight=w[3],
            trending_weight=w[4],
            ctr_weight=w[5],
            fatigue_weight=w[6],
        )

    @classmethod
    def from_settings(cls, s: Settings) -> RankParams:
        return cls(
            list_length=s.list_length,
            candidates_per_interest=s.candidates_per_interest,
            interest_temperature=s.interest_temperature,
            negative_weight=s.negative_weight,
            language_policy=s.language_policy,
            language_weight=s.language_weight,
            freshness_weight=s.freshness_weight,
            freshness_half_life_hours=s.freshness_half_life_hours,
            trending_weight=s.trending_weight,
            ctr_weight=s.ctr_weight,
            fatigue_weight=s.fatigue_weight,
            mmr_lambda=s.mmr_lambda,
            query_expansion=s.query_expansion,
        )


#: The terms of a score, in ``CandidateTable.features`` order, each signed so that a positive weight helps
#: what users take: similarity to their interests, to their dislikes (negated), affinity for the item's language
#: (under language policy prefer/only), freshness, trend, click-through lift, times shown untaken (negated, log2).
FEATURES = ("interest", "dislike", "language", "freshness", "trend", "ctr", "fatigue")

#: The payload fields ranking reads of a candidate (``Candidates.from_columns``).
CANDIDATE_PAYLOAD = ("lang", "ts")


@dataclass(frozen=True)
class Candidates:
    """Candidate items as parallel arrays: the unit the scorer works on."""

    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32, L2-normalized
    langs: list[str]
    ts: np.ndarray  # (n,) epoch ms, 0 when unknown

    @classmethod
    def from_hits(cls, hits: Sequence[Hit], dim: int, vectors: Mapping[str, np.ndarray] | None = None) -> Candidates:
        """Union of several queries' hits (first occurrence wins).

        Each hit's vector comes from ``vectors`` by item id when given (the engine's item cache), else
        from the hit itself; a hit with neither is dropped.
        """
        return cls.from_columns(HitColumns.from_hits([hits], dim, CANDIDATE_PAYLOAD, vectors))

    @classmethod
    def from_columns(cls, columns: HitColumns) -> Candidates:
        """Every distinct item of a batch's answers (the columns' rows, in order)."""
        langs = columns.payload.get("lang") or [None] * len(columns)
        stamps = columns.payload.get("ts") or [None] * len(columns)
        return cls(
            ids=columns.item_ids,
            vectors=columns.vectors,
            langs=["und" if lang is None else str(lang) for lang in langs],
            ts=np.asarray([int(t or 0) for t in stamps], np.int64),
        )

    def __len__(self) -> int:
        return len(self.ids)


def candidate_queries(profile: UserProfile, params: RankParams, space: NeutralSpace | None = None) -> list[VectorQuery]:
    """One store query per interest (its language offsets projected out), all with the user's exclusions
    and language filter."""
    return candidate_queries_many([profile], params, space)[0]


def candidate_queries_many(
    profiles: Sequence[UserProfile], params: RankParams, space: NeutralSpace | None = None
) -> list[list[VectorQuery]]:
    """``candidate_queries`` of many users, their directions computed together."""
    if not profiles:
        return []
    centroids = np.concatenate([p.centroids for p in profiles])
    directions = space.query_directions(centroids) if space is not None else centroids
    queries: list[list[VectorQuery]] = []
    start = 0
    for profile in profiles:
        langs = tuple(profile.language_affinity()) if params.language_policy == "only" else None
        item_filter = ItemFilter(langs=langs or None, available_only=True)
        excluded = profile.excluded_ids()  # applied by the store, so every query still fills its limit
        stop = start + len(profile.centroids)
        queries.append(
            [
                VectorQuery(
                    vector=c,
                    limit=params.candidates_per_interest,
                    filter=item_filter,
                    exclude_ids=excluded,
                    payload_fields=CANDIDATE_PAYLOAD,
                )
                for c in directions[start:stop]
            ]
        )
        start = stop
    return queries


def score_candidates(
    profile: UserProfile,
    cands: Candidates,
    params: RankParams,
    profile_params: ProfileParams,
    now_ms: int,
    trend: Mapping[str, float] | None = None,
    space: NeutralSpace | None = None,
    centroids: np.ndarray | None = None,
    ctr: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Relevance of every candidate, and the index of the interest each one answers (for ``because``).

    ``space`` is the engine's current neutral space; None scores the vectors as they are. ``centroids``
    replace the profile's interests (``expand_interests``). ``ctr``: click-through lift by item id.
    """
    if not len(cands):
        return np.zeros(0), np.zeros(0, np.int64)
    table = CandidateTable.of(cands, params, trend, space, ctr)
    own = [centroids] if centroids is not None else None
    score, interest_of = table.score([profile], None, params, profile_params, now_ms, own)
    return score[0], interest_of[0]


def mmr_select(vectors: np.ndarray, relevance: np.ndarray, n: int, lam: float) -> list[int]:
    """Maximal marginal relevance: greedily pick relevant items unlike those already picked."""
    count = len(relevance)
    if count == 0 or n <= 0:
        return []
    if lam >= 1.0:
        return [int(i) for i in np.argsort(-relevance, kind="stable")[:n]]
    chosen: list[int] = []
    base = lam * np.asarray(relevance, np.float64)
    max_sim: np.ndarray | None = None  # highest similarity of each candidate to a chosen one (float64)
    for _ in range(min(n, count)):
        gain = base.copy() if max_sim is None else base - (1 - lam) * max_sim
        gain[chosen] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        sims = (vectors @ vectors[pick]).astype(np.float64)
        max_sim = sims if max_sim is None else np.maximum(max_sim, sims)
    return chosen


def mmr_select_many(
    vectors: np.ndarray, relevance: np.ndarray, counts: Sequence[int], n: int, lam: float
) -> list[list[int]]:
    """``mmr_select`` for several users at once: ``vectors`` (users, candidates, dim), unit rows; user
    u's first ``counts[u]`` candidates are real, the rest padding. Each step is one stacked product for
    everyone; one user takes ``mmr_select``'s plain products, which cost less per call."""
    users, width = relevance.shape
    if lam >= 1.0:
        return top_many(relevance, counts, n)
    if users == 1:
        return [mmr_select(vectors[0, : counts[0]], relevance[0, : counts[0]], n, lam)]
    limits = [min(n, c) for c in counts]
    if width == 0 or n <= 0:
        return [[] for _ in counts]
    real = np.arange(width)[None, :] < np.asarray(counts)[:, None]
    base = np.where(real, lam * relevance, -np.inf)  # a picked candidate's base becomes −inf too
    everyone = np.arange(users)
    steps: list[np.ndarray] = []
    max_sim: np.ndarray | None = None
    for _ in range(max(limits)):
        pick = np.argmax(base if max_sim is None else base - (1 - lam) * max_sim, axis=1)
        steps.append(pick)
        base[everyone, pick] = -np.inf
        sims = (vectors @ vectors[everyone, pick][:, :, None])[:, :, 0].astype(np.float64)
        max_sim = sims if max_sim is None else np.maximum(max_sim, sims)
    picks = np.stack(steps, axis=1).tolist()
    return [p[:m] for p, m in zip(picks, limits, strict=True)]


def top_many(relevance: np.ndarray, counts: Sequence[int], n: int) -> list[list[int]]:
    """Each user's ``n`` most relevant candidates, best first (ties in candidate order): ``mmr_select_many``
    with no diversity term. User u's first ``counts[u]`` candidates are real, the rest padding."""
    width = relevance.shape[1]
    if width == 0 or n <= 0:
        return [[] for _ in counts]
    real = np.arange(width)[None, :] < np.asarray(counts)[:, None]
    order = np.argsort(np.where(real, -relevance, np.inf), axis=1, kind="stable")[:, : min(n, width)].tolist()
    return [picks[: min(n, c)] for picks, c in zip(order, counts, strict=True)]


def rank(
    profile: UserProfile,
    cands: Candidates,
    params: RankParams,
    profile_params: ProfileParams,
    now_ms: int,
    trend: Mapping[str, float] | None = None,
    space: NeutralSpace | None = None,
    ctr: Mapping[str, float] | None = None,
) -> list[RecommendedItem]:
    """The published list: scored, diversified, each item explained by the user's item behind it.

    MMR compares items by their neutral vectors: raw cosines between items are all high, so redundancy
    would barely tell a near-duplicate from an unrelated item.
    """
    excluded = set(profile.seen) | set(profile.disliked)
    keep = [i for i, item_id in enumerate(cands.ids) if item_id not in excluded]
    if len(keep) != len(cands):
        cands = Candidates(
            ids=[cands.ids[i] for i in keep],
            vectors=cands.vectors[keep],
            langs=[cands.langs[i] for i in keep],
            ts=cands.ts[keep],
        )
    table = CandidateTable.of(cands, params, trend, space, ctr)
    return table.rank([profile], [np.arange(len(cands))], params, profile_params, now_ms)[0]


def rank_many(
    profiles: Sequence[UserProfile],
    columns: HitColumns,
    spans: Sequence[tuple[int, int]],
    params: RankParams,
    profile_params: ProfileParams,
    now_ms: int,
    trend: Mapping[str, float] | None = None,
    space: NeutralSpace | None = None,
    ctr: Mapping[str, float] | None = None,
) -> list[list[RecommendedItem]]:
    """``rank`` for many users at once: user u's candidates are the answers to queries ``spans[u]`` of
    one batch, whose distinct items are prepared once for everyone. Those are the user's
    ``candidate_queries``, which carry their seen and disliked items as exclusions: the store has
    already left them out, so unlike ``rank`` this does not filter them again."""
    table = CandidateTable.of(Candidates.from_columns(columns), params, trend, space, ctr)
    rows = [union_of_answers(columns.per_query[start:stop]) for start, stop in spans]
    centroids = expand_interests(profiles, columns, spans, table.neutral, params.query_expansion)
    return table.rank(profiles, rows, params, profile_params, now_ms, centroids)


#: Query expansion treats the mean of an interest's best answers as worth this many events: an interest
#: built from 3 clicks moves halfway to it, one built from 30 moves a tenth of the way.
EXPANSION_PRIOR_EVENTS = 3.0
#: Queries whose answers are gathered at once: bounds the gathered vectors to ~15 MB at 20 answers each.
_EXPANSION_BLOCK = 512


def expand_interests(
    profiles: Sequence[UserProfile],
    columns: HitColumns,
    spans: Sequence[tuple[int, int]],
    neutral: np.ndarray,
    top: int,
) -> list[np.ndarray]:
    """Each profile's interests, each moved toward the mean neutral vector of its own query's ``top``
    best answers (the profiles are not changed).

    Query expansion by pseudo-relevance feedback (Rocchio): an interest built from a few clicks is a
    noisy estimate of what the user reads, and the items nearest to it agree on their topic more than
    the clicks do. Each answer counts by its (positive) cosine to the interest, so in a catalog with
    fewer than ``top`` related items the unrelated rest adds nothing. The answers weigh as
    ``EXPANSION_PRIOR_EVENTS`` events against the interest's own (decayed) event weight, so a new user's
    interests move a lot and a long history's barely: on the cross-lingual dev catalogs (3 clicks) it
    raised the share of on-topic items in a list, while moving every interest halfway cost MIND's long
    histories 0.01 AUC (EVALUATION.md). ``top`` 0 returns the interests as they are.
    """
    own = [p.centroids for p in profiles]
    if top <= 0 or not profiles:
        return own
    answers = columns.per_query
    interests = np.concatenate(own)  # one query per interest, in order
    weights = np.concatenate([p.weights for p in profiles])
    means = np.zeros_like(interests)
    for first in range(0, len(answers), _EXPANSION_BLOCK):
        block = answers[first : first + _EXPANSION_BLOCK]
        # Each query's best answers as a padded (queries, top) table: one gather, then batched products.
        found = np.fromiter((min(top, len(a)) for a in block), np.intp, count=len(block))
        real = np.arange(top)[None, :] < found[:, None]
        rows = np.zeros((len(block), top), np.intp)
        rows[real] = np.concatenate([a[:top] for a in block])  # row by row, as the mask is filled
        gathered = neutral[rows]  # (queries, top, dim)
        mine = interests[first : first + len(block)]
        weight = np.where(real, np.maximum(0.0, (gathered @ mine[:, :, None])[:, :, 0]), 0.0).astype(np.float32)
        total = weight.sum(axis=1, keepdims=True)
        sums = (weight[:, None, :] @ gathered)[:, 0, :]
        means[first : first + len(block)] = np.where(total > 1e-9, sums / np.maximum(total, 1e-9), 0.0)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    ok = norms[:, 0] > 1e-6
    keep = (weights / (weights + EXPANSION_PRIOR_EVENTS))[:, None].astype(np.float32)
    moved = interests.copy()
    moved[ok] = keep[ok] * interests[ok] + (1 - keep[ok]) * means[ok] / norms[ok]
    moved /= np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
    return [moved[start:stop] for start, stop in spans]


def union_of_answers(answers: Sequence[np.ndarray]) -> np.ndarray:
    """The rows several queries answered, each once, in order of first appearance."""
    rows = np.concatenate(answers) if answers else np.zeros(0, np.int64)
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


#: Users ranked together in one set of padded arrays: few enough to keep them small (users × candidates × dim).
RANK_CHUNK = 32


@dataclass(frozen=True)
class CandidateTable:
    """Candidates prepared once for every user who shares them (a batch's distinct items)."""

    cands: Candidates
    neutral: np.ndarray  # (n, dim) unit vectors in the neutral space: scored against interests, compared by MMR
    trend: np.ndarray | None  # (n,) popularity relative to the top item, when given
    ctr: np.ndarray | None = None  # (n,) click-through lift (``xrec.exposure``), when given

    @classmethod
    def of(
        cls,
        cands: Candidates,
        params: RankParams,
        trend: Mapping[str, float] | None,
        space: NeutralSpace | None,
        ctr: Mapping[str, float] | None = None,
    ) -> CandidateTable:
        return cls(
            cands=cands,
            neutral=space.neutral(cands.vectors, cands.langs) if space is not None else cands.vectors,
            trend=np.asarray([trend.get(i, 0.0) for i in cands.ids]) if trend else None,
            ctr=np.asarray([ctr.get(i, 0.0) for i in cands.ids]) if ctr else None,
        )

    def rank(
        self,
        profiles: Sequence[UserProfile],
        rows: Sequence[np.ndarray],
        params: RankParams,
        profile_params: ProfileParams,
        now_ms: int,
        centroids: Sequence[np.ndarray] | None = None,
    ) -> list[list[RecommendedItem]]:
        """One list per profile from its candidates ``rows``. Users go in chunks of similar candidate
        counts: a few numpy calls per chunk, not per list. ``centroids`` replace each profile's interests
        (``expand_interests``)."""
        own = list(centroids) if centroids is not None else [p.centroids for p in profiles]
        if len(profiles) == 1 and np.array_equal(rows[0], np.arange(len(self.cands))):
            return [self._rank_chunk(list(profiles), own, None, [len(self.cands)], params, profile_params, now_ms)[0]]
        lists: list[list[RecommendedItem]] = [[] for _ in profiles]
        by_size = sorted((u for u in range(len(profiles)) if len(rows[u])), key=lambda u: len(rows[u]))
        for first in range(0, len(by_size), RANK_CHUNK):
            chunk = by_size[first : first + RANK_CHUNK]
            counts = [len(rows[u]) for u in chunk]
            padded = np.zeros((len(chunk), max(counts)), np.int64)
            for j, u in enumerate(chunk):
                padded[j, : counts[j]] = rows[u]
            users = [profiles[u] for u in chunk]
            interests = [own[u] for u in chunk]
            for u, items in zip(
                chunk,
                self._rank_chunk(users, interests, padded, counts, params, profile_params, now_ms),
                strict=True,
            ):
                lists[u] = items
        return lists

    def _rank_chunk(
        self,
        users: list[UserProfile],
        interests: list[np.ndarray],
        padded: np.ndarray | None,
        counts: list[int],
        params: RankParams,
        profile_params: ProfileParams,
        now_ms: int,
    ) -> list[list[RecommendedItem]]:
        """Lists of a few users whose candidates are ``padded`` (None: one user, the whole table)."""
        score, interest_of = self.score(users, padded, params, profile_params, now_ms, interests)
        if params.mmr_lambda >= 1.0:  # no diversity term: the candidates' vectors are not needed
            picks = top_many(score, counts, params.list_length)
        else:
            vectors = self.neutral[None] if padded is None else self.neutral[padded]
            picks = mmr_select_many(vectors, score, counts, params.list_length, params.mmr_lambda)
        lists = []
        for j, profile in enumerate(users):
            at = list(range(len(self.cands))) if padded is None else padded[j].tolist()
            scores, answers = score[j].tolist(), interest_of[j].tolist()
            lists.append(
                [
                    RecommendedItem(
                        item_id=self.cands.ids[at[c]],
                        score=scores[c],
                        lang=self.cands.langs[at[c]],
                        because=profile.anchors[answers[c]] if profile.anchors else None,
                    )
                    for c in picks[j]
                ]
            )
        return lists

    def score(
        self,
        profiles: Sequence[UserProfile],
        rows: np.ndarray | None,
        params: RankParams,
        profile_params: ProfileParams,
        now_ms: int,
        centroids: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (users, candidates) of the candidates at ``rows``, and the interest each one answers:
        the formula of the module docstring, for every user at once (padding rows are scored too, and
        left out by the caller). ``rows`` None: one user, every candidate of the table. ``centroids``
        replace the profiles' interests (neutral, one array per profile)."""
        features, interest_of = self.features(profiles, rows, params, profile_params, now_ms, centroids)
        return features @ params.weights(), interest_of

    def features(
        self,
        profiles: Sequence[UserProfile],
        rows: np.ndarray | None,
        params: RankParams,
        profile_params: ProfileParams,
        now_ms: int,
        centroids: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The terms of the score (users, candidates, ``FEATURES``), each signed so that the score is their
        weighted sum (``RankParams.weights``), and the interest each candidate answers. A term whose data is
        missing (no dislikes, no trend or click-through counts given) is 0."""
        cands = self.cands
        users, dim = len(profiles), cands.vectors.shape[1]
        width = max(len(p.centroids) for p in profiles)
        interests = np.zeros((users, width, dim), np.float32)
        log_rel = np.zeros((users, width))
        missing = np.ones((users, width), bool)
        mean_log_rel = np.zeros(users)
        dislike: np.ndarray | None = None
        dislike_strength = np.zeros(users)
        everyone = np.concatenate(centroids if centroids is not None else [p.centroids for p in profiles])
        start = 0
        for u, profile in enumerate(profiles):
            k = len(profile.centroids)
            interests[u, :k] = everyone[start : start + k]
            start += k
            importance = profile.importance(now_ms, profile_params)
            rel = importance / max(float(importance.max()), 1e-12) if k else importance
            log_rel[u, :k] = np.log(np.maximum(rel, 1e-12))
            missing[u, :k] = False
            mean_log_rel[u] = (rel / max(float(rel.sum()), 1e-12)) @ log_rel[u, :k]
            neg_dir, strength = profile.negative_direction()
            if neg_dir is not None:
                if dislike is None:
                    dislike = np.zeros((users, dim), np.float32)
                dislike[u] = neg_dir
                dislike_strength[u] = strength
        vectors = self.neutral[None] if rows is None else self.neutral[rows]  # (users, candidates, dim)
        sims = vectors @ interests.transpose(0, 2, 1)  # (users, candidates, interests)
        logits = (
            params.interest_temperature * sims
            + (np.where(missing, -np.inf, log_rel) if missing.any() else log_rel)[:, None, :]
        )
        logits -= logits.max(axis=2, keepdims=True)
        attention = np.exp(logits)
        attention /= attention.sum(axis=2, keepdims=True)
        at = np.arange(len(cands))[None, :] if rows is None else rows
        out = np.zeros((users, at.shape[1], len(FEATURES)))
        out[:, :, 0] = (attention * sims).sum(axis=2)
        if params.interest_temperature > 0:  # faded interests price their matches down (module docstring)
            out[:, :, 0] += (attention @ (log_rel - mean_log_rel[:, None])[:, :, None])[
                :, :, 0
            ] / params.interest_temperature
        if dislike is not None:
            out[:, :, 1] = -dislike_strength[:, None] * (vectors @ dislike[:, :, None])[:, :, 0]
        if params.language_policy != "any":
            for u, profile in enumerate(profiles):
                affinity = profile.language_affinity()
                out[u, :, 2] = [affinity.get(cands.langs[r], 0.0) for r in at[u]]
        ts = cands.ts[at]
        age_h = np.maximum(0, now_ms - ts) / 3_600_000.0
        out[:, :, 3] = np.where(ts > 0, np.exp2(-age_h / params.freshness_half_life_hours), 0.0)
        if self.trend is not None:
            out[:, :, 4] = self.trend[at]
        if self.ctr is not None:
            out[:, :, 5] = self.ctr[at]
        for u, profile in enumerate(profiles):
            if profile.shown:
                out[u, :, 6] = -np.log2(1.0 + profile.times_shown([cands.ids[r] for r in at[u]]))
        # The interest a candidate answers (``because``): the one its attention goes to, or at temperature 0
        # (every candidate attends alike, by importance) the one it is nearest.
        answered = attention if params.interest_temperature > 0 else np.where(missing[:, None, :], -np.inf, sims)
        return out, np.argmax(answered, axis=2)


class Popularity:
    """Decayed click counts per item and language: the cold-start list and the trending signal.

    Counts live in the worker (each sees its partitions' events), decay with a half-life in event
    time, and are pruned so memory stays bounded.
    """

    def __init__(self, half_life_hours: float = 24.0, max_items: int = 50_000) -> None:
        self.decay_per_ms = math.log(2) / (half_life_hours * 3_600_000.0)
        self.max_items = max_items
        self.scores: dict[str, float] = {}  # stored relative to ``epoch`` to avoid decaying everything
        self.langs: dict[str, str] = {}
        self.epoch = 0
        self._top: float | None = None  # the highest score, kept as scores change; None: to be recomputed

    def add(self, item_id: str, lang: str, ts: int, weight: float = 1.0) -> None:
        if not self.epoch:
            self.epoch = ts
        growth = self.decay_per_ms * (ts - self.epoch)
        if growth > 50:  # re-base before exp overflows
            self._rebase(ts)
            growth = 0.0
        score = self.scores[item_id] = self.scores.get(item_id, 0.0) + weight * math.exp(growth)
        self.langs[item_id] = lang
        if weight < 0:
            self._top = None  # the maximum may have dropped: recomputed when next asked
        elif self._top is not None and score > self._top:
            self._top = score
        if len(self.scores) > self.max_items * 1.2:
            for item in sorted(self.scores, key=self.scores.__getitem__)[: len(self.scores) - self.max_items]:
                del self.scores[item]
                self.langs.pop(item, None)

    def discard(self, item_id: str) -> None:
        """Forget an item that was deleted or became unavailable, so no cold-start list offers it."""
        self.scores.pop(item_id, None)
        self.langs.pop(item_id, None)
        self._top = None

    def _rebase(self, ts: int) -> None:
        factor = math.exp(-self.decay_per_ms * (ts - self.epoch))
        self.scores = {k: v * factor for k, v in self.scores.items() if v * factor > 1e-9}
        self.langs = {k: self.langs[k] for k in self.scores}  # dropped items must not linger here
        self.epoch = ts
        self._top = None

    def top(
        self, n: int, langs: Sequence[str] | None = None, exclude: set[str] | None = None
    ) -> list[tuple[str, float]]:
        """The n most popular items, optionally only in ``langs``, as (item_id, relative score)."""
        exclude = exclude or set()
        wanted = set(langs) if langs else None
        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1])
        out = []
        for item_id, s in ranked:
            if item_id in exclude or (wanted is not None and self.langs.get(item_id) not in wanted):
                continue
            out.append((item_id, s))
            if len(out) == n:
                break
        top = out[0][1] if out else 1.0
        return [(i, s / top) for i, s in out]

    def trend(self, item_ids: Sequence[str]) -> dict[str, float]:
        """Popularity of the given items relative to the most popular one (0..1)."""
        if not self.scores:
            return {}
        if self._top is None:  # once per change of the maximum, not once per list: the table holds up to 50k items
            self._top = max(self.scores.values())
        top = self._top
        return {i: self.scores.get(i, 0.0) / top for i in item_ids}

    def cold_start(
        self, profile: UserProfile | None, n: int, preferred_langs: Sequence[str] = ()
    ) -> list[RecommendedItem]:
        """A list for a user with no positive history: popular in their languages, then anywhere."""
        exclude = (set(profile.seen) | set(profile.disliked)) if profile else set()
        langs = list(preferred_langs) or (list(profile.language_affinity()) if profile else [])
        picks = self.top(n, langs, exclude) if langs else []
        if len(picks) < n:
            chosen = {i for i, _ in picks}
            picks += [p for p in self.top(n + len(chosen), None, exclude | chosen)][: n - len(picks)]
        return [RecommendedItem(item_id=i, score=s, lang=self.langs.get(i, "und")) for i, s in picks]
