"""``xrec eval crosslingual``: does a reader of one language get the best items of every language?

Readers are replayed through the engine a worker runs (``Recommender``: the real store, profiles,
neutral space, ranking and MMR), on a catalog whose topics are known and that the project did not
write (``xrec.eval.topic_catalog``): the bilingual MIND news (each news in English and in Mandarin) or
any topic-labelled multilingual TSV such as MasakhaNEWS (16 languages, most of them low-resource).

Each reader reads one language: the same number of readers per language of the catalog. A reader
picks an item of their language at random (so a topic is read as often as that language writes
about it), then clicks ``--clicks`` − 1 more items of the same (sub)category and language. The list
the engine publishes after those clicks is judged:

- **category / subcategory P@10**: share of the first ten items on the reader's (sub)category;
- **other-language share**: share of the ten in a language other than the reader's;
- **translation first** (catalogs with translations): how often the top-scored item in another
  language is the translation of a news the reader clicked: a language-neutral space puts it there;
- **language mix**: each language's share of all list slots, next to its share of the catalog;
- **diversity** (mean pairwise 1 − cosine within a list, on the language-centred vectors, so the same
  subject in two languages counts as similar) and **coverage** (share of the catalog in some list):
  what MMR and trending buy, to set against what they cost in precision.

The translations of the clicked news are left out of every list before it is judged: finding the
same news again in the other language is neither a topic hit nor a new item. The two baselines see
the same readers and catalog: cosine to the mean of the clicked vectors as encoded ("raw"), and the
same after subtracting each language's mean item vector from every vector ("centred"). Intervals are
95% bootstrap intervals over readers; the paired rows are bootstraps of per-reader differences.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
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
from xrec.eval.mind import ranking_settings
from xrec.eval.topic_catalog import TopicCatalog, TopicItem, bilingual_mind, topic_tsv

log = logging.getLogger(__name__)

SYSTEMS = ("raw mean-of-history", "centred mean-of-history", "xrec")
BASELINES = SYSTEMS[:2]
LIST_LENGTH = 10
T0 = 1_735_689_600_000  # 2025-01-01: the replay's clock; items are a day older


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", default="", help="MIND/xMIND folder for the bilingual catalog (default: XREC_DATA_DIR/mind-xmind)"
    )
    parser.add_argument(
        "--catalog",
        default="",
        help="a topic-labelled TSV instead (header 'id lang category headline text', e.g. MasakhaNEWS news_dev.tsv)",
    )
    parser.add_argument("--readers", type=int, default=480, help="readers in all, split evenly over languages")
    parser.add_argument("--clicks", type=int, default=3, help="items each reader clicks (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the readers and of the bootstrap")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--plot", default="", help="write per-language bars (PNG)")


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    user_id: str
    lang: str
    clicks: tuple[int, ...]  # item indexes, the first one the seed


def sample_readers(items: list[TopicItem], total: int, clicks: int, seed: int) -> list[Reader]:
    """``total`` readers split evenly over languages (rounded up); topics as often as the language has them."""
    rng = np.random.default_rng(seed)
    topic = [it.subcategory or it.category for it in items]
    by_topic: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_topic[(topic[i], it.lang)].append(i)
    langs = sorted({it.lang for it in items})
    per_lang = max(1, math.ceil(total / len(langs)))
    readers: list[Reader] = []
    for lang in langs:
        seeds = [i for i, it in enumerate(items) if it.lang == lang and len(by_topic[(topic[i], lang)]) >= clicks]
        if not seeds:
            log.warning("language %s has no topic with %d items: no reader", lang, clicks)
            continue
        for _ in range(per_lang):
            first = seeds[int(rng.integers(len(seeds)))]
            rest = [j for j in by_topic[(topic[first], lang)] if j != first]
            more = rng.choice(rest, clicks - 1, replace=False).tolist() if clicks > 1 else []
            readers.append(Reader(f"reader-{len(readers)}", lang, (first, *more)))
    return readers


# --------------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------------


@dataclass
class Judged:
    """Per reader and system: the judged list (item indexes) and its measures."""

    lists: dict[str, list[list[int]]] = field(default_factory=lambda: {s: [] for s in SYSTEMS})
    measures: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {s: defaultdict(list) for s in SYSTEMS})


async def replay(
    settings: Settings, catalog: TopicCatalog, vectors: np.ndarray, readers: list[Reader], clicks: int
) -> Judged:
    from xrec.events import Interaction, ItemUpsert
    from xrec.pipeline import Recommender
    from xrec.ranking import Candidates
    from xrec.store import open_store

    items = catalog.items
    index = {it.item_id: i for i, it in enumerate(items)}
    langs = np.asarray([it.lang for it in items])
    centred = _centred(vectors, langs)
    centred_unit = _unit_rows(centred)
    out = Judged()
    with tempfile.TemporaryDirectory(prefix="xrec-eval-xl-") as tmp:
        engine_settings = settings.replace(store_path=tmp, list_length=LIST_LENGTH + clicks)
        store = open_store(engine_settings, dim=vectors.shape[1])
        rec = Recommender(engine_settings, store, encoder=None, dim=vectors.shape[1], clock_ms=lambda: float(T0))
        try:
            await rec.start()
            for start in range(0, len(items), 256):
                part = items[start : start + 256]
                indexed = await rec.handle_items(
                    [
                        ItemUpsert(
                            item_id=it.item_id,
                            title=it.title,
                            body=it.body,
                            lang=it.lang,
                            category=it.category,
                            ts=T0 - 86_400_000,
                            vector=vectors[start + j],
                        )
                        for j, it in enumerate(part)
                    ]
                )
                if indexed.rejected:
                    raise CommandError(f"the store refused {len(indexed.rejected)} items: {indexed.rejected[0].error}")
            everything = Candidates(
                ids=[it.item_id for it in items],
                vectors=vectors,
                langs=[it.lang for it in items],
                ts=np.full(len(items), T0 - 86_400_000, np.int64),
            )
            profiles: dict[bytes, bytes] = {}
            for n, reader in enumerate(readers):
                now = T0 + n * 60_000
                events = [
                    Interaction(f"{reader.user_id}:{k}", reader.user_id, items[i].item_id, "click", now + k)
                    for k, i in enumerate(reader.clicks)
                ]
                result = await rec.handle_events(events, profiles)
                if len(result.processed) != len(events) or len(result.lists) != 1:
                    raise CommandError(f"the engine did not take {reader.user_id}'s clicks")
                served = [index[x.item_id] for x in result.lists[0].items]
                xrec_scores = await rec.relevance(rec.load_profile(profiles, reader.user_id), everything, now)
                scores = {
                    "raw mean-of-history": vectors @ _unit(vectors[list(reader.clicks)].mean(axis=0)),
                    "centred mean-of-history": centred_unit @ _unit(centred[list(reader.clicks)].mean(axis=0)),
                    "xrec": xrec_scores,
                }
                _judge(out, catalog, reader, served, scores, centred_unit)
        finally:
            await store.close()
    return out


def _judge(
    out: Judged,
    catalog: TopicCatalog,
    reader: Reader,
    served: list[int],
    scores: dict[str, np.ndarray],
    centred_unit: np.ndarray,
) -> None:
    items = catalog.items
    groups = {items[i].group for i in reader.clicks}
    left_out = {j for j, it in enumerate(items) if it.group in groups}  # the clicked news and their translations
    seed = items[reader.clicks[0]]
    for system, score in scores.items():
        if system == "xrec":
            ranked = [j for j in served if j not in left_out][:LIST_LENGTH]
        else:
            s = score.copy()
            s[list(left_out)] = -np.inf
            ranked = np.argsort(-s, kind="stable")[:LIST_LENGTH].tolist()
        out.lists[system].append(ranked)
        got = out.measures[system]
        got["category_p10"].append(sum(items[j].category == seed.category for j in ranked) / LIST_LENGTH)
        if catalog.has_subcategories:
            got["subcategory_p10"].append(sum(items[j].subcategory == seed.subcategory for j in ranked) / LIST_LENGTH)
        got["other_language_share"].append(sum(items[j].lang != reader.lang for j in ranked) / max(1, len(ranked)))
        got["diversity"].append(m.intra_list_diversity(centred_unit[ranked]) if len(ranked) > 1 else 0.0)
        if catalog.has_translations:
            other = [j for j in range(len(items)) if items[j].lang != reader.lang]
            best = other[int(np.argmax(score[other]))]
            got["translation_first"].append(float(items[best].group in groups))


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _centred(vectors: np.ndarray, langs: np.ndarray) -> np.ndarray:
    """Every vector minus the mean vector of its language's items (the baseline's whole-catalog statistics)."""
    out = vectors.astype(np.float64).copy()
    for lang in np.unique(langs):
        rows = langs == lang
        out[rows] -= out[rows].mean(axis=0)
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------


def summarize(judged: Judged, readers: list[Reader], catalog: TopicCatalog, rounds: int, seed: int) -> dict[str, Any]:
    idx = m.bootstrap_indices(len(readers), rounds, seed)
    systems = {
        s: {name: m.bootstrap_ci(values, idx).to_dict() for name, values in judged.measures[s].items()} for s in SYSTEMS
    }
    paired = {
        f"xrec − {base}": {
            name: m.bootstrap_ci(np.asarray(values) - np.asarray(judged.measures[base][name]), idx).to_dict()
            for name, values in judged.measures["xrec"].items()
        }
        for base in BASELINES
    }
    reader_langs = np.asarray([r.lang for r in readers])
    per_language: dict[str, Any] = {}
    for lang in sorted({r.lang for r in readers}):
        rows = np.flatnonzero(reader_langs == lang)
        sub = m.bootstrap_indices(len(rows), rounds, seed)
        per_language[lang] = {"readers": len(rows)} | {
            s: {
                name: m.bootstrap_ci(np.asarray(values)[rows], sub).to_dict()
                for name, values in judged.measures[s].items()
                if name in ("category_p10", "other_language_share")
            }
            for s in SYSTEMS
        }
    worst = {
        s: min(((lang, row[s]["category_p10"]["mean"]) for lang, row in per_language.items()), key=lambda kv: kv[1])
        for s in SYSTEMS
    }
    catalog_mix = Counter(it.lang for it in catalog.items)
    mix: dict[str, Any] = {"catalog": {lang: n / len(catalog.items) for lang, n in sorted(catalog_mix.items())}}
    for s in SYSTEMS:
        slots = Counter(catalog.items[j].lang for lst in judged.lists[s] for j in lst)
        total = sum(slots.values()) or 1
        mix[s] = {lang: slots.get(lang, 0) / total for lang in mix["catalog"]}
    coverage = {s: len({j for lst in judged.lists[s] for j in lst}) / len(catalog.items) for s in SYSTEMS}
    return {
        "systems": systems,
        "coverage": coverage,
        "paired": paired,
        "per_language": per_language,
        "worst_language": {s: {"lang": lang, "category_p10": value} for s, (lang, value) in worst.items()},
        "language_mix": mix,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from xrec.eval.vector_cache import encoded_vectors

    started = time.perf_counter()
    settings = Settings.from_env()
    if args.readers < 1 or args.clicks < 1 or args.bootstrap < 1:
        raise CommandError("--readers, --clicks and --bootstrap must be at least 1")
    mind_dir = Path(args.data_dir) if args.data_dir else settings.shared_data("mind-xmind")
    catalog = topic_tsv(Path(args.catalog)) if args.catalog else bilingual_mind(mind_dir)
    readers = sample_readers(catalog.items, args.readers, args.clicks, args.seed)
    if not readers:
        raise CommandError(f"{catalog.source}: no language has a topic with {args.clicks} items to read")
    vectors, encoding = encoded_vectors(settings, [it.text for it in catalog.items])
    began = time.perf_counter()
    judged = asyncio.run(replay(settings, catalog, vectors, readers, args.clicks))
    result: dict[str, Any] = {
        "catalog": {
            "name": catalog.name,
            "source": catalog.source,
            "items": len(catalog.items),
            "languages": dict(sorted(Counter(it.lang for it in catalog.items).items())),
            "with_translations": catalog.has_translations,
        },
        "readers": len(readers),
        "clicks_per_reader": args.clicks,
        "list_length": LIST_LENGTH,
        "model": settings.model,
        "settings": ranking_settings(settings),
        **summarize(judged, readers, catalog, args.bootstrap, args.seed),
        "encoding": encoding,
        "seconds": {"replay": round(time.perf_counter() - began, 2), "total": round(time.perf_counter() - started, 2)},
    }
    if args.plot:
        result["plot"] = write_plot(result, Path(args.plot))
    return result


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------

MEASURES = {
    "category_p10": "category P@10",
    "subcategory_p10": "subcat. P@10",
    "other_language_share": "other-language",
    "translation_first": "translation 1st",
    "diversity": "diversity",
}


def _fmt(iv: dict[str, float] | None, signed: bool = False) -> str:
    if iv is None:
        return "-"
    mean = f"{iv['mean']:+.3f}" if signed else f"{iv['mean']:.3f}"
    return f"{mean} [{iv['ci_low']:.2f}, {iv['ci_high']:.2f}]"


def format_table(result: dict[str, Any]) -> str:
    cat = result["catalog"]
    measures = [k for k in MEASURES if k in result["systems"]["xrec"]]
    langs = ", ".join(f"{lang} {n}" for lang, n in cat["languages"].items())
    lines = [
        f"xrec eval crosslingual — {cat['name']} ({cat['items']} items: {langs})",
        f"{result['readers']} readers, {result['clicks_per_reader']} clicks each; model {result['model']}",
        "",
        f"{'system':<34}" + "".join(f"{MEASURES[k]:<22}" for k in measures),
    ]
    for system, row in result["systems"].items():
        lines.append(
            f"{system:<34}"
            + "".join(f"{_fmt(row.get(k)):<22}" for k in measures)
            + f"coverage {result['coverage'][system]:.3f}"
        )
    for name, row in result["paired"].items():
        lines.append(f"{name:<34}" + "".join(f"{_fmt(row.get(k), True):<22}" for k in measures))
    lines += ["", f"{'reader language':<16}{'readers':>8}" + "".join(f"{s:>26}" for s in SYSTEMS)]
    for lang, row in result["per_language"].items():
        cells = "".join(
            f"{row[s]['category_p10']['mean']:>14.3f} ({row[s]['other_language_share']['mean']:.2f} other)"
            for s in SYSTEMS
        )
        lines.append(f"{lang:<16}{row['readers']:>8}{cells}")
    worst = result["worst_language"]
    lines.append(
        "worst language (category P@10): "
        + "; ".join(f"{s} {w['lang']} {w['category_p10']:.3f}" for s, w in worst.items())
    )
    mix = result["language_mix"]
    lines.append(
        "language mix of list slots (catalog → xrec): "
        + ", ".join(f"{lang} {mix['catalog'][lang]:.2f}→{mix['xrec'][lang]:.2f}" for lang in mix["catalog"])
    )
    enc = result["encoding"]
    lines += [
        "",
        f"{enc['texts']} texts ({enc['from_cache']} cached, {enc['encoded_now']} encoded in {enc['seconds']:.0f} s, "
        f"{enc.get('backend', '?')}); replay {result['seconds']['replay']:.0f} s; total {result['seconds']['total']:.0f} s",
        "(95% bootstrap intervals over readers; the 'xrec −' rows are paired; the clicked news' translations are "
        "left out of every list)",
    ]
    if result.get("plot"):
        lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)


def write_plot(result: dict[str, Any], path: Path) -> str:
    """Category P@10 per reader language, one bar per system, with the other-language share marked."""
    from xrec.plotting import pyplot

    plt = pyplot()
    langs = list(result["per_language"])
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.6 * len(langs) + 3), 6), sharex=True)
    width = 0.8 / len(SYSTEMS)
    x = np.arange(len(langs))
    for ax, measure, label in (
        (axes[0], "category_p10", "category P@10"),
        (axes[1], "other_language_share", "other-language share"),
    ):
        for i, system in enumerate(SYSTEMS):
            rows = [result["per_language"][lang][system][measure] for lang in langs]
            means = np.asarray([r["mean"] for r in rows])
            err = np.asarray([[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]])
            ax.bar(x + (i - (len(SYSTEMS) - 1) / 2) * width, means, width, yerr=err, capsize=2, label=system)
        ax.set_ylim(0, 1)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncols=len(SYSTEMS), loc="lower right")
    axes[0].set_title(f"{result['catalog']['name']}: {result['readers']} readers by their language", fontsize=9)
    axes[1].set_xticks(x, langs)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
