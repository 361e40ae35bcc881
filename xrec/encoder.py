"""TextEncoder: any Hugging Face encoder as a sentence embedder that hides batching, devices, backends and threads.

Texts are tokenized once, sorted by length and cut into forward passes of at most ``token_budget``
padded tokens, so padding stays small and memory is bounded whatever the input; vectors come back in
input order, mean-pooled over real tokens and L2-normalized (float32). ``encode_many`` runs a call in
the encoder's own thread, so the event loop (and with it Kafka heartbeats and fetches) keeps running
while the model works; the worker hands it all the texts of a batch at once. On a CPU the passes run
on OpenVINO (:mod:`xrec.openvino_encoder`), on a GPU on PyTorch; everything else is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from xrec.config import Settings
from xrec.errors import XrecError
from xrec.modelhub import checkpoint_fingerprint, resolve_model
from xrec.vectors import VectorSpace

log = logging.getLogger(__name__)

Kind = Literal["query", "passage"]


class DeviceUnavailableError(XrecError):
    """The device the settings ask for is not present; never replaced silently by another one."""


@dataclass(frozen=True)
class Prefixes:
    """Text a model family expects before each input, by role."""

    query: str = ""
    passage: str = ""

    def for_kind(self, kind: Kind) -> str:
        if kind == "query":
            return self.query
        if kind == "passage":
            return self.passage
        raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")


#: Model families that were trained with role prefixes; matched against the model's id or directory.
#: e5: "query: " for queries and symmetric tasks (here: user and review text), "passage: " for documents.
FAMILY_PREFIXES: tuple[tuple[re.Pattern[str], Prefixes], ...] = (
    (re.compile(r"(^|[/_-])e5([/_-]|$)", re.IGNORECASE), Prefixes(query="query: ", passage="passage: ")),
)


def prefixes_for(model_name: str) -> Prefixes:
    for pattern, prefixes in FAMILY_PREFIXES:
        if pattern.search(model_name):
            return prefixes
    return Prefixes()


@dataclass
class EncoderStats:
    """Counters the metrics module reads; updated under the encoder's lock."""

    batches: int = 0  # forward passes
    texts: int = 0
    tokens: int = 0  # real (unpadded) tokens
    padded_tokens: int = 0  # tokens the model actually processed, padding included
    last_batch_size: int = 0
    max_padded_tokens: int = 0  # largest single pass
    seconds: float = 0.0  # time spent in forward passes


#: Padded tokens per pass when XREC_TOKEN_BUDGET is 0. On CPU, passes of ~1k tokens stay in cache
#: and ran 20-30% faster than 8k ones (multilingual-e5-small, 2 cores; BENCHMARKS.md); a GPU wants
#: large passes to fill its cores.
CPU_TOKEN_BUDGET = 1024
ACCELERATOR_TOKEN_BUDGET = 8192


#: OpenVINO on CPU, two passes in flight: 2048 ran 10% faster than 4096 and 8192 (BENCHMARKS.md, "CPU encoder").
OPENVINO_TOKEN_BUDGET = 2048

Backend = Literal["torch", "openvino"]


def default_token_budget(device: torch.device, backend: Backend = "torch") -> int:
    if backend == "openvino":
        return OPENVINO_TOKEN_BUDGET
    return CPU_TOKEN_BUDGET if device.type == "cpu" else ACCELERATOR_TOKEN_BUDGET


