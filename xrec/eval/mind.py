"""``xrec eval mind``: are the lists any good, and do they cross languages? Measured on real MIND clicks.

Impressions are replayed in time order, as the stream would see them, through the served code: items
are upserted into a real Qdrant Edge store (in a temp dir) by ``Recommender.handle_items`` when they
are first shown; each user's history becomes click events through ``Recommender.handle_events`` (the
real ``UserProfile``, in a profile table); each impression's candidates are scored with the served
relevance score (``ranking.score_candidates``, the score ``rank`` feeds to MMR); after an impression
its clicks become events too, so later impressions may use them (trending), never the other way round.

AUC, MRR and nDCG are computed from that relevance score *before* MMR: MMR re-orders a list for
diversity, it does not score a candidate. The baselines see exactly the same impressions and clicks:
random (seeded), popularity (click counts of everything the stream processed so far) and
mean-of-history (cosine to the mean of the user's clicked item vectors). The lists xrec would publish
(``Recommender.recommend``: store queries, ranking, MMR) over the scenario's whole candidate pool are
measured for diversity, coverage and how often they cross into a language the user never clicked.

History clicks have no times in MIND (they come from the four weeks before the log); they are spread
evenly, in order, over ``--history-days`` before the first impression of the file.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xrec.config import Settings
from xrec.errors import CommandError
from xrec.eval import metrics as m
from xrec.eval.mind_data import (
    DEFAULT_BEHAVIORS,
    SCENARIOS,
    Case,
    Catalog,
    Impression,
    Scenario,
    Selection,
    load_news,
    news_of,
    read_behaviors,
    select,
    shown_items,
    split_key,
)

log = logging.getLogger(__name__)

DATA_SET = "mind-xmind"
SYSTEMS = ("random", "popularity", "mean-of-history", "xrec")
LIST_SYSTEMS = ("popularity", "mean-of-history", "xrec")
REFERENCE = "mean-of-history"
LABELS = {"auc": "AUC", "mrr": "MRR", "ndcg@5": "nDCG@5", "ndcg@10": "nDCG@10"}
DAY_MS = 86_400_000
SCORE_NOTE = (
    "AUC, MRR and nDCG rank each impression's candidates by the served relevance score before MMR "
    "(MMR re-orders a published list for diversity; it is not a score). Ties are broken by a seeded shuffle."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", default="", help=f"MIND/xMIND folder (default: XREC_DATA_DIR/{DATA_SET}, see ../shared/data)"
    )
    parser.add_argument(
        "--behaviors", default="", help=f"behaviors file in MIND format (default: DATA_DIR/{DEFAULT_BEHAVIORS})"
    )
    parser.add_argument(
        "--scenario", choices=sorted(SCENARIOS), default="zh-zh", help="languages of history/candidates"
    )
    parser.add_argument("--limit", type=int, default=0, help="stop after N kept impressions (0: all)")
    parser.add_argument("--plot", default="", help="write a bar chart of the metrics with 95%% CIs (PNG)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline, tie-breaks and bootstrap")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument(
        "--history-days", type=float, default=28.0, help="span the untimed history clicks are spread over (days)"
    )
    parser.add_argument(
        "--no-lists", action="store_true", help="skip the published top-10 lists (accuracy only; faster, for tuning)"
    )
    parser.add_argument(
        "--no-impressions",
        action="store_true",
        help="replay clicks only, no impression events (what a deployment that sends none gets)",
    )


# --------------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------------


@dataclass
class _Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def _quiet_recommender_class() -> type:
    from xrec.pipeline import Recommender

    class QuietRecommender(Recommender):
        """The engine, minus the list ``handle_events`` builds after every batch of replayed clicks.

        Profiles, dedup and popularity are updated by the served ``handle_events``; a list is built by
        the served ``recommend`` only where the evaluation reads one (before a scored impression), which
        saves a store query per replayed batch and changes nothing that is measured.
        """

        async def handle_events(self, events: Any, profiles: Any) -> Any:
            self._quiet = True
            try:
                return await super().handle_events(events, profiles)
            finally:
                self._quiet = False

        async def recommend(self, users: Any, triggers: Any) -> Any:
            if getattr(self, "_quiet", False):
                return []
            return await super().recommend(users, triggers)

    return QuietRecommender


@dataclass
class PublishedList:
    system: str
    items: list[str]
    langs: list[str]
    user_langs: set[str]
    clicked: set[str]  # what the user clicked in the impression this list was built before


@dataclass
class ReplayResult:
    #: system -> metric -> one value per scored impression (SYSTEMS, then any further A/B variant)
    metrics: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {s: {k: [] for k in m.METRICS} for s in SYSTEMS}
    )
    lists: list[PublishedList] = field(default_factory=list)
    pool: set[str] = field(default_factory=set)  # items shown so far: the scenario's candidate pool
    events: int = 0
    impressions_replayed: int = 0  # impression events (what was shown) fed to the engine
    impression_clicks_in_profile: int = 0  # kept impressions whose user had clicks from earlier impressions
    candidates_in_own_history: int = 0


class Replay:
    """The stream, impression by impression: index what is shown, update profiles, score, learn clicks."""

    def __init__(
        self,
        settings: Settings,
        store: Any,
        vectors: dict[str, np.ndarray],
        catalog: Catalog,
        scenario: Scenario,
        history_start: int,
        history_span_ms: int,
        seed: int,
        with_lists: bool,
        with_impressions: bool = True,
    ) -> None:
        self.store = store
        self.vectors = vectors
        self.catalog = catalog
        self.scenario = scenario
        self.history_start = history_start
        self.history_span_ms = history_span_ms
        self.with_lists = with_lists
        self.with_impressions = with_impressions
        self.dim = len(next(iter(vectors.values())))
        self.clock = _Clock()
        self.rec = _quiet_recommender_class()(settings, store, encoder=None, dim=self.dim, clock_ms=self.clock)
        self.profiles: dict[bytes, bytes] = {}
        self.indexed: dict[str, bool] = {}  # item key -> available
        self.clicks: Counter[str] = Counter()  # every click the stream has processed: the popularity baseline
        self.user_clicks: defaultdict[str, list[str]] = defaultdict(list)
        self.impression_clickers: set[str] = set()
        self.pool_keys: list[str] = []  # the pool in the order items were first shown
        self.first_shown: dict[str, int] = {}
        self._pool_cache: tuple[list[str], np.ndarray] | None = None
        self.rng = np.random.default_rng(seed)
        self.out = ReplayResult()

    async def start(self) -> None:
        await self.rec.start()

    async def step(self, imp: Impression, case: Case | None) -> None:
        self.clock.now = float(imp.ts)
        shown = shown_items(imp, self.catalog, self.scenario)
        await self._index([k for k, _ in shown], available=True, ts=imp.ts)
        for k, _ in shown:
            if k not in self.out.pool:
                self.out.pool.add(k)
                self.pool_keys.append(k)
                self.first_shown[k] = imp.ts
        if case is not None:
            await self._score(case)
        clicked = [k for k, label in shown if label]
        if self.with_impressions and shown:
            await self._shown(imp, [k for k, _ in shown])
        if clicked:
            await self._events(imp.user_id, [(f"{imp.impression_id}:{k}", k, imp.ts) for k in clicked])
            self.impression_clickers.add(imp.user_id)

    async def _shown(self, imp: Impression, keys: list[str]) -> None:
        """The impression as the stream would carry it: an impression event, before its clicks."""
        from xrec.events import Impression as ShownEvent

        event = ShownEvent(f"{imp.impression_id}:shown", imp.user_id, tuple(keys), imp.ts)  # MIND keeps no positions
        result = await self.rec.handle_events([event], self.profiles)
        if result.rejected or result.waiting:
            raise RuntimeError(f"the engine did not take impression {imp.impression_id}")
        self.out.impressions_replayed += 1

    def history_ts(self, position: int, length: int) -> int:
        """Untimed history click ``position`` of ``length``, spread evenly over the span before the log."""
        return int(self.history_start - self.history_span_ms + self.history_span_ms * (position + 1) / (length + 1))

    async def _index(self, keys: list[str], available: bool, ts: int) -> None:
        """Upsert items the store lacks (or holds as unavailable and are now shown), with their vectors."""
        from xrec.events import ItemUpsert

        todo = [k for k in dict.fromkeys(keys) if k not in self.indexed or (available and not self.indexed[k])]
        if not todo:
            return
        records = []
        for key in todo:
            news = news_of(key, self.catalog)
            records.append(
                ItemUpsert(
                    item_id=key,
                    title=news.title,
                    lang=news.lang,
                    category=news.category,
                    available=available,
                    ts=ts,
                    vector=self.vectors[key],
                )
            )
        result = await self.rec.handle_items(records)
        if result.rejected:
            raise RuntimeError(f"the store refused {len(result.rejected)} items: {result.rejected[0].error}")
        for key in todo:
            self.indexed[key] = available

    async def _events(self, user_id: str, clicks: list[tuple[str, str, int]]) -> None:
        """Click events through the engine (profiles, dedup, popularity)."""
        from xrec.events import Interaction

        events = [Interaction(event_id=eid, user_id=user_id, item_id=k, type="click", ts=ts) for eid, k, ts in clicks]
        result = await self.rec.handle_events(events, self.profiles)
        if result.rejected or result.waiting:
            raise RuntimeError(f"the engine did not take {len(result.rejected) + result.waiting} replayed events")
        for event in result.processed:
            self.clicks[event.item_id] += 1
            self.user_clicks[user_id].append(event.item_id)
        self.out.events += len(result.processed)

    async def _score(self, case: Case) -> None:
        imp = case.impression
        user = imp.user_id
        await self._index([k for k in case.history if k not in self.indexed], available=False, ts=0)
        n = len(imp.history)
        history = [
            (f"{user}:h{pos}:{k}", k, self.history_ts(pos, n))
            for k, pos in zip(case.history, case.history_positions, strict=True)
        ]
        await self._events(user, history)  # a returning user's history is absorbed as redelivered
        if user in self.impression_clickers:
            self.out.impression_clicks_in_profile += 1
        profile = self.rec.load_profile(self.profiles, user)
        self.out.candidates_in_own_history += sum(k in profile.seen for k in case.candidates)

        cands = await self._candidates(list(case.candidates))
        mean_vec = self._mean_of_history(user)
        scores = {
            "random": self.rng.random(len(cands)),
            "popularity": np.asarray([self.clicks[k] for k in cands.ids], np.float64),
            "mean-of-history": cands.vectors @ mean_vec,
        }
        for variant in self.rec.variants.names:  # every variant scores every impression: paired comparisons
            scores[variant_system(self.rec.variants.default, variant)] = await self.rec.relevance(
                profile, cands, imp.ts, variant
            )
        tiebreak = self.rng.permutation(len(cands))
        for system, s in scores.items():
            for name, value in m.impression_metrics(case.labels, s, tiebreak).items():
                self.out.metrics.setdefault(system, {k: [] for k in m.METRICS})[name].append(value)
        if self.with_lists:
            clicked = {k for k, label in zip(case.candidates, case.labels, strict=True) if label}
            await self._lists(user, profile, mean_vec, clicked)

    async def _candidates(self, keys: list[str]) -> Any:
        """The impression's candidates as the engine sees them: its item cache, then the store."""
        from xrec.ranking import Candidates

        metas = {k: self.rec.cache.get(k) for k in keys}
        missing = [k for k, meta in metas.items() if meta is None]
        stored = await self.store.fetch(missing) if missing else {}
        vectors, langs = [], []
        for k in keys:
            meta = metas[k]
            if meta is not None:
                vectors.append(meta.vector)
                langs.append(meta.lang)
            else:
                vectors.append(np.asarray(stored[k].vector, np.float32))
                langs.append(str(stored[k].payload.get("lang", "und")))
        return Candidates(
            ids=keys,
            vectors=np.vstack(vectors).astype(np.float32),
            langs=langs,
            ts=np.asarray([self.first_shown.get(k, 0) for k in keys], np.int64),
        )

    def _pool_matrix(self) -> tuple[list[str], np.ndarray]:
        if self._pool_cache is None or len(self._pool_cache[0]) != len(self.pool_keys):
            self._pool_cache = (list(self.pool_keys), np.vstack([self.vectors[k] for k in self.pool_keys]))
        return self._pool_cache

    def _mean_of_history(self, user: str) -> np.ndarray:
        mean = np.mean([self.vectors[k] for k in self.user_clicks[user]], axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    async def _lists(self, user: str, profile: Any, mean_vec: np.ndarray, clicked: set[str]) -> None:
        """Top-10 lists over the whole pool shown so far: xrec's as served, and the two baselines'."""
        user_langs = {split_key(k)[1] for k in self.user_clicks[user]}
        n = self.rec.rank_params.list_length
        published = await self.rec.recommend({user: profile}, {})
        items = [it.item_id for it in published[0].items]
        self._add_list("xrec", items, user_langs, clicked)
        skip = set(profile.excluded_ids())
        keys, matrix = self._pool_matrix()  # exact cosine over the pool, as the store's exact search would do
        allowed = np.asarray([k not in skip for k in keys])
        sims = np.where(allowed, matrix @ mean_vec, -np.inf)
        top = [i for i in np.argsort(-sims, kind="stable")[:n] if allowed[i]]
        self._add_list("mean-of-history", [keys[i] for i in top], user_langs, clicked)
        popular = heapq.nlargest(n, (k for k in keys if k not in skip), key=lambda k: (self.clicks[k], k))
        self._add_list("popularity", popular, user_langs, clicked)

    def _add_list(self, system: str, items: list[str], user_langs: set[str], clicked: set[str]) -> None:
        self.out.lists.append(PublishedList(system, items, [split_key(k)[1] for k in items], user_langs, clicked))


async def replay(
    settings: Settings,
    selection: Selection,
    impressions: list[Impression],
    catalog: Catalog,
    scenario: Scenario,
    vectors: dict[str, np.ndarray],
    history_span_ms: int,
    seed: int,
    with_lists: bool,
    with_impressions: bool = True,
) -> ReplayResult:
    """Run the scanned impressions through the engine with a fresh Qdrant Edge store in a temp dir."""
    from xrec.store import open_store

    cases = {id(c.impression): c for c in selection.cases}
    scanned = impressions[: selection.impressions]
    with tempfile.TemporaryDirectory(prefix="xrec-eval-mind-") as tmp:
        store_settings = settings.replace(store_backend="edge", store_path=tmp)
        store = open_store(store_settings, dim=len(next(iter(vectors.values()))))
        try:
            engine = Replay(
                store_settings,
                store,
                vectors,
                catalog,
                scenario,
                history_start=min(imp.ts for imp in scanned),
                history_span_ms=history_span_ms,
                seed=seed,
                with_lists=with_lists,
                with_impressions=with_impressions,
            )
            await engine.start()
            for done, imp in enumerate(scanned, start=1):
                await engine.step(imp, cases.get(id(imp)))
                if done % 500 == 0:
                    log.info("replayed %d/%d impressions", done, len(scanned))
        finally:
            await store.close()
    return engine.out


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------


def needed_items(
    selection: Selection, impressions: list[Impression], catalog: Catalog, scenario: Scenario
) -> list[str]:
    """Every item key the replay will index: shown candidates of scanned impressions, kept histories."""
    keys: dict[str, None] = {}
    for imp in impressions[: selection.impressions]:
        keys.update((k, None) for k, _ in shown_items(imp, catalog, scenario))
    for case in selection.cases:
        keys.update((k, None) for k in case.history)
    return list(keys)


def item_vectors(settings: Settings, keys: list[str], catalog: Catalog) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Vectors of the items from the on-disk cache; the encoder is loaded only if some are missing."""
    from xrec.eval.vector_cache import encoded_vectors

    matrix, info = encoded_vectors(settings, [news_of(k, catalog).text for k in keys])
    return dict(zip(keys, matrix, strict=True)), info


def variant_system(default: str, variant: str) -> str:
    """The system name of an A/B variant's scores: ``xrec`` for the first (default) variant."""
    return "xrec" if variant == default else f"xrec[{variant}]"


def summarize(out: ReplayResult, rounds: int, seed: int) -> dict[str, Any]:
    """Means with 95% bootstrap CIs per system, xrec's paired difference to the reference, and each
    further A/B variant's paired difference to the first."""
    n = len(out.metrics["xrec"]["auc"])
    idx = m.bootstrap_indices(n, rounds, seed)
    systems = {s: {k: m.bootstrap_ci(v, idx).to_dict() for k, v in per.items()} for s, per in out.metrics.items()}

    def paired(a: str, b: str) -> dict[str, Any]:
        return {
            k: m.bootstrap_ci(np.asarray(out.metrics[a][k]) - np.asarray(out.metrics[b][k]), idx).to_dict()
            for k in m.METRICS
        }

    variants = {s: paired(s, "xrec") for s in out.metrics if s.startswith("xrec[")}
    result: dict[str, Any] = {
        "systems": systems,
        f"xrec_minus_{REFERENCE.replace('-', '_')}": paired("xrec", REFERENCE),
    }
    if variants:
        result["variants_minus_xrec"] = variants
    return result


def beyond_accuracy(out: ReplayResult, vectors: dict[str, np.ndarray]) -> dict[str, Any]:
    result: dict[str, Any] = {"catalog_size": len(out.pool)}
    for system in LIST_SYSTEMS:
        lists = [lst for lst in out.lists if lst.system == system]
        full = [lst for lst in lists if len(lst.items) >= 2]
        if not lists:
            continue
        result[system] = {
            "lists": len(lists),
            "mean_length": float(np.mean([len(lst.items) for lst in lists])),
            "intra_list_diversity": float(
                np.mean([m.intra_list_diversity(np.vstack([vectors[k] for k in lst.items])) for lst in full])
            )
            if full
            else None,
            "catalog_coverage": m.catalog_coverage([lst.items for lst in lists], len(out.pool)),
            "unfamiliar_language_share": float(
                np.mean([m.unfamiliar_language_share(lst.langs, lst.user_langs) for lst in lists if lst.items])
            ),
            "list_languages": dict(Counter(lang for lst in lists for lang in lst.langs)),
            "hit_rate": float(np.mean([bool(lst.clicked & set(lst.items)) for lst in lists])),
        }
    return result


def ranking_settings(settings: Settings) -> dict[str, Any]:
    """The settings that shape a ranking, echoed in every evaluation report (``xrec eval mind|crosslingual``)."""
    names = (
        "interests_k",
        "interest_threshold",
        "half_life_hours",
        "interest_temperature",
        "negative_weight",
        "language_policy",
        "language_weight",
        "freshness_weight",
        "trending_weight",
        "ctr_weight",
        "ctr_half_life_hours",
        "ctr_prior_impressions",
        "fatigue_weight",
        "mmr_lambda",
        "vector_space",
        "list_length",
        "candidates_per_interest",
        "language_detection",
    )
    return {name: getattr(settings, name) for name in names}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    settings = Settings.from_env()
    data_dir = Path(args.data_dir) if args.data_dir else settings.shared_data(DATA_SET)
    behaviors = Path(args.behaviors) if args.behaviors else data_dir / DEFAULT_BEHAVIORS
    if not data_dir.is_dir():
        raise CommandError(f"data directory {data_dir} not found: pass --data-dir or set XREC_DATA_DIR")
    if args.limit < 0 or args.bootstrap < 1 or args.history_days <= 0:
        raise CommandError("--limit must be ≥ 0, --bootstrap ≥ 1 and --history-days > 0")
    scenario = SCENARIOS[args.scenario]
    catalog = load_news(data_dir)
    impressions = read_behaviors(behaviors)
    selection = select(impressions, catalog, scenario, args.limit)
    if not selection.cases:
        raise CommandError(
            f"no impression of {behaviors} can be scored in scenario {scenario.name} "
            f"(skipped: {dict(selection.skipped) or 'none read'})"
        )
    log.info("%s: %d of %d impressions kept", scenario.name, len(selection.cases), selection.impressions)
    keys = needed_items(selection, impressions, catalog, scenario)
    vectors, encoding = item_vectors(settings, keys, catalog)

    began = time.perf_counter()
    out = asyncio.run(
        replay(
            settings,
            selection,
            impressions,
            catalog,
            scenario,
            vectors,
            int(args.history_days * DAY_MS),
            args.seed,
            with_lists=not args.no_lists,
            with_impressions=not args.no_impressions,
        )
    )
    replay_s = time.perf_counter() - began
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "behaviors": str(behaviors),
        "data_dir": str(data_dir),
        "model": settings.model,
        "settings": ranking_settings(settings),
        "variants": settings.variants or None,
        "impressions": {
            "read": len(impressions),
            "scanned": selection.impressions,
            "kept": len(selection.cases),
            "skipped": dict(selection.skipped),
            "with_earlier_impression_clicks": out.impression_clicks_in_profile,
        },
        "candidates": {
            "kept": selection.candidates_kept,
            "dropped_no_text": selection.candidates_dropped,
            "mean_per_impression": selection.candidates_kept / len(selection.cases),
            "in_own_history": out.candidates_in_own_history,
        },
        "history": {"kept": selection.history_kept, "dropped_no_text": selection.history_dropped},
        "events_replayed": out.events,
        "impression_events_replayed": out.impressions_replayed,
        "scoring": SCORE_NOTE,
        **summarize(out, args.bootstrap, args.seed),
        "beyond_accuracy": beyond_accuracy(out, vectors) if not args.no_lists else None,
        "encoding": encoding,
        "seconds": {"replay": round(replay_s, 2), "total": round(time.perf_counter() - started, 2)},
    }
    if args.plot:
        result["plot"] = write_plot(result, Path(args.plot))
    return result


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------


