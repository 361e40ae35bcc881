"""Encoded items on the wire: each item text is encoded once, and every store reads the vector.

The encoding stage of the workers (one consumer group per vector space) reads the items topic, encodes
what has no vector yet and writes one record per item to the vectors topic of its space; every
store's indexer reads that topic. So a catalog costs one encoder pass however many workers embed it,
and a worker without a GPU (or without an encoder at all) serves lists from vectors others encoded.

A *vector space* is what makes two vectors comparable: the checkpoint, the prefixes and the token
limit the texts were encoded with, and the dimension. Its fingerprint names the vectors topic, so a
model change starts a new topic, encoded from the items topic under the new fingerprint, and never
mixes vectors of two spaces in one store. Device and precision are left out on purpose: a GPU's
bfloat16 vector and a CPU's float32 vector of one checkpoint are the same point to within rounding.

Record value (binary, keyed by item id)::

    b"XRV1" | u16 header length | header (JSON: model, fingerprint, dim) |
    u32 item length | the item record as it was on the items topic (JSON) | float32 × dim (upserts only)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from xrec.events import RecordError

MAGIC = b"XRV1"
_HEADER_LEN = struct.Struct(">H")
_ITEM_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class VectorSpace:
    """Which encoder made a vector: ``model`` for people, ``fingerprint`` for machines, and ``dim``."""

    model: str
    fingerprint: str
    dim: int

    @classmethod
    def of_encoder(
        cls, model: str, checkpoint: str, query_prefix: str, passage_prefix: str, max_tokens: int, dim: int
    ) -> VectorSpace:
        """The space of a text encoder, from what decides where it puts a text (not where it runs)."""
        identity = orjson.dumps([checkpoint, query_prefix, passage_prefix, max_tokens, dim])
        return cls(model, hashlib.blake2b(identity, digest_size=8).hexdigest(), dim)

    @classmethod
    def precomputed(cls, dim: int) -> VectorSpace:
        """Workers without an encoder: items must bring their own vectors of this dimension."""
        return cls("precomputed", f"precomputed-{dim}", dim)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "fingerprint": self.fingerprint, "dim": self.dim}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


class VectorRecordError(RecordError):
    """A record of the vectors topic that this worker cannot use (unreadable, or of another space)."""


@dataclass(frozen=True)
class EncodedItem:
    """One record of the vectors topic: the item record as produced, and its vector (None for a delete)."""

    space: VectorSpace
    item: bytes
    vector: np.ndarray | None

    def to_bytes(self) -> bytes:
        header = self.space.to_json()
        parts = [MAGIC, _HEADER_LEN.pack(len(header)), header, _ITEM_LEN.pack(len(self.item)), self.item]
        if self.vector is not None:
            vector = np.asarray(self.vector, dtype="<f4")
            if vector.shape != (self.space.dim,):
                raise ValueError(f"vector of shape {vector.shape} in a space of dimension {self.space.dim}")
            parts.append(vector.tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | None, expected: VectorSpace) -> EncodedItem:
        """Decode a record and check that it belongs to ``expected``; refuse anything else with a reason."""
        if not data or not data.startswith(MAGIC):
            raise VectorRecordError("bad_vector_record", "not an encoded item (no XRV1 header)")
        try:
            at = len(MAGIC)
            (header_len,) = _HEADER_LEN.unpack_from(data, at)
            at += _HEADER_LEN.size
            header: Any = orjson.loads(data[at : at + header_len])
            at += header_len
            (item_len,) = _ITEM_LEN.unpack_from(data, at)
            at += _ITEM_LEN.size
            item = data[at : at + item_len]
            at += item_len
            space = VectorSpace(str(header["model"]), str(header["fingerprint"]), int(header["dim"]))
        except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise VectorRecordError("bad_vector_record", f"unreadable encoded item: {exc}") from None
        if len(item) != item_len:
            raise VectorRecordError("bad_vector_record", "encoded item cut short")
        if space.fingerprint != expected.fingerprint or space.dim != expected.dim:
            raise VectorRecordError(
                "other_vector_space",
                f"encoded by {space.model} (space {space.fingerprint}, dim {space.dim}); this worker's space is "
                f"{expected.fingerprint} ({expected.model}, dim {expected.dim})",
            )
        rest = data[at:]
        if not rest:
            return cls(space, item, None)
        if len(rest) != 4 * space.dim:
            raise VectorRecordError("bad_vector_record", f"{len(rest)} vector bytes for dimension {space.dim}")
        vector = np.frombuffer(rest, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(vector)):
            raise VectorRecordError("bad_vector_record", "vector has a non-finite component")
        return cls(space, item, vector)
