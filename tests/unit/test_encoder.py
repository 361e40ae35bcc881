"""TextEncoder on a tiny randomly initialized BERT built in a temp dir (no downloads)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xrec.config import Settings
from xrec.encoder import (
    DeviceUnavailableError,
    Prefixes,
    TextEncoder,
    choose_device,
    choose_dtype,
    plan_batches,
    prefixes_for,
)

pytestmark = pytest.mark.unit

WORDS = [f"w{i}" for i in range(200)] + ["query", "passage", ":"]


def build_tiny_bert(path: Path) -> Path:
    """A 2-layer, 32-wide BERT with a word-level tokenizer: loads through AutoModel/AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128, **specials}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def make_encoder(path: Path, prefixes: Prefixes | None = None, **overrides: Any) -> TextEncoder:
    settings = Settings.from_env({}, device="cpu", **overrides)
    return TextEncoder(path, settings=settings, prefixes=prefixes)


def random_texts(n: int, seed: int = 0, max_words: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[:200]) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


class PassRecorder:
    """Forward pre-hook: the shape of every batch the model runs and the thread that runs it."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.threads: list[str] = []
        self.handle = encoder.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        self.threads.append(threading.current_thread().name)

    def close(self) -> None:
        self.handle.remove()


def test_vectors_are_float32_unit_length_with_the_models_dimension(tiny_model_dir: Path) -> None:
    enc = make_encoder(tiny_model_dir)
    out = enc.encode(random_texts(20))
    assert enc.dim == 32
    assert out.shape == (20, 32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_an_empty_input_gives_an_empty_matrix(tiny_model_dir: Path) -> None:
    out = make_encoder(tiny_model_dir).encode([])
    assert out.shape == (0, 32)


def test_length_sorting_inside_does_not_change_the_order_of_results(tiny_model_dir: Path) -> None:
    enc = make_encoder(tiny_model_dir, token_budget=64)
    texts = random_texts(40, seed=1)
    together = enc.encode(texts)
    one_by_one = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    # and the texts really differ, so a permutation would have been caught
    assert np.abs(together[0] - together[1]).max() > 1e-3


def test_every_forward_pass_stays_within_the_token_budget(tiny_model_dir: Path) -> None:
    enc = make_encoder(tiny_model_dir, token_budget=100)
    recorder = PassRecorder(enc)
    texts = random_texts(60, seed=2)
    enc.encode(texts)
    recorder.close()
    assert len(recorder.shapes) > 1
    assert all(rows * width <= 100 for rows, width in recorder.shapes)
    assert sum(rows for rows, _ in recorder.shapes) == len(texts)
    assert enc.stats.max_padded_tokens <= 100


def test_length_sorted_batches_keep_padding_small(tiny_model_dir: Path) -> None:
    enc = make_encoder(tiny_model_dir, token_budget=256)
    enc.encode(random_texts(200, seed=3))
    assert enc.stats.padded_tokens < 1.2 * enc.stats.tokens


def test_long_texts_are_truncated_to_max_tokens(tiny_model_dir: Path) -> None:
    enc = make_encoder(tiny_model_dir, max_tokens=16)
    recorder = PassRecorder(enc)
    enc.encode([" ".join(["w1"] * 500), "w2 w3"])
    recorder.close()
    assert max(width for _, width in recorder.shapes) == 16


def test_plan_batches_fills_each_pass_up_to_the_budget_and_gives_oversized_inputs_their_own() -> None:
    assert plan_batches([10, 10, 9, 9, 8, 8], 20) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert plan_batches([4, 4, 4, 4, 4, 4], 20) == [slice(0, 5), slice(5, 6)]
    assert plan_batches([50, 3], 20) == [slice(0, 1), slice(1, 2)]
    assert plan_batches([], 20) == []


def test_plan_batches_closes_a_pass_early_when_lengths_drop_far_below_its_longest() -> None:
    # 10 tokens fill a quarter of the budget, and 4 < 0.8 × 10: a new pass instead of padding 4 → 10
    assert plan_batches([10, 4, 4, 4], 40) == [slice(0, 1), slice(1, 4)]
    # below a quarter of the budget the pass keeps filling even with short inputs
    assert plan_batches([10, 4, 4, 4], 200) == [slice(0, 4)]


def test_query_and_passage_prefixes_are_put_before_the_text(tiny_model_dir: Path) -> None:
    prefixed = make_encoder(tiny_model_dir, prefixes=Prefixes(query="query : ", passage="passage : "))
    plain = make_encoder(tiny_model_dir, prefixes=Prefixes())
    text = "w5 w6 w7"
    np.testing.assert_allclose(prefixed.encode([text], kind="query"), plain.encode([f"query : {text}"]), atol=1e-6)
    np.testing.assert_allclose(prefixed.encode([text], kind="passage"), plain.encode([f"passage : {text}"]), atol=1e-6)
    assert prefixed.token_lengths([text], kind="query") == [2 + 2 + 3]


def test_e5_family_models_get_query_and_passage_prefixes_and_others_none() -> None:
    e5 = Prefixes(query="query: ", passage="passage: ")
    assert prefixes_for("intfloat/multilingual-e5-small") == e5
    assert prefixes_for("/home/me/.cache/xrec/models/multilingual-e5-small") == e5
    assert prefixes_for("intfloat/e5-base-v2") == e5
    assert prefixes_for("sentence-transformers/LaBSE") == Prefixes()
    assert prefixes_for("someone/bert-e50") == Prefixes()


def test_an_unknown_kind_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        make_encoder(tiny_model_dir).encode(["w1"], kind="document")  # type: ignore[arg-type]


def test_cpu_runs_in_float32() -> None:
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_forcing_cuda_without_a_gpu_is_an_error_not_a_silent_fallback(tiny_model_dir: Path) -> None:
    with pytest.raises(DeviceUnavailableError, match="no CUDA GPU"):
        TextEncoder(tiny_model_dir, settings=Settings.from_env({}, device="cuda"))


async def test_the_event_loop_keeps_running_while_a_large_batch_encodes(tiny_model_dir: Path) -> None:
    enc = make_encoder(tiny_model_dir, token_budget=512)
    recorder = PassRecorder(enc)
    texts = random_texts(3000, seed=5, max_words=60)
    ticks_during = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks_during
        while not done:
            await asyncio.sleep(0.001)
            if not done:
                ticks_during += 1

    tick_task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let the ticker start
    out = await enc.encode_many(texts)
    done = True
    await tick_task
    recorder.close()
    enc.close()
    assert out.shape == (3000, 32)
    assert len(recorder.shapes) > 10  # a real, multi-pass workload
    assert set(recorder.threads) == {"xrec-encoder_0"}  # never the loop's thread
    assert ticks_during >= 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_bench_encoder_on_cuda_says_plainly_that_no_gpu_is_present() -> None:
    import argparse

    from xrec.bench import encoder as bench_encoder
    from xrec.errors import XrecError

    args = argparse.Namespace(device="cuda", texts=10, baseline_texts=5, seed=0, data_dir=None)
    with pytest.raises(XrecError, match="no CUDA GPU is present"):
        bench_encoder.run(args)
