"""Real multilingual texts for benchmarks: MIND/xMIND news when the shared data is there, else the
project's own sample sentences (tests/fixtures/multilingual_sample.tsv, written for this project)."""

from __future__ import annotations

from pathlib import Path

MIND_DIR = Path("..") / "shared" / "data" / "mind-xmind"
SAMPLE_FILE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "multilingual_sample.tsv"

#: (file, title column, abstract column) of the English and Mandarin news files.
_NEWS_FILES = (("news_en.tsv", 3, 4), ("news_zh.tsv", 1, 2))


def mind_news(per_file: int) -> list[tuple[str, str]]:
    """(title, abstract) of the first ``per_file`` news of each language file; empty if absent."""
    out: list[tuple[str, str]] = []
    for name, title_col, abstract_col in _NEWS_FILES:
        path = MIND_DIR / name
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


def sample_sentences() -> list[str]:
    """The sample's sentences (one language per row); empty if the file is absent."""
    if not SAMPLE_FILE.is_file():
        return []
    return [line.split("\t")[2].strip() for line in SAMPLE_FILE.read_text(encoding="utf-8").splitlines()[1:]]
