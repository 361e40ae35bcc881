"""MIND / xMIND files and the evaluation scenarios built on them.

The news files give each news id its text in English (``news_en.tsv``: nid category subcategory title
abstract) and Mandarin (``news_zh.tsv``: nid title abstract); the behaviors file lists impressions
(``impression_id user_id time history impressions``). A scenario says in which language a user's
history is read and in which language the candidates are shown; an impression is kept when its user
has history text in that language and it has, in the candidate language, at least one clicked and
one non-clicked candidate. Everything else is counted with its reason, never dropped silently.

Items are keyed ``nid@lang``: in the cross-lingual scenario a news id can be read in Mandarin in one
user's history and shown in English to another, and a multilingual catalog holds those as two items.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from xrec.errors import CommandError
from xrec.events import ItemUpsert

NEWS_FILES = {"en": "news_en.tsv", "zh": "news_zh.tsv"}
NEWS_HEADERS = {
    "en": ["nid", "category", "subcategory", "title", "abstract"],
    "zh": ["nid", "title", "abstract"],
}
BEHAVIORS_HEADER = ["impression_id", "user_id", "time", "history", "impressions"]
DEFAULT_BEHAVIORS = "behaviors_dev.tsv"
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"  # MIND's "11/12/2019 2:14:46 PM"

SKIP_NO_HISTORY = "no history item with text in the history language"
SKIP_NO_CANDIDATE = "no candidate with text in the candidate language"
SKIP_NO_CLICK = "no clicked candidate with text"
SKIP_NO_NONCLICK = "no non-clicked candidate with text"
SKIP_REASONS = (SKIP_NO_HISTORY, SKIP_NO_CANDIDATE, SKIP_NO_CLICK, SKIP_NO_NONCLICK)


@dataclass(frozen=True)
class News:
    """One news item in one language."""

    nid: str
    lang: str
    title: str
    abstract: str
    category: str = ""

    @property
    def text(self) -> str:
        """Exactly what the stream would encode for this item (title and body as one passage)."""
        return ItemUpsert(item_id=self.nid, title=self.title, body=self.abstract).text


#: lang -> nid -> News
Catalog = Mapping[str, Mapping[str, News]]


@dataclass(frozen=True)
class Impression:
    impression_id: str
    user_id: str
    ts: int  # epoch ms (UTC)
    history: tuple[str, ...]  # news ids, oldest first
    candidates: tuple[str, ...]
    labels: tuple[int, ...]  # 1 clicked, 0 not


def item_key(nid: str, lang: str) -> str:
    """The catalog item id of a news id shown in one language."""
    return f"{nid}@{lang}"


def split_key(key: str) -> tuple[str, str]:
    nid, _, lang = key.rpartition("@")
    return nid, lang


def _read_tsv(path: Path, header: list[str]) -> Iterable[list[str]]:
    """The rows of a MIND-style file: with ``header`` as its first line (the shared data), or without any
    header, as Microsoft publishes MIND (``behaviors.tsv``; ``news.tsv`` has three more fields after the
    abstract, which are left out: a headerless line may have more fields than ``header`` names)."""
    if not path.is_file():
        raise CommandError(f"{path} not found (expected a MIND/xMIND data directory, see ../shared/data/README.md)")
    with path.open(encoding="utf-8-sig") as fh:
        first = fh.readline()
        found = first.rstrip("\n").split("\t")
        headerless = found != header and len(found) >= len(header) and found[0] not in header
        if found != header and not headerless:
            raise CommandError(
                f"{path}: expected the header {' '.join(header)} or no header, found {' '.join(found)[:200]}"
            )
        lines = itertools.chain([first], fh) if headerless else fh
        for lineno, line in enumerate(lines, start=1 if headerless else 2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header) and not (headerless and len(parts) > len(header)):
                raise CommandError(f"{path}:{lineno}: expected {len(header)} tab-separated fields, found {len(parts)}")
            yield parts[: len(header)]


def load_news(data_dir: Path) -> dict[str, dict[str, News]]:
    """Both news files of a data directory; items with an empty title and abstract are left out."""
    catalog: dict[str, dict[str, News]] = {}
    for lang, name in NEWS_FILES.items():
        items: dict[str, News] = {}
        for parts in _read_tsv(data_dir / name, NEWS_HEADERS[lang]):
            row = dict(zip(NEWS_HEADERS[lang], parts, strict=True))
            news = News(row["nid"], lang, row["title"].strip(), row["abstract"].strip(), row.get("category", ""))
            if news.title or news.abstract:
                items[news.nid] = news
        catalog[lang] = items
    return catalog


def parse_time(text: str) -> int:
    """MIND's local-time stamp as epoch ms, read as UTC (only the order and the gaps matter)."""
    try:
        return int(datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=UTC).timestamp() * 1000)
    except ValueError:
        raise CommandError(f"cannot read the time {text!r} (expected like '11/12/2019 2:14:46 PM')") from None


