"""The real default model puts a sentence and its translations together, across scripts.

The sample (xrec/data/multilingual_sample.tsv) holds 12 topics, each written in 8 languages
(Latin, Cyrillic, Han, Kana and Arabic scripts); chance level for the retrieval checks is 1/12.
Every check runs on both encoder backends, PyTorch and OpenVINO.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from xrec.config import Settings
from xrec.encoder import TextEncoder
from xrec.modelhub import ModelUnavailableError, prepare_default_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[2] / "xrec" / "data" / "multilingual_sample.tsv"


def _encoder(backend: str) -> TextEncoder:
    settings = Settings.from_env(encoder_backend=backend, device="cpu")
    try:
        prepare_default_model(settings)
    except ModelUnavailableError as exc:
        pytest.skip(f"cannot prepare the default model here: {exc}")
    return TextEncoder(settings=settings)


@pytest.fixture(scope="module", params=["torch", "openvino"])
def encoder(request: pytest.FixtureRequest) -> TextEncoder:
    return _encoder(request.param)


def test_openvino_gives_the_vectors_pytorch_gives_on_every_language_of_the_sample(sample) -> None:  # type: ignore[no-untyped-def]
    _, langs, texts = sample
    reference = _encoder("torch").encode(texts)
    openvino = _encoder("openvino")
    cosine = (openvino.encode(texts) * reference).sum(axis=1)
    assert openvino.backend == "openvino"
    assert cosine.mean() >= 0.99
    for lang in sorted(set(langs)):
        assert cosine[langs == lang].min() >= 0.98, lang


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rows = [line.split("\t") for line in SAMPLE.read_text(encoding="utf-8").splitlines()[1:]]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), [r[2] for r in rows]


def test_every_language_pair_retrieves_the_translation_first(encoder: TextEncoder, sample) -> None:  # type: ignore[no-untyped-def]
    groups, langs, texts = sample
    vectors = encoder.encode(texts, kind="query")
    misses = []
    for a, b in itertools.permutations(sorted(set(langs)), 2):
        ia, ib = np.flatnonzero(langs == a), np.flatnonzero(langs == b)
        best = (vectors[ia] @ vectors[ib].T).argmax(axis=1)
        accuracy = float(np.mean(groups[ib][best] == groups[ia]))
        if accuracy < 11 / 12:
            misses.append((a, b, accuracy))
    assert misses == []


def test_a_review_in_one_language_finds_items_written_in_others(encoder: TextEncoder, sample) -> None:  # type: ignore[no-untyped-def]
    groups, langs, texts = sample
    queries = encoder.encode(texts, kind="query")  # user/review text
    items = encoder.encode(texts, kind="passage")  # catalog items
    sims = queries @ items.T
    sims[langs[:, None] == langs[None, :]] = -np.inf  # only items in another language count
    accuracy = float(np.mean(groups[sims.argmax(axis=1)] == groups))
    assert accuracy >= 0.95


def test_translations_are_much_closer_than_unrelated_sentences(encoder: TextEncoder, sample) -> None:  # type: ignore[no-untyped-def]
    groups, langs, texts = sample
    vectors = encoder.encode(texts, kind="query")
    sims = vectors @ vectors.T
    other_lang = langs[:, None] != langs[None, :]
    same_group = groups[:, None] == groups[None, :]
    translations = sims[other_lang & same_group].mean()
    unrelated = sims[other_lang & ~same_group].mean()
    assert translations - unrelated > 0.05


TATOEBA = Settings.from_env().shared_data("tatoeba") / "tatoeba_6lang_eng.tsv"


@pytest.mark.skipif(not TATOEBA.is_file(), reason=f"{TATOEBA} is not present (set XREC_DATA_DIR)")
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_eval_align_retrieves_real_tatoeba_translations_in_both_directions(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    monkeypatch.setenv("XREC_ENCODER_BACKEND", backend)
    from xrec.eval import align as eval_align

    result = eval_align.run(argparse.Namespace(file=str(TATOEBA), limit=40, kind="query"))
    assert set(result["languages"]) == {"deu", "fra", "spa", "ita", "jpn", "cmn"}
    assert all(row["pairs"] == 40 for row in result["languages"].values())
    assert result["mean_accuracy_at_1"] >= 0.88  # among 40 candidates; chance is 0.025
    table = eval_align.format_table(result)
    assert all(f"\n{lang} " in table for lang in result["languages"])
    assert f"{result['mean_accuracy_at_1']:.3f}" in table


def test_eval_align_names_a_missing_file_in_one_line(tmp_path: Path) -> None:
    import argparse

    from xrec.errors import CommandError
    from xrec.eval import align as eval_align

    with pytest.raises(CommandError, match="not found"):
        eval_align.run(argparse.Namespace(file=str(tmp_path / "missing.tsv"), limit=0, kind="query"))
