"""Encoded items on the wire (``xrec/vectors.py``): what the encoding stage writes and every indexer reads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from xrec.config import Settings
from xrec.events import ItemUpsert, RecordError
from xrec.pipeline import Recommender
from xrec.store import open_store
from xrec.topics import encoder_group_id, items_group_id, topic_specs, vectors_topic
from xrec.vectors import MAGIC, EncodedItem, VectorSpace

pytestmark = pytest.mark.unit

DIM = 8
SPACE = VectorSpace.of_encoder("some/model", "ckpt-1", "query: ", "passage: ", 256, DIM)
ITEM = orjson.dumps({"item_id": "a", "title": "Grüße aus Köln", "lang": "de"})


def unit_vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_an_encoded_item_reads_back_with_its_record_and_vector() -> None:
    vector = unit_vector(1)
    back = EncodedItem.from_bytes(EncodedItem(SPACE, ITEM, vector).to_bytes(), SPACE)
    assert back.space == SPACE
    assert back.item == ITEM
    assert back.vector is not None and np.array_equal(back.vector, vector)


def test_a_delete_travels_without_a_vector() -> None:
    delete = orjson.dumps({"item_id": "a", "deleted": True})
    back = EncodedItem.from_bytes(EncodedItem(SPACE, delete, None).to_bytes(), SPACE)
    assert (back.item, back.vector) == (delete, None)


def test_a_vector_of_another_space_is_refused_so_no_store_mixes_two_models() -> None:
    other = VectorSpace.of_encoder("other/model", "ckpt-2", "query: ", "passage: ", 256, DIM)
    data = EncodedItem(other, ITEM, unit_vector(2)).to_bytes()
    with pytest.raises(RecordError) as refused:
        EncodedItem.from_bytes(data, SPACE)
    assert refused.value.reason == "other_vector_space"
    assert "other/model" in refused.value.message


@pytest.mark.parametrize(
    "data",
    [
        None,
        b"",
        b'{"item_id": "a"}',  # an item record where an encoded one belongs
        MAGIC + b"\x00",  # cut inside the header length
        MAGIC + b"\x00\x05{nop}",  # a header that is not JSON
        EncodedItem(SPACE, ITEM, unit_vector(3)).to_bytes()[:-3],  # vector cut short
        EncodedItem(SPACE, ITEM, None).to_bytes()[:-4],  # item cut short
        EncodedItem(SPACE, ITEM, None).to_bytes() + np.full(DIM, np.nan, "<f4").tobytes(),  # not finite
    ],
    ids=["none", "empty", "plain-json", "cut-header", "bad-header", "short-vector", "short-item", "nan"],
)
def test_unreadable_encoded_items_are_refused_with_a_reason(data: bytes | None) -> None:
    with pytest.raises(RecordError) as refused:
        EncodedItem.from_bytes(data, SPACE)
    assert refused.value.reason == "bad_vector_record"


def test_a_vector_of_the_wrong_size_is_never_written() -> None:
    with pytest.raises(ValueError, match="dimension"):
        EncodedItem(SPACE, ITEM, np.ones(DIM + 1, np.float32)).to_bytes()


def test_the_space_changes_with_what_places_a_text_and_only_with_that() -> None:
    again = VectorSpace.of_encoder("some/model", "ckpt-1", "query: ", "passage: ", 256, DIM)
    assert again == SPACE
    changed = [
        VectorSpace.of_encoder("some/model", "ckpt-1b", "query: ", "passage: ", 256, DIM),  # retrained weights
        VectorSpace.of_encoder("some/model", "ckpt-1", "", "passage: ", 256, DIM),
        VectorSpace.of_encoder("some/model", "ckpt-1", "query: ", "", 256, DIM),
        VectorSpace.of_encoder("some/model", "ckpt-1", "query: ", "passage: ", 128, DIM),  # other truncation
        VectorSpace.of_encoder("some/model", "ckpt-1", "query: ", "passage: ", 256, DIM * 2),
    ]
    assert len({s.fingerprint for s in changed} | {SPACE.fingerprint}) == len(changed) + 1
    # The display name alone is not the identity: one checkpoint under two names is one space.
    assert VectorSpace.of_encoder("local/dir", "ckpt-1", "query: ", "passage: ", 256, DIM).fingerprint == (
        SPACE.fingerprint
    )


def test_each_space_has_its_own_compacted_vectors_topic_and_encoding_group_beside_the_stores_groups() -> None:
    settings = Settings(item_partitions=3)
    other = VectorSpace.precomputed(DIM)
    assert vectors_topic(settings, SPACE) != vectors_topic(settings, other)
    assert encoder_group_id(settings, SPACE) != encoder_group_id(settings, other)
    edge_a = settings.replace(store_path="/data/a")
    edge_b = settings.replace(store_path="/data/b")
    # Two edge stores index separately (two groups) but share one encoding group: each text once.
    assert items_group_id(edge_a, SPACE) != items_group_id(edge_b, SPACE)
    assert encoder_group_id(edge_a, SPACE) == encoder_group_id(edge_b, SPACE)
    # One store indexed for another space is another group: its offsets and statistics start afresh.
    assert items_group_id(edge_a, SPACE) != items_group_id(edge_a, other)
    spec = {s.name: s for s in topic_specs(settings, SPACE)}[vectors_topic(settings, SPACE)]
    assert spec.partitions == 3  # as many as the items topic: each item keeps its partition number
    assert spec.topic_configs()["cleanup.policy"] == "compact"
    assert vectors_topic(settings, SPACE) not in {s.name for s in topic_specs(settings)}


class CountingEncoder:
    """Hash-seeded vectors; remembers what it was asked to encode."""

    dim = DIM

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def encode_many(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        self.texts += texts
        return np.stack([unit_vector(len(t)) for t in texts])


async def test_encode_items_encodes_only_texts_without_a_vector_and_refuses_wrong_sizes(tmp_path: object) -> None:
    encoder = CountingEncoder()
    store = open_store(Settings(store_backend="edge", store_path=str(tmp_path)), dim=DIM)
    engine = Recommender(Settings(), store, encoder)
    given = unit_vector(9)
    ready, rejected = await engine.encode_items(
        [
            ItemUpsert(item_id="text", title="Nachrichten", lang="de"),
            ItemUpsert(item_id="own", title="has a vector", lang="en", vector=given),
            ItemUpsert(item_id="short", title="bad vector", lang="en", vector=np.ones(DIM - 1, np.float32)),
        ]
    )
    assert encoder.texts == ["Nachrichten"]
    assert [u.item_id for u in ready] == ["text", "own"]
    assert all(u.vector is not None and len(u.vector) == DIM for u in ready)
    assert np.array_equal(ready[1].vector, given)  # type: ignore[arg-type]
    assert [(r.record.item_id, r.error.reason) for r in rejected] == [("short", "bad_vector")]
    await store.close()