def choose_backend(spec: str, device: torch.device) -> Backend:
    """``auto`` → OpenVINO on a CPU (PyTorch, with a warning, where it is not installed), PyTorch on a GPU.

    An explicit choice must be able to run: OpenVINO here encodes on CPU only.
    """
    from xrec.openvino_encoder import BackendUnavailableError, openvino_installed

    if spec == "torch":
        return "torch"
    if device.type != "cpu":
        if spec == "openvino":
            raise BackendUnavailableError(
                f"XREC_ENCODER_BACKEND=openvino encodes on CPU, but the device is {device}; "
                "use XREC_ENCODER_BACKEND=torch (or auto) for a GPU, or XREC_DEVICE=cpu"
            )
        return "torch"
    if openvino_installed():
        return "openvino"
    if spec == "openvino":
        raise BackendUnavailableError(
            "XREC_ENCODER_BACKEND=openvino but the openvino package is not installed: pip install openvino"
        )
    log.warning(
        "openvino is not installed: encoding on CPU with PyTorch float32, about a third of the speed "
        "(pip install openvino, or set XREC_ENCODER_BACKEND=torch to silence this)"
    )
    return "torch"


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2-normalized mean of the token states under ``mask`` (padding left out), in float32."""
    hidden = hidden.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def padded_pass(batch: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) of one pass, padded on the right to its longest input."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def plan_batches(
    lengths_desc: Sequence[int], token_budget: int, min_ratio: float = 0.8, min_fill: float = 0.25
) -> list[slice]:
    """Cut length-sorted (longest first) inputs into passes of at most ``token_budget`` padded tokens.

    A pass pads to its first (longest) input, so it holds at most ``budget // longest`` inputs. It is
    closed early when the next input is shorter than ``min_ratio`` × its longest and it already fills
    ``min_fill`` of the budget: a few more passes, but much less padding on small or skewed inputs. A
    single input longer than the budget gets a pass of its own.
    """
    out: list[slice] = []
    start, n = 0, len(lengths_desc)
    while start < n:
        longest = max(1, lengths_desc[start])
        stop_max = min(n, start + max(1, token_budget // longest))
        stop = start + 1
        while stop < stop_max and (
            lengths_desc[stop] >= min_ratio * longest or (stop - start) * longest < min_fill * token_budget
        ):
            stop += 1
        out.append(slice(start, stop))
        start = stop
    return out


def choose_device(spec: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; an explicit device must exist."""
    spec = spec.strip().lower() or "auto"
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceUnavailableError(
            f"XREC_DEVICE={spec!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {spec} was requested but no CUDA GPU is present on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {spec} was requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif device.type == "mps" and not _mps_available():
        raise DeviceUnavailableError(f"device {spec} was requested but Apple MPS is not available")
    elif device.type not in {"cpu", "cuda", "mps"}:
        raise DeviceUnavailableError(f"device {spec} is not supported (use auto, cpu, cuda, cuda:N or mps)")
    return device


def encoder_identity(settings: Settings) -> tuple[Backend, str]:
    """(backend, precision) a TextEncoder with these settings would run, without loading a model."""
    device = choose_device(settings.device)
    backend = choose_backend(settings.encoder_backend, device)
    if backend == "openvino":
        from xrec.openvino_encoder import resolved_precision

        return backend, resolved_precision(settings.openvino_precision)
    return backend, str(choose_dtype(device)).removeprefix("torch.")


def choose_dtype(device: torch.device) -> torch.dtype:
    """Half precision on accelerators (bf16 where the GPU has it), full precision on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _cpu_threads(settings: Settings) -> int:
    if settings.encoder_threads > 0:
        return settings.encoder_threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


class TextEncoder:
    """Sentence embeddings from a Hugging Face encoder: ``encode``, and ``encode_many`` for asyncio.

    ``model`` is a hub id or a local directory; by default ``settings.model`` resolved by
    :func:`xrec.modelhub.resolve_model`. Remote code is never trusted. ``backend`` (torch, openvino) and
    ``precision`` say what runs the passes (``XREC_ENCODER_BACKEND``, :func:`choose_backend`).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        settings: Settings | None = None,
        prefixes: Prefixes | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.settings = settings or Settings.from_env()
        self.device = choose_device(self.settings.device)  # first: a missing GPU fails before any download
        self.backend = choose_backend(self.settings.encoder_backend, self.device)
        self.dtype = choose_dtype(self.device)  # PyTorch's; ``precision`` says what either backend computes in
        if model is None:
            name, path = self.settings.model, resolve_model(self.settings)
        elif Path(model).is_dir():
            name, path = str(model), Path(model)
        else:
            name, path = str(model), resolve_model(self.settings.replace(model=str(model)))
        self.model_name = name
        self.model_path = path
        self.prefixes = prefixes if prefixes is not None else prefixes_for(name)
        threads = _cpu_threads(self.settings) if self.device.type == "cpu" else 0
        self.threads = threads  # CPU threads of either backend; 0 on a GPU

        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.model: torch.nn.Module | None = None  # the PyTorch module, on the torch backend only
        # Runs a stream of padded passes and returns their vectors in order (the OpenVINO runner keeps
        # two in flight at once).
        self._run_passes: Callable[[Iterable[tuple[np.ndarray, np.ndarray]]], list[np.ndarray]]
        if self.backend == "openvino":
            from xrec.openvino_encoder import OpenVinoRunner, openvino_model_for

            xml = openvino_model_for(self.settings, name, path)
            runner = OpenVinoRunner(xml, max(1, threads), self.settings.openvino_precision)
            self.precision = runner.precision
            self._run_passes = runner.run
        else:
            if threads and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
            self.model = AutoModel.from_pretrained(path, config=config, trust_remote_code=False, **no_pooler(config))
            self.model.to(device=self.device, dtype=self.dtype)
            self.model.eval()
            self.precision = str(self.dtype).removeprefix("torch.")
            self._run_passes = self._run_torch

        limit = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        self.max_tokens = min(self.settings.max_tokens, limit) if 0 < limit < 1_000_000 else self.settings.max_tokens
        self.token_budget = self.settings.token_budget or default_token_budget(self.device, self.backend)
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else 0
        self.stats = EncoderStats()
        # Hooks for the worker's metrics (this module knows no metrics): after each forward pass with
        # (texts, padded tokens), from the encoder's thread; and with the exception of a failed call.
        self.on_batch: Callable[[int, int], None] | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self._lock = threading.RLock()
        self._dim = int(getattr(config, "hidden_size", 0)) or int(self._encode_prefixed(["x"]).shape[1])
        self._executor: ThreadPoolExecutor | None = None
        log.info(
            "encoder %s on %s with %s (%s), dim %d, max %d tokens, %d tokens per pass, prefixes query=%r passage=%r%s",
            name,
            self.device,
            "OpenVINO" if self.backend == "openvino" else "PyTorch",
            self.precision,
            self._dim,
            self.max_tokens,
            self.token_budget,
            self.prefixes.query,
            self.prefixes.passage,
            f", {threads} CPU threads" if threads else "",
        )

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def space(self) -> VectorSpace:
        """Where this encoder puts texts: vectors of encoders with the same space are interchangeable,
        whatever device or precision computed them (``xrec/vectors.py``)."""
        return VectorSpace.of_encoder(
            self.model_name,
            checkpoint_fingerprint(self.model_path),
            self.prefixes.query,
            self.prefixes.passage,
            self.max_tokens,
            self.dim,
        )

    # --- synchronous batch API -------------------------------------------------------------------

    def encode(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized, in input order."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts; use encode([text]) for one")
        prefix = self.prefixes.for_kind(kind)
        return self._encode_prefixed([prefix + t for t in texts])

    def token_lengths(self, texts: Sequence[str], kind: Kind = "passage") -> list[int]:
        """Tokens each text costs the model (prefix, specials and truncation included)."""
        prefix = self.prefixes.for_kind(kind)
        with self._lock:
            return [len(ids) for ids in self._tokenize([prefix + t for t in texts])]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=False)
        return list(enc["input_ids"])

    def _encode_prefixed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), getattr(self, "_dim", 0) or 0), dtype=np.float32)
        if not texts:
            return out
        try:
            with self._lock:  # one call at a time: the budget bounds memory, and HF tokenizers are not re-entrant
                ids = self._tokenize(texts)
                order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
                lengths = [len(ids[i]) for i in order]
                parts = plan_batches(lengths, self.token_budget)
                started = time.perf_counter()
                passes = (padded_pass([ids[i] for i in order[part]], self._pad_id) for part in parts)
                results = self._run_passes(passes)  # built lazily: only the passes in flight are in memory
                self.stats.seconds += time.perf_counter() - started
                for part, vectors in zip(parts, results, strict=True):
                    if out.shape[1] != vectors.shape[1]:
                        out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
                    out[order[part]] = vectors
                    self._count_pass(len(vectors), lengths[part.start], sum(lengths[part]))
        except Exception as exc:
            if self.on_error is not None:
                self.on_error(exc)
            raise
        return out

    def _count_pass(self, rows: int, width: int, tokens: int) -> None:
        s = self.stats
        s.batches += 1
        s.texts += rows
        s.tokens += tokens
        s.padded_tokens += rows * width
        s.last_batch_size = rows
        s.max_padded_tokens = max(s.max_padded_tokens, rows * width)
        if self.on_batch is not None:
            self.on_batch(rows, rows * width)

    def _run_torch(self, passes: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        assert self.model is not None
        out = []
        with torch.inference_mode():
            for input_ids, mask in passes:
                ids_t = torch.from_numpy(input_ids).to(self.device)
                mask_t = torch.from_numpy(mask).to(self.device)
                hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
                out.append(mean_pooled(hidden, mask_t).cpu().numpy().astype(np.float32, copy=False))
        return out

    # --- asyncio API -----------------------------------------------------------------------------

    async def encode_many(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        """``encode`` run in the encoder's worker thread, so the event loop keeps going."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker(), self.encode, list(texts), kind)

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xrec-encoder")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> TextEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def no_pooler(config: Any) -> dict[str, Any]:
    """Skip the pooler head where the model class allows it: mean pooling never uses it, and a
    checkpoint without one (like the prepared e5) would otherwise get random weights and a warning."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    with contextlib.suppress(KeyError, ValueError):
        model_cls: Any = MODEL_MAPPING[type(config)]
        if "add_pooling_layer" in inspect.signature(model_cls).parameters:
            return {"add_pooling_layer": False}
    return {}
