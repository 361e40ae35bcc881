"""Topic-labelled multilingual catalogs for ``xrec eval crosslingual``: what a reader's list is judged by.

Two sources, both real data that the project did not write:

- **Bilingual MIND** (``bilingual_mind``): every MIND news that has both its English text
  (``news_en.tsv``) and its Mandarin translation (xMIND, ``news_zh.tsv``) becomes two items, one per
  language, sharing a ``group`` (the news id): the same news exists in both languages, so a list that
  never crosses the boundary cannot be explained by the catalog. Topics are MIND's category and
  subcategory.
- **Any topic-labelled TSV** (``topic_tsv``) in the MasakhaNEWS layout: a header, then
  ``id lang category headline text`` tab-separated. Each row is one item; it has no translation.

An item's text is what a producer would send (title and body), encoded as the stream encodes it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xrec.errors import CommandError
from xrec.events import ItemUpsert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicItem:
    item_id: str
    lang: str
    category: str
    subcategory: str  # "" where the catalog has none
    group: str  # items sharing a group are translations of one another
    title: str
    body: str

    @property
    def text(self) -> str:
        return ItemUpsert(item_id=self.item_id, title=self.title, body=self.body).text


@dataclass(frozen=True)
class TopicCatalog:
    name: str
    source: str
    items: list[TopicItem]

    @property
    def has_subcategories(self) -> bool:
        return any(item.subcategory for item in self.items)

    @property
    def has_translations(self) -> bool:
        return len({item.group for item in self.items}) < len(self.items)


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Rows of a tab-separated file with a header naming at least ``columns`` (no quoting). A byte-order
    mark, which spreadsheets and other tools write, is read as if absent; a line
    with another number of fields than the header is left out and counted in a warning."""
    if not path.is_file():
        raise CommandError(f"{path} not found (see ../shared/data/README.md for the data)")
    skipped: list[int] = []
    with path.open(encoding="utf-8-sig") as fh:  # Windows line ends are read as "\n" too
        header = fh.readline().rstrip("\n").split("\t")
        missing = [c for c in columns if c not in header]
        if missing:
            raise CommandError(f"{path}: the header lacks {', '.join(missing)} (it has {', '.join(header)})")
        for number, line in enumerate(fh, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) == len(header):
                yield dict(zip(header, parts, strict=True))
            elif line.strip():
                skipped.append(number)
    if skipped:
        log.warning(
            "%s: left out %d lines whose number of tab-separated fields is not the header's %d (first: line %d)",
            path,
            len(skipped),
            len(header),
            skipped[0],
        )


def bilingual_mind(data_dir: Path) -> TopicCatalog:
    """The MIND news with both an English and a Mandarin text (title, or title and abstract)."""
    english = {r["nid"]: r for r in _rows(data_dir / "news_en.tsv", ("nid", "category", "subcategory", "title"))}
    items: list[TopicItem] = []
    for row in _rows(data_dir / "news_zh.tsv", ("nid", "title", "abstract")):
        en = english.get(row["nid"])
        if en is None or not en["title"].strip() or not (row["title"].strip() or row["abstract"].strip()):
            continue
        for lang, src in (("en", en), ("zh", row)):
            items.append(
                TopicItem(
                    item_id=f"{row['nid']}@{lang}",
                    lang=lang,
                    category=en["category"],
                    subcategory=en["subcategory"],
                    group=row["nid"],
                    title=src["title"].strip(),
                    body=src.get("abstract", "").strip(),
                )
            )
    if not items:
        raise CommandError(f"{data_dir}: no news has both an English and a Mandarin text")
    return TopicCatalog("bilingual MIND (en + zh)", str(data_dir), items)


def topic_tsv(path: Path) -> TopicCatalog:
    """A catalog in the MasakhaNEWS layout: ``id lang category headline text``."""
    items = [
        TopicItem(
            item_id=r["id"],
            lang=r["lang"],
            category=r["category"],
            subcategory="",
            group=r["id"],
            title=r["headline"].strip(),
            body=r["text"].strip(),
        )
        for r in _rows(path, ("id", "lang", "category", "headline", "text"))
        if r["headline"].strip() or r["text"].strip()
    ]
    if not items:
        raise CommandError(f"{path}: no items")
    twice = [item_id for item_id, n in Counter(it.item_id for it in items).items() if n > 1]
    if twice:
        raise CommandError(
            f"{path}: {len(twice)} ids appear more than once (first: {twice[0]!r}); each item needs its own id"
        )
    return TopicCatalog(path.stem, str(path), items)
