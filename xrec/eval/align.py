"""``xrec eval align``: does the encoder put a sentence and its translation next to each other?

On a Tatoeba-format file (``lang idx text eng``: sentences in several languages, each with its English
translation), every sentence of a language block retrieves its nearest English sentence among all
English sentences of that block (xx→en), and every English sentence its nearest sentence in the
language (en→xx). Accuracy@1 per language and direction, and their mean. Both sides get the same
prefix: e5 is trained with "query: " on both sides for symmetric tasks such as bitext mining.

The same retrieval is also measured in xrec's neutral space (``xrec.space``: each sentence minus the
mean vector of its language's sentences in the block), which is how the engine compares texts: it
says whether taking the language identity out keeps translations together.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xrec.errors import CommandError

DATA_FILE = ("tatoeba", "tatoeba_6lang_eng.tsv")  # under XREC_DATA_DIR
HEADER = ["lang", "idx", "text", "eng"]


@dataclass(frozen=True)
class Block:
    lang: str
    texts: list[str]
    english: list[str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        default="",
        help="Tatoeba-format TSV with header 'lang idx text eng' (default: XREC_DATA_DIR/tatoeba/tatoeba_6lang_eng.tsv)",
    )
    parser.add_argument("--limit", type=int, default=0, help="use only the first N pairs of each language (0: all)")
    parser.add_argument(
        "--kind",
        choices=("query", "passage"),
        default="query",
        help="prefix role for both sides (default query: e5's choice for symmetric tasks)",
    )


def read_blocks(path: Path, limit: int = 0) -> list[Block]:
    """Language blocks in file order; lines are tab-separated with no quoting."""
    if not path.is_file():
        raise CommandError(
            f"alignment file {path} not found; pass a Tatoeba-format TSV (header: lang idx text eng), "
            "(by default XREC_DATA_DIR/tatoeba/tatoeba_6lang_eng.tsv)"
        )
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header != HEADER:
            raise CommandError(f"{path}: expected the header {' '.join(HEADER)}, found {' '.join(header)}")
        for lineno, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                raise CommandError(f"{path}:{lineno}: expected 4 tab-separated fields, found {len(parts)}")
            lang, _, text, eng = parts
            texts, english = pairs.setdefault(lang, ([], []))
            if not limit or len(texts) < limit:
                texts.append(text)
                english.append(eng)
    if not pairs:
        raise CommandError(f"{path} holds no sentence pairs")
    return [Block(lang, texts, english) for lang, (texts, english) in pairs.items()]


def accuracy_at_1(sims: np.ndarray, candidates: list[str], gold: list[str]) -> float:
    """Share of rows whose best column holds the gold text; a duplicate of the gold counts as a hit."""
    best = sims.argmax(axis=1)
    return float(np.mean([candidates[j] == g for j, g in zip(best, gold, strict=True)]))


def neutral_pair(xx: np.ndarray, en: np.ndarray, lang: str) -> tuple[np.ndarray, np.ndarray]:
    """Both sides in the neutral space built from this block's sentences (each side its own language)."""
    from xrec.space import LanguageSpace

    space = LanguageSpace(xx.shape[1], min_items=1)
    space.count("block", lang, xx)
    space.count("block", "eng", en)
    view = space.view()
    return view.neutral(xx, [lang] * len(xx)), view.neutral(en, ["eng"] * len(en))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from xrec.config import Settings
    from xrec.encoder import prefixes_for
    from xrec.eval.vector_cache import encoded_vectors

    settings = Settings.from_env()
    path = Path(args.file) if args.file else settings.shared_data(DATA_FILE[0]) / DATA_FILE[1]
    blocks = read_blocks(path, args.limit)
    started = time.perf_counter()
    languages: dict[str, dict[str, float | int]] = {}
    n_texts = 0
    device = "not loaded (all cached)"
    backend = ""
    for block in blocks:
        xx, info_xx = encoded_vectors(settings, block.texts, kind=args.kind)
        en, info_en = encoded_vectors(settings, block.english, kind=args.kind)
        for info in (info_xx, info_en):
            device = info["device"] if not str(info["device"]).startswith("not loaded") else device
            backend = info["backend"]
        n_texts += len(block.texts) + len(block.english)
        sims = xx @ en.T
        nxx, nen = neutral_pair(xx, en, block.lang)
        neutral = nxx @ nen.T
        languages[block.lang] = {
            "pairs": len(block.texts),
            "xx_to_en": accuracy_at_1(sims, block.english, block.english),
            "en_to_xx": accuracy_at_1(sims.T, block.texts, block.texts),
            "xx_to_en_neutral": accuracy_at_1(neutral, block.english, block.english),
            "en_to_xx_neutral": accuracy_at_1(neutral.T, block.texts, block.texts),
        }
    seconds = time.perf_counter() - started
    raw = [row[k] for row in languages.values() for k in ("xx_to_en", "en_to_xx")]
    centred = [row[k] for row in languages.values() for k in ("xx_to_en_neutral", "en_to_xx_neutral")]
    return {
        "file": str(path),
        "model": settings.model,
        "device": device,
        "backend": backend,
        "prefix": getattr(prefixes_for(settings.model), args.kind),
        "languages": languages,
        "mean_accuracy_at_1": float(np.mean(raw)),
        "mean_accuracy_at_1_neutral": float(np.mean(centred)),
        "texts": n_texts,
        "seconds": round(seconds, 2),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"cross-lingual alignment, accuracy@1 — {result['model']} (encoder: {result['device']}, "
        f"{result['backend']}), "
        f"prefix {result['prefix']!r}",
        f"{'lang':<6} {'pairs':>6} {'xx→en':>7} {'en→xx':>7} {'neutral space: xx→en':>22} {'en→xx':>7}",
    ]
    for lang, row in result["languages"].items():
        lines.append(
            f"{lang:<6} {row['pairs']:>6} {row['xx_to_en']:>7.3f} {row['en_to_xx']:>7.3f} "
            f"{row['xx_to_en_neutral']:>22.3f} {row['en_to_xx_neutral']:>7.3f}"
        )
    lines.append(
        f"mean over languages and both directions: {result['mean_accuracy_at_1']:.3f} as encoded, "
        f"{result['mean_accuracy_at_1_neutral']:.3f} in the neutral space"
    )
    lines.append(f"({result['texts']} texts in {result['seconds']:.1f} s; file {result['file']})")
    return "\n".join(lines)