def read_behaviors(path: Path) -> list[Impression]:
    """Impressions in time order (file order among equal times), as the stream would see them."""
    out = []
    for parts in _read_tsv(path, BEHAVIORS_HEADER):
        impression_id, user_id, time_text, history, shown = parts
        candidates, labels = [], []
        for token in shown.split():
            nid, sep, label = token.rpartition("-")
            if not sep or label not in ("0", "1"):
                raise CommandError(f"{path}: impression {impression_id}: cannot read candidate {token!r}")
            candidates.append(nid)
            labels.append(int(label))
        out.append(
            Impression(
                impression_id, user_id, parse_time(time_text), tuple(history.split()), tuple(candidates), tuple(labels)
            )
        )
    out.sort(key=lambda imp: imp.ts)  # stable: ties keep file order
    return out


def stable_choice(nid: str, options: list[str]) -> str:
    """One of ``options`` picked by a hash of the id: the same on every run and machine."""
    digest = hashlib.blake2b(nid.encode(), digest_size=8).digest()
    return sorted(options)[int.from_bytes(digest, "big") % len(options)]


@dataclass(frozen=True)
class Scenario:
    """In which language a history item is read and a candidate is shown (None: not available)."""

    name: str
    description: str
    history_lang: Callable[[str, Catalog], str | None]
    candidate_lang: Callable[[str, Catalog], str | None]


def _fixed(lang: str) -> Callable[[str, Catalog], str | None]:
    def pick(nid: str, catalog: Catalog) -> str | None:
        return lang if nid in catalog.get(lang, {}) else None

    return pick


def _mixed(nid: str, catalog: Catalog) -> str | None:
    available = [lang for lang, items in catalog.items() if nid in items]
    return stable_choice(nid, available) if available else None


SCENARIOS = {
    "zh-zh": Scenario("zh-zh", "history and candidates in Mandarin", _fixed("zh"), _fixed("zh")),
    "zh-en": Scenario(
        "zh-en", "history in Mandarin, candidates in English (cross-lingual)", _fixed("zh"), _fixed("en")
    ),
    "mixed": Scenario(
        "mixed", "every item in one of its available languages, chosen by a stable hash of its id", _mixed, _mixed
    ),
}


@dataclass(frozen=True)
class Case:
    """An impression ready to replay: its history and candidates as catalog item keys."""

    impression: Impression
    history: tuple[str, ...]
    history_positions: tuple[int, ...]  # where each kept history item stood in the full history
    candidates: tuple[str, ...]
    labels: np.ndarray  # int8, aligned with ``candidates``


@dataclass
class Selection:
    """What a scenario keeps of a behaviors file, and why it drops the rest."""

    cases: list[Case]
    impressions: int  # scanned, in time order (all of them unless a limit stopped the scan)
    skipped: Counter[str] = field(default_factory=Counter)
    candidates_kept: int = 0
    candidates_dropped: int = 0  # candidates of kept impressions without text in the candidate language
    history_kept: int = 0
    history_dropped: int = 0


def shown_items(imp: Impression, catalog: Catalog, scenario: Scenario) -> list[tuple[str, int]]:
    """The impression's candidates that have text in the candidate language, as (item key, label)."""
    out = []
    for nid, label in zip(imp.candidates, imp.labels, strict=True):
        lang = scenario.candidate_lang(nid, catalog)
        if lang:
            out.append((item_key(nid, lang), label))
    return out


def select(impressions: list[Impression], catalog: Catalog, scenario: Scenario, limit: int = 0) -> Selection:
    """The impressions a scenario can score (the first ``limit`` if given), with what was dropped and why."""
    selection = Selection(cases=[], impressions=0)
    for imp in impressions:
        if limit and len(selection.cases) >= limit:
            break
        selection.impressions += 1
        history = [(pos, nid, scenario.history_lang(nid, catalog)) for pos, nid in enumerate(imp.history)]
        hist = [(pos, item_key(nid, lang)) for pos, nid, lang in history if lang]
        kept = shown_items(imp, catalog, scenario)
        reason = None
        if not hist:
            reason = SKIP_NO_HISTORY
        elif not kept:
            reason = SKIP_NO_CANDIDATE
        elif not any(y for _, y in kept):
            reason = SKIP_NO_CLICK
        elif all(y for _, y in kept):
            reason = SKIP_NO_NONCLICK
        if reason:
            selection.skipped[reason] += 1
            continue
        selection.cases.append(
            Case(
                impression=imp,
                history=tuple(k for _, k in hist),
                history_positions=tuple(p for p, _ in hist),
                candidates=tuple(k for k, _ in kept),
                labels=np.asarray([y for _, y in kept], np.int8),
            )
        )
        selection.candidates_kept += len(kept)
        selection.candidates_dropped += len(imp.candidates) - len(kept)
        selection.history_kept += len(hist)
        selection.history_dropped += len(imp.history) - len(hist)
    return selection


def news_of(key: str, catalog: Catalog) -> News:
    nid, lang = split_key(key)
    return catalog[lang][nid]
