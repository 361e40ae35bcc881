"""Real multilingual texts for benchmarks: MIND/xMIND news when the shared data is there, else the
project's own sample sentences (``xrec/data/multilingual_sample.tsv``, written for this project)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The project's sample: 12 sentences, each in 8 languages (package data, so an installed xrec has it).
SAMPLE_NAME = "multilingual_sample.tsv"

#: (file, title column, abstract column) of the English and Mandarin news files.
_NEWS_FILES = (("news_en.tsv", 3, 4), ("news_zh.tsv", 1, 2))


def mind_news(mind_dir: Path, per_file: int) -> list[tuple[str, str]]:
    """(title, abstract) of the first ``per_file`` news of each language file of ``mind_dir``; empty if absent."""
    out: list[tuple[str, str]] = []
    for name, title_col, abstract_col in _NEWS_FILES:
        path = mind_dir / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            next(fh, None)
            for i, line in enumerate(fh):
                if i >= per_file:
                    break
                parts = line.rstrip("\n").split("\t")
                if len(parts) > abstract_col and parts[title_col].strip():
                    out.append((parts[title_col].strip(), parts[abstract_col].strip()))
    return out


def sample_rows() -> list[tuple[str, str, str]]:
    """The sample as (group, lang, text) rows."""
    text = resources.files("xrec.data").joinpath(SAMPLE_NAME).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return [(group, lang, sentence.strip()) for group, lang, sentence in rows]


def sample_sentences() -> list[str]:
    """The sample's sentences (one language per row)."""
    return [sentence for _, _, sentence in sample_rows()]
