"""The encoder on OpenVINO: the same checkpoint, pooling and batching, several times faster on a CPU.

PyTorch runs a small BERT on a CPU in float32 and leaves the CPU's matrix units idle. OpenVINO runs
it in bfloat16 on CPUs that have bf16 units (AMX or AVX-512 BF16; float32 elsewhere) with fused
kernels; on this project's 2-core Xeon that is 3.3–3.5× the texts/s of PyTorch at a mean cosine of
0.99999 to its vectors (``xrec bench encoder``; BENCHMARKS.md, "CPU encoder"). In float32 (a CPU
without bf16 units) it measured 1.2×.

The model is converted from the local checkpoint by OpenVINO's own converter (tracing the PyTorch
module, mean pooling and normalization included, so a pass returns finished vectors), once per
checkpoint and OpenVINO version, into ``$XREC_HOME/models/openvino/<name>-<hash>``. Nothing comes
from a model hub. ``xrec model prepare`` does it ahead of time; otherwise the first encoder does it
and says so in the log. Like the default checkpoint it is written aside and renamed into place with a
marker, so a crash never leaves a half-written model that looks usable.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from xrec.config import Settings
from xrec.errors import XrecError
from xrec.modelhub import checkpoint_fingerprint, exclusive_lock, keyed_dir_name, replace_dir

log = logging.getLogger(__name__)

#: Bumped whenever what the export writes changes (inputs, pooling, output), so old exports are not reused.
EXPORT_FORMAT = 1
EXPORT_MARKER = "xrec-export.json"
MODEL_XML = "model.xml"


class BackendUnavailableError(XrecError):
    """The encoder backend the settings ask for cannot run here; the message says what to do."""


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def import_openvino() -> ModuleType:
    """OpenVINO, imported without its usage reports. Every OpenVINO import in xrec goes through here.

    ``import openvino`` reports an "import" event, and ``ov.convert_model`` each conversion, to Intel
    (Google Analytics, from forked processes) unless the user has opted out or ``CI=true``. xrec sends
    nothing anywhere: while OpenVINO is first imported its telemetry package is hidden, so OpenVINO
    binds the no-op stub it ships for a missing telemetry package (``openvino.tools.ovc.telemetry_stub``).
    Where a host program imported OpenVINO first, its converter modules are pointed at that stub here,
    so conversions stay silent. Tests fail if a new OpenVINO reports through another path.
    """
    if "openvino" not in sys.modules:
        hidden = sys.modules.get("openvino_telemetry")
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import → ImportError → stub
        try:
            import openvino
        finally:
            if hidden is None:
                del sys.modules["openvino_telemetry"]
            else:
                sys.modules["openvino_telemetry"] = hidden
    import openvino

    _bind_telemetry_stub()
    return openvino


def _bind_telemetry_stub() -> None:
    stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    for name, module in list(sys.modules.items()):
        if (
            name.startswith("openvino.tools.ovc")
            and getattr(getattr(module, "tm", None), "__name__", "") == "openvino_telemetry"
        ):
            module.tm = stub  # type: ignore[attr-defined]


def openvino_version() -> str:
    return str(import_openvino().get_version())


@dataclass(frozen=True)
class ExportResult:
    path: Path
    reused: bool
    seconds: float


def export_dir(settings: Settings, model_name: str, model_path: Path) -> Path:
    """Where the export of this checkpoint for the installed OpenVINO lives (readable name + hash).

    The hash covers the checkpoint's identity plus its weight files' modification times: weights saved
    again in place (a fine-tuned model of the same shape) get a new export, never the stale one.
    """
    written = sorted(
        f"{p.name}:{p.stat().st_mtime_ns}" for p in model_path.glob("*") if p.suffix in {".safetensors", ".bin"}
    )
    identity = f"{checkpoint_fingerprint(model_path)}\0{written}\0{openvino_version()}\0{EXPORT_FORMAT}"
    return settings.home_path / "models" / "openvino" / keyed_dir_name(model_name, identity)


def is_exported(path: Path) -> bool:
    return (path / EXPORT_MARKER).is_file() and (path / MODEL_XML).is_file() and (path / "model.bin").is_file()


def export_openvino(settings: Settings, model_name: str, model_path: Path, force: bool = False) -> ExportResult:
    """Convert the checkpoint at ``model_path`` to OpenVINO (or reuse the export); safe across processes."""
    started = time.perf_counter()
    final = export_dir(settings, model_name, model_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(final.parent / f".{final.name}.lock"):
        if is_exported(final) and not force:
            return ExportResult(final, True, time.perf_counter() - started)
        log.info(
            "exporting %s to OpenVINO in %s (once per checkpoint; `xrec model prepare` does it ahead)",
            model_name,
            final,
        )
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            _convert(model_path, tmp)
            marker = {
                "model": model_name,
                "checkpoint": str(model_path),
                "checkpoint_fingerprint": checkpoint_fingerprint(model_path),
                "openvino": openvino_version(),
                "format": EXPORT_FORMAT,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: it vouches for the rest
            replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("exported %s to OpenVINO in %.1f s", model_name, seconds)
    return ExportResult(final, False, seconds)


def _convert(model_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModel

    from xrec.encoder import mean_pooled, no_pooler

    ov = import_openvino()
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=False)
    model = AutoModel.from_pretrained(model_path, config=config, trust_remote_code=False, **no_pooler(config)).eval()

    class MeanPooled(torch.nn.Module):
        """The checkpoint plus the encoder's own pooling: a pass returns unit vectors."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return mean_pooled(hidden, attention_mask)

    # A padded example, so nothing specialized for "no padding" is traced into the graph.
    example = {
        "input_ids": torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]], dtype=torch.int64),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.int64),
    }
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditions in the model's code
        converted = ov.convert_model(
            MeanPooled(model),
            example_input=example,
            input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)],
        )
    ov.save_model(converted, out / MODEL_XML, compress_to_fp16=False)  # full weights: the runtime picks precision


