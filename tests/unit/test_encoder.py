"""TextEncoder on a tiny randomly initialized BERT built in a temp dir (no downloads), on both backends.

The behaviours every backend shares (order, token budget, truncation, prefixes, the encoder's own
thread) run on PyTorch and on OpenVINO; what only one backend has is tested on that one.
"""

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
    choose_backend,
    choose_device,
    choose_dtype,
    encoder_identity,
    plan_batches,
    prefixes_for,
)
from xrec.openvino_encoder import BackendUnavailableError, export_openvino, openvino_model_for

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


BACKENDS = ["torch", "openvino"]


def make_encoder(path: Path, prefixes: Prefixes | None = None, backend: str = "torch", **overrides: Any) -> TextEncoder:
    """An encoder on CPU; OpenVINO exports go to a home beside the model, never the user's cache."""
    overrides.setdefault("home", str(path.parent / "xrec-home"))
    settings = Settings.from_env({}, device="cpu", encoder_backend=backend, **overrides)
    return TextEncoder(path, settings=settings, prefixes=prefixes)


def random_texts(n: int, seed: int = 0, max_words: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[:200]) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


class PassRecorder:
    """The (rows, padded width) of every pass the encoder runs and the thread that runs it, on any backend."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.threads: list[str] = []
        self.encoder = encoder
        encoder.on_batch = self._record

    def _record(self, rows: int, padded_tokens: int) -> None:
        self.shapes.append((rows, padded_tokens // rows))
        self.threads.append(threading.current_thread().name)

    def close(self) -> None:
        self.encoder.on_batch = None


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_are_float32_unit_length_with_the_models_dimension(tiny_model_dir: Path, backend: str) -> None:
    enc = make_encoder(tiny_model_dir, backend=backend)
    out = enc.encode(random_texts(20))
    assert enc.dim == 32
    assert out.shape == (20, 32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_an_empty_input_gives_an_empty_matrix(tiny_model_dir: Path) -> None:
    out = make_encoder(tiny_model_dir).encode([])
    assert out.shape == (0, 32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_length_sorting_inside_does_not_change_the_order_of_results(tiny_model_dir: Path, backend: str) -> None:
    enc = make_encoder(tiny_model_dir, backend=backend, token_budget=64)
    texts = random_texts(40, seed=1)
    together = enc.encode(texts)
    one_by_one = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)  # a row's vector never depends on its pass
    # and every two texts differ by far more than the tolerance, so any permutation would have been caught
    distinct = {t: v for t, v in zip(texts, together, strict=True)}  # repeated texts may share a vector
    vectors = np.stack(list(distinct.values()))
    gaps = np.abs(vectors[:, None, :] - vectors[None, :, :]).max(axis=2) + np.eye(len(vectors))
    assert gaps.min() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_forward_pass_stays_within_the_token_budget(tiny_model_dir: Path, backend: str) -> None:
    enc = make_encoder(tiny_model_dir, backend=backend, token_budget=100)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_texts_are_truncated_to_max_tokens(tiny_model_dir: Path, backend: str) -> None:
    enc = make_encoder(tiny_model_dir, backend=backend, max_tokens=16)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_and_passage_prefixes_are_put_before_the_text(tiny_model_dir: Path, backend: str) -> None:
    prefixed = make_encoder(tiny_model_dir, Prefixes(query="query : ", passage="passage : "), backend)
    plain = make_encoder(tiny_model_dir, Prefixes(), backend)
    text = "w5 w6 w7"
    np.testing.assert_allclose(prefixed.encode([text], kind="query"), plain.encode([f"query : {text}"]), atol=1e-6)
    np.testing.assert_allclose(prefixed.encode([text], kind="passage"), plain.encode([f"passage : {text}"]), atol=1e-6)
    assert np.abs(prefixed.encode([text], kind="query") - plain.encode([text])).max() > 1e-3  # prefixes matter
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


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_event_loop_keeps_running_while_a_large_batch_encodes(tiny_model_dir: Path, backend: str) -> None:
    enc = make_encoder(tiny_model_dir, backend=backend, token_budget=512)
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

    args = argparse.Namespace(
        device="cuda", texts=10, baseline_texts=5, seed=0, data_dir=None, backends=None, repeats=1
    )
    with pytest.raises(XrecError, match="no CUDA GPU is present"):
        bench_encoder.run(args)


# --- OpenVINO only -------------------------------------------------------------------------------


def test_openvino_vectors_agree_with_pytorch_on_padded_batches(tiny_model_dir: Path) -> None:
    texts = random_texts(80, seed=7, max_words=40)  # mixed lengths: most rows of a pass are padded
    torch_vectors = make_encoder(tiny_model_dir, backend="torch", token_budget=400).encode(texts)
    openvino = make_encoder(tiny_model_dir, backend="openvino", token_budget=400)
    cosine = (openvino.encode(texts) * torch_vectors).sum(axis=1)
    assert openvino.backend == "openvino" and openvino.model is None
    assert openvino.precision in {"bfloat16", "float32"}
    assert cosine.min() > 0.99, cosine.min()


def test_auto_picks_openvino_on_cpu_and_pytorch_on_a_gpu_device() -> None:
    assert choose_backend("auto", torch.device("cpu")) == "openvino"
    assert choose_backend("auto", torch.device("cuda")) == "torch"
    assert choose_backend("torch", torch.device("cpu")) == "torch"


def test_asking_for_openvino_on_a_gpu_device_is_an_error_that_names_the_fix() -> None:
    with pytest.raises(BackendUnavailableError, match="XREC_ENCODER_BACKEND=torch"):
        choose_backend("openvino", torch.device("cuda"))


def test_without_openvino_installed_auto_says_so_and_an_explicit_choice_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import xrec.openvino_encoder

    monkeypatch.setattr(xrec.openvino_encoder, "openvino_installed", lambda: False)
    with caplog.at_level("WARNING", logger="xrec.encoder"):
        assert choose_backend("auto", torch.device("cpu")) == "torch"
    assert "openvino is not installed" in caplog.text and "pip install openvino" in caplog.text
    with pytest.raises(BackendUnavailableError, match="pip install openvino"):
        choose_backend("openvino", torch.device("cpu"))


def test_an_export_is_reused_redone_after_the_weights_change_and_never_used_half_written(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    settings = Settings.from_env({}, home=str(tmp_path / "home"))
    first = export_openvino(settings, "tiny", model)
    assert not first.reused and (first.path / "model.xml").is_file()
    assert export_openvino(settings, "tiny", model).reused

    (first.path / "xrec-export.json").unlink()  # as if the process died before the marker
    assert not export_openvino(settings, "tiny", model).reused

    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # saved again in place: same name and size, new write
    again = export_openvino(settings, "tiny", model)
    assert not again.reused and again.path != first.path


def test_a_given_openvino_export_is_used_only_if_it_was_made_from_this_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    settings = Settings.from_env({}, home=str(tmp_path / "home"))
    made = export_openvino(settings, "tiny", tiny_model_dir).path
    pointed = settings.replace(openvino_model=str(made))
    assert openvino_model_for(pointed, "tiny", tiny_model_dir) == made / "model.xml"

    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))  # another checkpoint
    with pytest.raises(BackendUnavailableError, match="another checkpoint"):
        openvino_model_for(pointed, "other", other)
    with pytest.raises(BackendUnavailableError, match="xrec model prepare"):
        openvino_model_for(settings.replace(openvino_model=str(tmp_path)), "tiny", tiny_model_dir)


def test_bench_encoder_compares_the_backends_on_the_same_texts_against_pytorch(tiny_model_dir: Path) -> None:
    from xrec.bench.encoder import compare_backends

    settings = Settings.from_env(
        {}, model=str(tiny_model_dir), device="cpu", home=str(tiny_model_dir.parent / "xrec-home")
    )
    figures, torch_encoder = compare_backends(
        settings, ["openvino", "torch"], random_texts(60, seed=8), random_texts(60, seed=9), repeats=2
    )
    assert list(figures) == ["openvino", "torch"] and torch_encoder.backend == "torch"
    assert figures["torch"]["speedup_vs_torch"] == 1.0 and figures["torch"]["min_cosine_to_torch"] > 0.9999
    assert len(figures["openvino"]["runs_sentences_per_s"]) == 2 == len(figures["openvino"]["speedup_per_round"])
    assert 0.99 < figures["openvino"]["min_cosine_to_torch"] <= 1.0001  # the same vectors, not just fast ones


def test_bench_encoder_refuses_an_unknown_backend_in_one_line() -> None:
    from xrec.bench.encoder import _backends
    from xrec.errors import CommandError

    with pytest.raises(CommandError, match="torch and/or openvino, not onnx"):
        _backends("onnx,torch", Settings.from_env({}))
    assert _backends("torch,openvino", Settings.from_env({})) == ["openvino", "torch"]


def test_bench_encoder_runs_end_to_end_and_prints_both_backends(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from xrec.bench import encoder as bench_encoder

    monkeypatch.setenv("XREC_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("XREC_HOME", str(tmp_path / "home"))
    args = argparse.Namespace(
        device="cpu", texts=20, baseline_texts=4, seed=0, data_dir=tmp_path, backends=None, repeats=1
    )
    result = bench_encoder.run(args)  # no MIND in tmp_path: the project's sample sentences
    assert list(result["backends"]) == ["openvino", "torch"]
    assert result["baselines"]["padded_to_max"]["min_cosine_to_encoder"] > 0.999
    table = bench_encoder.format_table(result)
    assert "openvino (" in table and "torch (float32)" in table and "naive: one text per pass" in table


def test_openvino_in_float32_when_asked_gives_pytorchs_vectors_closely(tiny_model_dir: Path) -> None:
    texts = random_texts(40, seed=10)
    reference = make_encoder(tiny_model_dir, backend="torch").encode(texts)
    exact = make_encoder(tiny_model_dir, backend="openvino", openvino_precision="float32")
    assert exact.precision == "float32"
    assert (exact.encode(texts) * reference).sum(axis=1).min() > 0.99999
    assert encoder_identity(Settings.from_env({}, device="cpu", openvino_precision="float32")) == (
        "openvino",
        "float32",
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_on_a_gpu_auto_keeps_pytorch_in_half_precision_with_the_cpu_vectors(tiny_model_dir: Path) -> None:
    texts = random_texts(40, seed=11)
    gpu = TextEncoder(tiny_model_dir, settings=Settings.from_env({}, device="auto"))
    assert gpu.backend == "torch" and gpu.device.type == "cuda"
    assert gpu.precision in {"bfloat16", "float16"}
    cosine = (gpu.encode(texts) * make_encoder(tiny_model_dir, backend="torch").encode(texts)).sum(axis=1)
    assert cosine.min() > 0.99


def test_converting_for_openvino_sends_no_usage_report(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openvino_telemetry

    reports: list[str] = []
    monkeypatch.setenv("CI", "false")  # OpenVINO stays quiet under CI=true anyway; prove it is xrec that silences it
    monkeypatch.setattr(openvino_telemetry.Telemetry, "__init__", lambda self, *a, **k: reports.append("init"))
    monkeypatch.setattr(openvino_telemetry.Telemetry, "send_event", lambda self, *a, **k: reports.append("event"))
    result = export_openvino(Settings.from_env({}, home=str(tmp_path / "home")), "tiny", tiny_model_dir)
    assert not result.reused
    assert reports == []


REPORT_PROBE = """
import sys
import openvino_telemetry
reports = []
openvino_telemetry.Telemetry.__init__ = lambda self, *a, **k: reports.append("init")
openvino_telemetry.Telemetry.send_event = lambda self, *a, **k: reports.append("event")
{load}
print(reports)
"""


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        ("import openvino", "['init', 'event']"),  # OpenVINO on its own reports its import: the probe sees it
        ("from xrec.openvino_encoder import import_openvino; import_openvino()", "[]"),
    ],
)
def test_importing_openvino_through_xrec_sends_no_usage_report(load: str, expected: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in {"CI", "TF_BUILD", "JENKINS_URL"}}  # OpenVINO skips CI
    probe = REPORT_PROBE.format(load=load)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == expected
