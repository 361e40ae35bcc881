"""``build_runtime`` connects the encoder's pass hooks to the worker's metrics (tiny random BERT, edge store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from streams.worker import build_runtime
from tests.unit.test_encoder import build_tiny_bert
from xrec.config import Settings


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def runtime_for(model: Path, tmp_path: Path, **overrides: Any) -> Any:
    settings = Settings.from_env(
        {}, model=str(model), device="cpu", store_path=str(tmp_path / "store"), home=str(tmp_path), **overrides
    )
    return build_runtime(settings)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_every_forward_pass_is_observed_with_its_texts_and_padded_tokens(
    tiny_model_dir: Path, tmp_path: Path, backend: str
) -> None:
    rt = runtime_for(tiny_model_dir, tmp_path, token_budget=64, encoder_backend=backend)
    registry = rt.metrics.registry
    # Passes before the hooks were connected (a model without hidden_size is probed at load) are not observed.
    passes_before, padded_before = rt.encoder.stats.batches, rt.encoder.stats.padded_tokens
    assert sample(registry, "xrec_encoder_batch_size_count") == 0
    texts = [" ".join(f"w{i}" for i in range(n)) for n in (1, 3, 9, 20, 2, 7)]
    rt.encoder.encode(texts)
    stats = rt.encoder.stats
    assert stats.batches - passes_before > 1  # the small budget forces several passes
    assert sample(registry, "xrec_encoder_batch_size_count") == stats.batches - passes_before
    assert sample(registry, "xrec_encoder_batch_size_sum") == len(texts)
    assert sample(registry, "xrec_encoder_batch_tokens_sum") == stats.padded_tokens - padded_before
    precision = "float32" if backend == "torch" else rt.encoder.precision  # OpenVINO: bf16 where the CPU has it
    info = {"model": str(tiny_model_dir), "device": "cpu", "backend": backend, "dtype": precision}
    assert sample(registry, "xrec_encoder_info", **info) == 1
    assert sample(registry, "xrec_encoder_errors_total") == 0


def test_a_failing_encoder_call_counts_one_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    rt = runtime_for(tiny_model_dir, tmp_path, encoder_backend="torch")  # a hook on the torch module fails a pass

    def broken(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        raise RuntimeError("model exploded")

    handle = rt.encoder.model.register_forward_pre_hook(broken, with_kwargs=True)
    with pytest.raises(RuntimeError, match="exploded"):
        rt.encoder.encode(["w1 w2", "w3"])
    handle.remove()
    assert sample(rt.metrics.registry, "xrec_encoder_errors_total") == 1
    rt.encoder.encode(["w1"])
    assert sample(rt.metrics.registry, "xrec_encoder_errors_total") == 1


def test_the_gpu_expectation_comes_from_the_settings(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert sample(runtime_for(tiny_model_dir, tmp_path).metrics.registry, "xrec_encoder_gpu_expected") == 0
    expecting = runtime_for(tiny_model_dir, tmp_path / "b", expect_gpu=True)
    assert sample(expecting.metrics.registry, "xrec_encoder_gpu_expected") == 1
