"""Each item text is encoded once for every worker of a vector space (``streams/encoding.py``), end to end.

Real workers with the real encoder, each with its own embedded edge store (the way to scale without a
vector server), and again sharing one collection of a real Qdrant server: the encoding group splits
the items topic's partitions between them, every store reads the encoded items, and ``xrec_items_total{outcome="encoded"}`` summed over the workers is the catalog's
size. A worker told not to encode (``XREC_ENCODE_ITEMS=false``) serves lists from vectors the others
encoded; a worker killed with SIGKILL hands its partitions over and no item is lost; a worker whose
encoder places texts differently (another token limit: another space) encodes the catalog for itself
and is refused a store that holds the first space's vectors. Records of the vectors topic that are
unreadable or of another space are dead-lettered by the indexer.
"""

from __future__ import annotations

import re
import signal
import time
from typing import Any

import numpy as np
import orjson
import pytest

from tests.integration.conftest import READY_TIMEOUT_S, WorkerEnv, WorkerProcess, lists_for
from xrec.config import Settings
from xrec.topics import vectors_topic
from xrec.vectors import EncodedItem, VectorSpace

LANGS = {
    "en": ["football match report {n}", "new smartphone review {n}", "stock market closes higher {n}"],
    "de": ["Bericht zum Fußballspiel {n}", "Test des neuen Smartphones {n}", "Börse schließt im Plus {n}"],
    "es": ["crónica del partido de fútbol {n}", "análisis del nuevo teléfono {n}", "la bolsa cierra al alza {n}"],
    "zh": ["足球比赛报道 {n}", "新智能手机评测 {n}", "股市收盘上涨 {n}"],
}