def _fmt(iv: dict[str, float], signed: bool = False) -> str:
    mean = f"{iv['mean']:+.3f}" if signed else f"{iv['mean']:.3f}"
    return f"{mean} [{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]"


def format_table(result: dict[str, Any]) -> str:
    imp = result["impressions"]
    cands = result["candidates"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in imp["skipped"].items()) or "none"
    lines = [
        f"xrec eval mind — scenario {result['scenario']}: {result['description']}",
        f"behaviors {result['behaviors']}; model {result['model']}",
        f"impressions: {imp['kept']} kept of {imp['scanned']} scanned ({imp['read']} in the file); skipped: {skipped}",
        f"candidates: {cands['kept']} kept ({cands['mean_per_impression']:.1f} per impression), "
        f"{cands['dropped_no_text']} without text in the candidate language",
        "",
        f"{'system':<28}" + "".join(f"{LABELS[name]:<24}" for name in m.METRICS),
    ]
    for system, row in result["systems"].items():
        lines.append(f"{system:<28}" + "".join(f"{_fmt(row[k]):<24}" for k in m.METRICS))
    delta_key = f"xrec_minus_{REFERENCE.replace('-', '_')}"
    lines.append(f"{'xrec − ' + REFERENCE:<28}" + "".join(f"{_fmt(result[delta_key][k], True):<24}" for k in m.METRICS))
    for system, delta in result.get("variants_minus_xrec", {}).items():
        lines.append(f"{system + ' − xrec':<28}" + "".join(f"{_fmt(delta[k], True):<24}" for k in m.METRICS))
    lines.append("(95% bootstrap CIs over impressions; the rows with − are paired differences)")
    beyond = result.get("beyond_accuracy")
    if beyond:
        lines += [
            "",
            f"published top-{result['settings']['list_length']} lists over the pool of {beyond['catalog_size']} shown items:",
            f"{'system':<24}{'lists':>7}{'hit rate':>10}{'diversity':>11}{'coverage':>10}{'unfamiliar-lang':>17}",
        ]
        for system in LIST_SYSTEMS:
            row = beyond.get(system)
            if row:
                div = row["intra_list_diversity"]
                lines.append(
                    f"{system:<24}{row['lists']:>7}{row['hit_rate']:>10.3f}{(f'{div:.3f}' if div is not None else '-'):>11}"
                    f"{row['catalog_coverage']:>10.3f}{row['unfamiliar_language_share']:>17.3f}"
                )
        lines.append(
            "(hit rate: lists holding an item the user clicked in the impression that followed; diversity: mean "
            "pairwise 1 − cos; coverage: share of the pool in any list; unfamiliar-lang: share of items in a "
            "language the user never clicked)"
        )
    enc = result["encoding"]
    lines += [
        "",
        f"{enc['texts']} item texts ({enc['from_cache']} cached, {enc['encoded_now']} encoded in {enc['seconds']:.0f} s, "
        f"{enc.get('backend', '?')}); replay {result['seconds']['replay']:.0f} s; total {result['seconds']['total']:.0f} s",
        result["scoring"],
    ]
    if result.get("plot"):
        lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)


def write_plot(result: dict[str, Any], path: Path) -> str:
    """Grouped bars (one group per metric, one bar per system) with the 95% CIs as error bars."""
    from xrec.plotting import pyplot

    plt = pyplot()
    systems = list(result["systems"])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(systems)
    x = np.arange(len(m.METRICS))
    for i, system in enumerate(systems):
        rows = [result["systems"][system][k] for k in m.METRICS]
        means = np.asarray([r["mean"] for r in rows])
        err = np.asarray([[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]])
        ax.bar(x + (i - (len(systems) - 1) / 2) * width, means, width, yerr=err, capsize=3, label=system)
    ax.set_xticks(x, [LABELS[k] for k in m.METRICS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over impressions (95% CI)")
    ax.set_title(
        f"MIND {result['scenario']} ({result['impressions']['kept']} impressions) — {result['description']}", fontsize=9
    )
    ax.legend(fontsize=8, ncols=len(systems), loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
