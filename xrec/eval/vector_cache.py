"""Item vectors cached on disk, keyed by model and text, so repeated evaluations skip the encoder.

Encoding some 17k news texts takes minutes on a small CPU; the vectors only change when the model,
its prefix, its truncation or the text changes, and all four are in the key. A cache directory holds
append-only parts (``part-*.npy`` float32 rows and ``part-*.keys`` with one text hash per row), each
written to a temporary name and renamed, so an interrupted run keeps what it finished and two runs
never corrupt each other (a text encoded twice is merely stored twice).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xrec.config import Settings
from xrec.modelhub import checkpoint_fingerprint, keyed_dir_name

log = logging.getLogger(__name__)

Encode = Callable[[list[str]], np.ndarray]


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


#: The backend and precision every cache was made with before there was a choice; their keys stay as
#: they were, so existing caches remain valid. Any other (OpenVINO, bf16 on a GPU) gets keys of its own.
ORIGINAL_BACKEND = "torch-float32"


def model_key(model_name: str, fingerprint: str, prefix: str, max_tokens: int, backend: str = ORIGINAL_BACKEND) -> str:
    """Directory name for one encoding setup: readable model name plus a hash of everything that matters.

    ``backend`` is ``<backend>-<precision>`` (``openvino-bfloat16``): vectors of different backends differ
    in their last digits and never share a cache.
    """
    identity = f"{model_name}\0{fingerprint}\0{prefix}\0{max_tokens}"
    if backend != ORIGINAL_BACKEND:
        identity += f"\0{backend}"
    return keyed_dir_name(model_name, identity)


class VectorCache:
    """Text → vector rows under one directory (one model setup)."""

    def __init__(self, directory: Path, backend: str = ORIGINAL_BACKEND) -> None:
        self.directory = directory
        self.backend = backend  # ``<backend>-<precision>`` the vectors were made with
        self._rows: dict[str, np.ndarray] = {}
        self._loaded = False

    @classmethod
    def for_settings(cls, settings: Settings, kind: str = "passage") -> VectorCache:
        """The cache of the model ``settings`` name, as the encoder would prefix ``kind`` texts."""
        from xrec.encoder import encoder_identity, prefixes_for
        from xrec.modelhub import resolve_model

        path = resolve_model(settings)
        prefix = prefixes_for(settings.model).for_kind(kind)  # type: ignore[arg-type]
        backend = "-".join(encoder_identity(settings))
        key = model_key(settings.model, checkpoint_fingerprint(path), prefix, settings.max_tokens, backend)
        return cls(settings.home_path / "cache" / "vectors" / key, backend)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.directory.is_dir():
            return
        for keys_file in sorted(self.directory.glob("part-*.keys")):
            rows_file = keys_file.with_suffix(".npy")
            if not rows_file.is_file():
                continue
            keys = keys_file.read_text(encoding="ascii").split()
            rows = np.load(rows_file)
            if rows.ndim != 2 or len(rows) != len(keys):
                log.warning("vector cache part %s is inconsistent; ignoring it", rows_file)
                continue
            self._rows.update(zip(keys, rows.astype(np.float32), strict=True))

    def __len__(self) -> int:
        self._load()
        return len(self._rows)

    def lookup(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        self._load()
        return [self._rows.get(text_hash(t)) for t in texts]

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store rows for ``texts`` as one new part (atomic: written aside, then renamed)."""
        if len(texts) != len(vectors):
            raise ValueError("one vector per text")
        if not len(texts):
            return
        self._load()
        keys = [text_hash(t) for t in texts]
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        tmp_rows = self.directory / f".{name}.npy.tmp"
        tmp_keys = self.directory / f".{name}.keys.tmp"
        with tmp_rows.open("wb") as fh:
            np.save(fh, np.asarray(vectors, np.float32))
        tmp_keys.write_text("\n".join(keys) + "\n", encoding="ascii")
        os.replace(tmp_rows, self.directory / f"{name}.npy")  # rows first: keys without rows are ignored
        os.replace(tmp_keys, self.directory / f"{name}.keys")
        self._rows.update(zip(keys, np.asarray(vectors, np.float32), strict=True))

    def vectors(self, texts: Sequence[str], encode: Encode, chunk: int = 512) -> tuple[np.ndarray, int]:
        """Vectors of ``texts`` in order, encoding (and storing) only the missing ones.

        Returns the matrix and how many texts had to be encoded. Missing texts are encoded in chunks,
        each stored as soon as it is done.
        """
        found = self.lookup(texts)
        missing = sorted({t for t, v in zip(texts, found, strict=True) if v is None})
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            began = time.perf_counter()
            self.add(part, encode(part))
            log.info(
                "encoded %d/%d missing texts (%.1f s for this chunk)",
                min(start + chunk, len(missing)),
                len(missing),
                time.perf_counter() - began,
            )
        if missing:
            found = self.lookup(texts)
        rows = [v for v in found if v is not None]
        if len(rows) != len(texts):
            raise RuntimeError(f"vector cache {self.directory}: {len(texts) - len(rows)} texts still have no vector")
        return (np.vstack(rows) if rows else np.zeros((0, 0), np.float32)), len(missing)


def encoded_vectors(
    settings: Settings, texts: Sequence[str], kind: str = "passage"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors of ``texts`` from the on-disk cache; the encoder is loaded only if some are missing.

    Returns the matrix and what it took (texts, how many were encoded now, device, seconds).
    """
    began = time.perf_counter()
    cache = VectorCache.for_settings(settings, kind=kind)
    encoder: Any = None

    def encode(batch: list[str]) -> np.ndarray:
        nonlocal encoder
        if encoder is None:
            from xrec.encoder import TextEncoder

            encoder = TextEncoder(settings=settings)
            log.info(
                "encoding %d texts with %s on %s (%s, %s)",
                len(texts),
                encoder.model_name,
                encoder.device,
                encoder.backend,
                encoder.precision,
            )
        return encoder.encode(batch, kind=kind)  # type: ignore[arg-type]

    matrix, encoded = cache.vectors(texts, encode)
    info = {
        "texts": len(texts),
        "encoded_now": encoded,
        "from_cache": len(texts) - encoded,
        "cache_dir": str(cache.directory),
        "device": str(encoder.device) if encoder is not None else "not loaded (all cached)",
        "backend": cache.backend,
        "seconds": round(time.perf_counter() - began, 2),
    }
    return matrix, info