def items(first: int, count: int) -> list[dict[str, Any]]:
    out = []
    for n in range(first, first + count):
        lang = list(LANGS)[n % len(LANGS)]
        topic = (n // len(LANGS)) % 3
        out.append({"item_id": f"i{n}", "title": LANGS[lang][topic].format(n=n), "lang": lang, "category": str(topic)})
    return out


def encoded(worker: WorkerProcess) -> int:
    return int(worker.metrics().sum("xrec_items_total", outcome="encoded"))


def indexed(worker: WorkerProcess) -> int:
    return int(worker.metrics().sum("xrec_items_indexed"))


def wait_until(what: str, holds: Any, workers: list[WorkerProcess], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if holds():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {w.log_path.name}\n{w.log_tail()}" for w in workers)
    raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s\n{logs}")


def items_partitions_encoded_by(worker: WorkerProcess, items_topic: str) -> set[int]:
    """Items partitions whose encoding lag this worker reports: the ones its encoder owns now."""
    owned = set()
    for line in worker.get("/metrics")[1].decode().splitlines():
        if line.startswith("xrec_consumer_lag{") and f'topic="{items_topic}"' in line:
            owned.add(int(re.search(r'partition="(\d+)"', line).group(1)))  # type: ignore[union-attr]
    return owned


def vectors_topic_of(worker: WorkerProcess) -> str:
    found = re.search(r"encoding items from \S+ into (\S+) ", worker.log_path.read_text(errors="replace"))
    assert found, worker.log_tail()
    return found.group(1)


@pytest.mark.parametrize("backend", ["edge", "qdrant-server"])
def test_two_workers_encode_each_text_once_a_third_serves_their_vectors_and_a_kill_loses_nothing(
    worker_env: WorkerEnv, model_ready: None, backend: str, request: pytest.FixtureRequest
) -> None:
    """Edge: each worker embeds the whole catalog (a store each). Server: the workers share one collection."""
    env = worker_env
    if backend == "qdrant-server":
        env.use_qdrant_server(request.getfixturevalue("qdrant_server"))
    env.env.update(XREC_ITEM_PARTITIONS="2", XREC_SESSION_TIMEOUT_S="6")
    items_topic = env.topics["items"]
    a, b = (env.start_worker(store_path=env.tmp / f"store-{name}") for name in "ab")

    def one_partition_each() -> bool:
        owned = [items_partitions_encoded_by(w, items_topic) for w in (a, b)]
        return sorted(owned, key=sorted) == [{0}, {1}]

    wait_until("each encoder owning one items partition", one_partition_each, [a, b], timeout_s=60)
    first = items(0, 40)
    env.produce_json(items_topic, "item_id", first)
    wait_until("both stores holding the catalog", lambda: indexed(a) == indexed(b) == len(first), [a, b])
    time.sleep(2)  # a second encoding of any text would be counted by now
    per_worker = [encoded(a), encoded(b)]
    assert sum(per_worker) == len(first), f"texts encoded per worker {per_worker}: each text once in all"
    assert all(n > 0 for n in per_worker), f"texts encoded per worker {per_worker}: the work is split"

    # A worker that leaves encoding to others (a CPU worker beside GPU ones) indexes their vectors.
    c = env.start_worker(store_path=env.tmp / "store-c", XREC_ENCODE_ITEMS="false")
    wait_until("the third store holding the catalog", lambda: indexed(c) == len(first), [a, b, c])
    assert encoded(c) == 0
    user, clicked = "reader", ["i0", "i4", "i8"]  # English football reports
    now = int(time.time() * 1000)
    clicks = [
        {"event_id": f"{user}-{n}", "user_id": user, "item_id": i, "type": "click", "ts": now + n}
        for n, i in enumerate(clicked)
    ]
    env.produce_json(env.topics["events"], "user_id", clicks)
    messages = env.consume(
        env.topics["recommendations"],
        lambda ms: any(x and x["trigger_event_id"] == clicks[-1]["event_id"] for x in lists_for(ms, user)),
        timeout_s=120,
    )
    assert any(x and x["items"] for x in lists_for(messages, user)), "no list for the reader"

    # One encoder killed: the other takes its partition over after the session timeout; nothing is lost.
    encoded_by_a = encoded(a)
    a.stop(signal.SIGKILL)
    second = items(40, 20)
    env.produce_json(items_topic, "item_id", second)
    total = len(first) + len(second)
    wait_until("the catalog after the kill in both stores", lambda: indexed(b) == indexed(c) == total, [b, c])
    time.sleep(2)
    assert encoded_by_a + encoded(b) == total, (encoded_by_a, encoded(b))
    assert encoded(c) == 0

    # Another vector space (here: another token limit) has its own topic and encodes the catalog itself.
    own_store: dict[str, Any] = (
        {"XREC_COLLECTION": env.env["XREC_COLLECTION"] + "-d"} if backend == "qdrant-server" else {}
    )
    d = env.start_worker(store_path=env.tmp / "store-d", XREC_MAX_TOKENS="64", **own_store)
    wait_until("the other space's store holding the catalog", lambda: indexed(d) == total, [b, c, d])
    assert encoded(d) == total
    assert vectors_topic_of(d) != vectors_topic_of(b)
    # ... and is refused a store that holds the other space's vectors, with the reason, rather than mix them.
    e = env.start_worker(store_path=env.tmp / "store-a", wait=False, XREC_MAX_TOKENS="64")
    wait_until("the worker on a store of another space to stop", lambda: e.exited() is not None, [e], timeout_s=120)
    assert e.exited() != 0
    assert "holds vectors of intfloat/multilingual-e5-small" in e.log_path.read_text(errors="replace")


def test_records_in_the_vectors_topic_that_are_unreadable_or_of_another_space_go_to_the_dlq(
    worker_env: WorkerEnv,
) -> None:
    """The vectors topic is written by workers only, but a store must survive anything found there."""
    env = worker_env
    dim = 16
    worker = env.start_worker("--no-encoder", "--dim", str(dim))
    topic = vectors_topic(Settings(topic_items=env.topics["items"]), VectorSpace.precomputed(dim))
    good = orjson.dumps({"item_id": "good", "title": "fine", "lang": "en"})
    other = VectorSpace.of_encoder("other/model", "ckpt", "", "", 128, dim)
    vector = np.ones(dim, np.float32) / np.sqrt(dim)
    env.produce(
        topic,
        [
            (b"junk", b"not an encoded item"),
            (b"other", EncodedItem(other, good, vector).to_bytes()),
            (b"cut", EncodedItem(VectorSpace.precomputed(dim), good, vector).to_bytes()[:-5]),
            (b"good", EncodedItem(VectorSpace.precomputed(dim), good, vector).to_bytes()),
        ],
    )
    messages = env.consume(env.topics["dlq"], lambda ms: len(ms) >= 3, timeout_s=60)
    reasons = {orjson.loads(m.value)["key"]: orjson.loads(m.value)["error_class"] for m in messages}
    assert reasons == {"junk": "bad_vector_record", "other": "other_vector_space", "cut": "bad_vector_record"}
    wait_until("the good record indexed", lambda: indexed(worker) == 1, [worker], timeout_s=60)
    assert worker.metrics().sum("xrec_items_total", outcome="dlq") == 3
    assert worker.exited() is None


def test_a_worker_joining_while_the_catalog_is_encoded_takes_over_without_encoding_anything_twice(
    worker_env: WorkerEnv, model_ready: None
) -> None:
    """Two workers start on a backlog at once: whichever joins the encoding group first starts encoding, and
    the other's join moves a partition while it does (on this CPU, within seconds). A partition is handed
    over only after the batch in hand is written and committed (``streams/encoding.py``), so the two counts
    add up to the catalog exactly."""
    env = worker_env
    env.env.update(XREC_ITEM_PARTITIONS="2", XREC_BATCH_SIZE="32")  # small batches: many handover points
    backlog = items(0, 8_000)
    env.produce_json(env.topics["items"], "item_id", backlog)
    a, b = (env.start_worker(store_path=env.tmp / f"store-{name}", wait=False) for name in "ab")
    for worker in (a, b):
        worker.wait_ready(READY_TIMEOUT_S)  # ready once everything is encoded and in its store
    wait_until("both stores holding the catalog", lambda: indexed(a) == indexed(b) == len(backlog), [a, b])
    time.sleep(2)
    per_worker = [encoded(a), encoded(b)]
    print(f"\n[joined while encoding] texts encoded per worker {per_worker}")
    assert sum(per_worker) == len(backlog), f"texts encoded per worker {per_worker}: each text once in all"