#: Passes in flight at once. Two streams of one thread each ran 25% more texts/s than one stream of
#: two threads on the 2-core machine (small matrices parallelize poorly inside one pass); a single
#: pass then runs on half the threads, which is fine for the indexer's few-text batches.
STREAMS = 2


def openvino_model_for(settings: Settings, model_name: str, model_path: Path) -> Path:
    """The exported model a worker runs: ``XREC_OPENVINO_MODEL`` if set (checked against the checkpoint),
    else the export under ``$XREC_HOME``, made now if missing."""
    if not settings.openvino_model:
        return export_openvino(settings, model_name, model_path).path / MODEL_XML
    given = Path(settings.openvino_model).expanduser()
    if not is_exported(given):
        raise BackendUnavailableError(
            f"XREC_OPENVINO_MODEL={given} holds no finished OpenVINO export; run `xrec model prepare` "
            "and point it at the directory it prints"
        )
    made_from = json.loads((given / EXPORT_MARKER).read_text()).get("checkpoint_fingerprint")
    if made_from != checkpoint_fingerprint(model_path):
        raise BackendUnavailableError(
            f"XREC_OPENVINO_MODEL={given} was exported from another checkpoint than {model_path}; "
            "run `xrec model prepare` again for this XREC_MODEL"
        )
    return given / MODEL_XML


class OpenVinoRunner:
    """A compiled model and a queue of inference requests; used from the encoder's thread under its lock."""

    def __init__(self, xml: Path, threads: int, precision: str = "auto") -> None:
        ov = import_openvino()
        core = ov.Core()
        self.streams = max(1, min(STREAMS, threads))
        # No pinning: the worker's own threads share these cores, and a pinned pool would fight them.
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": self.streams,
            "INFERENCE_NUM_THREADS": threads,
            "ENABLE_CPU_PINNING": False,
        }
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
        self.compiled = core.compile_model(str(xml), "CPU", config)
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams)
        self.queue.set_callback(self._done)
        self._results: list[np.ndarray | None] = []
        self.precision = _precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.threads = threads

    def _done(self, request: Any, index: int) -> None:
        self._results[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def run(self, passes: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Vectors of each (input_ids, attention_mask) pass, in order; up to ``streams`` run at once."""
        self._results = []
        for index, (input_ids, attention_mask) in enumerate(passes):
            self._results.append(None)
            self.queue.start_async(
                {"input_ids": input_ids, "attention_mask": attention_mask}, index
            )  # waits for a free request
        self.queue.wait_all()
        results, self._results = self._results, []
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"OpenVINO returned no vectors for {len(missing)} of {len(results)} passes")
        return [r for r in results if r is not None]


#: XREC_OPENVINO_PRECISION → OpenVINO's INFERENCE_PRECISION_HINT.
_HINTS = {"bfloat16": "bf16", "float32": "f32"}


def resolved_precision(setting: str = "auto") -> str:
    """The precision the runner will compute in: the setting, or what OpenVINO picks on this CPU when
    not told (bfloat16 where it has bf16 units, else float32)."""
    if setting != "auto":
        return setting
    return _precision_name(import_openvino().Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def _precision_name(hint: Any) -> str:
    """OpenVINO's element type (``bf16``) in the names torch uses (``bfloat16``), for one vocabulary in metrics."""
    name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}.get(name.strip().lower(), name)
