"""The worker end to end against the real broker, with items that carry their own vectors.

These tests run ``xrec worker --no-encoder`` so they stay fast; the cross-lingual behaviour with the
real encoder is in ``test_crosslingual.py``. Tests taking ``any_store`` run once on the embedded edge
store and once on the session's real Qdrant server (its own collection per test).
"""

from __future__ import annotations

import itertools
import re
import signal
import time
from typing import Any

import numpy as np
import orjson
import pytest

from tests.integration.conftest import WorkerEnv, lists_for
from xrec.store.edge import EdgeStore
from xrec.store.local_server import LocalQdrantServer

DIM = 16
TOPICS = 4


def topic_items(per_topic: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Items on four orthogonal topics, each in several languages, with a little noise."""
    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    items = []
    for t in range(TOPICS):
        for i in range(per_topic):
            v = np.zeros(DIM)
            v[t] = 1.0
            v += 0.15 * rng.standard_normal(DIM)
            items.append(
                {
                    "item_id": f"T{t}-{i}",
                    "title": f"topic {t} item {i}",
                    "lang": ["en", "de", "ja", "zh"][i % 4],
                    "category": f"topic{t}",
                    "vector": v.tolist(),
                    "ts": now,
                }
            )
    return items


def click(user: str, item: str, n: int, etype: str = "click") -> dict[str, Any]:
    return {
        "event_id": f"{user}-{item}-{etype}-{n}",
        "user_id": user,
        "item_id": item,
        "type": etype,
        "ts": int(time.time() * 1000),
    }


def wait_indexed(worker: Any, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.metrics().sum("xrec_items_indexed") >= count:
            return
        time.sleep(0.3)
    raise AssertionError(
        f"items not indexed: {worker.metrics().sum('xrec_items_indexed')} < {count}\n{worker.log_tail()}"
    )


def start(worker_env: WorkerEnv) -> Any:
    worker = worker_env.start_worker("--no-encoder", "--dim", str(DIM))
    worker_env.produce_json(worker_env.topics["items"], "item_id", topic_items())
    wait_indexed(worker, TOPICS * 8)
    return worker


def latest_list(worker_env: WorkerEnv, user: str, trigger: str, timeout_s: float = 60) -> dict[str, Any]:
    """The list published for ``user`` in answer to event ``trigger``."""
    msgs = worker_env.consume(
        worker_env.topics["recommendations"],
        lambda ms: any(lst and lst["trigger_event_id"] == trigger for lst in lists_for(ms, user)),
        timeout_s,
    )
    found = [lst for lst in lists_for(msgs, user) if lst and lst["trigger_event_id"] == trigger]
    assert found, f"no list for {user} after {trigger}"
    return found[-1]


@pytest.fixture(params=["edge", "qdrant-server"])
def any_store(request: pytest.FixtureRequest, worker_env: WorkerEnv) -> str:
    if request.param == "qdrant-server":
        worker_env.use_qdrant_server(request.getfixturevalue("qdrant_server"))
    return str(request.param)


def test_a_click_publishes_a_contract_list_keyed_by_the_user(worker_env: WorkerEnv, any_store: str) -> None:
    start(worker_env)
    event = click("U1", "T0-0", 0)
    worker_env.produce_json(worker_env.topics["events"], "user_id", [event])
    msgs = worker_env.consume(worker_env.topics["recommendations"], lambda ms: bool(lists_for(ms, "U1")))
    [message] = [m for m in msgs if m.key == b"U1"]
    lst = orjson.loads(message.value)
    assert set(lst) == {"list_id", "user_id", "generated_at", "trigger_event_id", "strategy", "variant", "items"}
    assert lst["user_id"] == "U1" and lst["trigger_event_id"] == event["event_id"]
    assert lst["variant"] == "A" and isinstance(lst["list_id"], str) and len(lst["list_id"]) == 16
    assert lst["strategy"] == "multi-interest"
    assert len(lst["items"]) == 10
    assert all(set(i) == {"item_id", "score", "lang", "because"} for i in lst["items"])
    assert all(i["item_id"].startswith("T0-") for i in lst["items"][:7]), lst["items"]
    assert all(i["because"] == "T0-0" for i in lst["items"] if i["item_id"].startswith("T0-"))


def test_the_running_worker_shortens_fausts_fetch_wait_and_producer_buffer_stall(worker_env: WorkerEnv) -> None:
    """Both settings reach into Faust/aiokafka objects by name (streams/faust_tuning.py): this fails when
    an upgrade renames them, instead of the worker quietly falling back to the stalls they remove."""
    worker = start(worker_env)
    worker_env.produce_json(worker_env.topics["events"], "user_id", [click("U1", "T0-0", 0)])
    worker_env.consume(worker_env.topics["recommendations"], lambda ms: bool(lists_for(ms, "U1")))
    log = worker.log_path.read_text(errors="replace")
    assert "consumer fetch wait: 10 ms (was 1500 ms)" in log, worker.log_tail()
    assert "producer buffer: the consumer waits for it above" in log, worker.log_tail()
    assert "could not shorten" not in log


def test_items_are_searchable_in_the_store_and_deletes_remove_them(worker_env: WorkerEnv) -> None:
    worker = start(worker_env)
    worker_env.produce(worker_env.topics["items"], [(b"T1-3", orjson.dumps({"item_id": "T1-3", "deleted": True}))])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and worker.metrics().sum("xrec_items_total", outcome="deleted") < 1:
        time.sleep(0.3)
    assert worker.stop() == 0, worker.log_tail()
    import asyncio

    async def look() -> tuple[int, set[str], list[str]]:
        store = EdgeStore(worker_env.tmp / "store" / "xrec_items", dim=DIM)
        try:
            fetched = await store.fetch(["T1-3", "T2-2"])
            from xrec.store.base import VectorQuery

            query = np.zeros(DIM, np.float32)
            query[2] = 1.0
            [hits] = await store.query_batch([VectorQuery(query, limit=5)])
            return await store.count(), set(fetched), [h.item_id for h in hits]
        finally:
            await store.close()

    count, fetched, nearest = asyncio.run(look())
    assert count == TOPICS * 8 - 1
    assert fetched == {"T2-2"}
    assert all(i.startswith("T2-") for i in nearest)


def test_a_malformed_record_goes_to_the_dlq_and_the_worker_keeps_going(worker_env: WorkerEnv) -> None:
    worker = start(worker_env)
    events = worker_env.topics["events"]
    worker_env.produce(
        events,
        [
            (b"U2", b"{this is not json"),
            (b"U2", orjson.dumps({"user_id": "U2", "item_id": "T1-0", "type": "teleport", "ts": 1731412486000})),
            (b"U2", orjson.dumps(click("U2", "T1-1", 0))),
        ],
    )
    lst = latest_list(worker_env, "U2", "U2-T1-1-click-0")
    assert lst["items"][0]["item_id"].startswith("T1-")
    dlq = worker_env.consume(worker_env.topics["dlq"], lambda ms: len(ms) >= 2)
    reasons = sorted(orjson.loads(m.value)["error_class"] for m in dlq)
    assert reasons == ["not_json", "unknown_event_type"]
    record = orjson.loads(dlq[0].value)
    assert record["source_topic"] == events and record["offset"] is not None and record["error"]
    assert worker.metrics().sum("xrec_dlq_records_total") == 2


def test_seen_items_never_come_back_and_a_dislike_pushes_similar_items_down(
    worker_env: WorkerEnv, any_store: str
) -> None:
    start(worker_env)
    clicks = [click("U3", f"T0-{i}", i) for i in range(3)] + [click("U3", f"T1-{i}", i) for i in range(3)]
    worker_env.produce_json(worker_env.topics["events"], "user_id", clicks)
    before = latest_list(worker_env, "U3", clicks[-1]["event_id"])
    seen = {c["item_id"] for c in clicks}
    assert not seen & {i["item_id"] for i in before["items"]}
    dislike = click("U3", "T1-5", 0, etype="dislike")
    worker_env.produce_json(worker_env.topics["events"], "user_id", [dislike])
    after = latest_list(worker_env, "U3", dislike["event_id"])
    assert not (seen | {"T1-5"}) & {i["item_id"] for i in after["items"]}

    def mean_rank(lst: dict[str, Any], prefix: str) -> float:
        ranks = [r for r, i in enumerate(lst["items"]) if i["item_id"].startswith(prefix)]
        return float(np.mean(ranks)) if ranks else float(len(lst["items"]))

    assert mean_rank(after, "T1-") > mean_rank(before, "T1-")
    assert sum(i["item_id"].startswith("T1-") for i in after["items"]) <= sum(
        i["item_id"].startswith("T1-") for i in before["items"]
    )


def test_forget_user_publishes_a_tombstone_and_the_next_event_starts_afresh(worker_env: WorkerEnv) -> None:
    start(worker_env)
    clicks = [click("U4", f"T2-{i}", i) for i in range(3)]
    worker_env.produce_json(worker_env.topics["events"], "user_id", clicks)
    latest_list(worker_env, "U4", clicks[-1]["event_id"])
    worker_env.produce_json(worker_env.topics["control"], "user_id", [{"type": "forget_user", "user_id": "U4"}])
    msgs = worker_env.consume(worker_env.topics["recommendations"], lambda ms: None in lists_for(ms, "U4"))
    assert lists_for(msgs, "U4")[-1] is None, "no tombstone for the forgotten user"
    fresh = click("U4", "T3-0", 9)
    worker_env.produce_json(worker_env.topics["events"], "user_id", [fresh])
    lst = latest_list(worker_env, "U4", fresh["event_id"])
    ids = [i["item_id"] for i in lst["items"]]
    assert all(i.startswith("T3-") for i in ids[:7]), ids  # nothing left of the T2 history
    assert {i["because"] for i in lst["items"]} == {"T3-0"}


def recovery_reads(log_text: str) -> list[dict[int, tuple[int, int]]]:
    """What each Faust table recovery in a worker log read of the profile changelog: partition →
    (offset it started reading at, highwater), from the two tables Faust logs at every recovery."""
    row = re.compile(r"^\| (?:\S*profiles-changelog|〃)\s*\| (\d+)\s*\| (-?\d+)\s*\|")
    tables: dict[str, list[dict[int, int]]] = {"Highwater - Active": [], "Reading Starts At - Active": []}
    for title, found in tables.items():
        for block in log_text.split("+" + title)[1:]:
            lines = itertools.takewhile(lambda line: line.startswith(("|", "+")), block.splitlines()[1:])
            found.append({int(m[1]): int(m[2]) for m in map(row.match, lines) if m})
    highwaters, starts = tables["Highwater - Active"], tables["Reading Starts At - Active"]
    return [{p: (start[p], high[p]) for p in high} for high, start in zip(highwaters, starts, strict=True)]


@pytest.mark.parametrize("table_store", ["memory", "rocksdb"])
@pytest.mark.parametrize("stop", ["sigterm", "kill-9"])
def test_profiles_are_restored_after_a_restart_and_rocksdb_reads_only_the_changelogs_tail(
    worker_env: WorkerEnv, table_store: str, stop: str
) -> None:
    worker_env.env["XREC_TABLE_STORE"] = table_store
    worker = start(worker_env)
    history = [click(f"U{u}", f"T0-{i}", i) for u in range(20) for i in range(4)]  # 20 users: both partitions
    worker_env.produce_json(worker_env.topics["events"], "user_id", history)
    latest_list(worker_env, "U19", history[-1]["event_id"])
    time.sleep(2)  # a commit interval: the last batch is committed
    if stop == "sigterm":
        assert worker.stop() == 0, worker.log_tail()
    else:
        worker.stop(signal.SIGKILL)

    again = worker_env.start_worker("--no-encoder", "--dim", str(DIM))
    nxt = click("U5", "T1-0", 0)
    worker_env.produce_json(worker_env.topics["events"], "user_id", [nxt])
    lst = latest_list(worker_env, "U5", nxt["event_id"])
    ids = [i["item_id"] for i in lst["items"]]
    assert any(i.startswith("T0-") for i in ids), ids  # the history from before the restart is there
    assert any(i.startswith("T1-") for i in ids), ids
    assert not {h["item_id"] for h in history if h["user_id"] == "U5"} & set(ids)  # and what U5 had seen

    log = again.log_path.read_text(errors="replace")
    [reads, *_] = recovery_reads(log)
    assert sum(high for _, high in reads.values()) >= 20, reads  # the changelog holds the 20 profiles
    if table_store == "rocksdb" and stop == "sigterm":  # started at the highwater: nothing read again
        assert all(start == high for start, high in reads.values()), reads
        assert "local tables kept" in log
    else:  # the whole changelog read
        assert all(start <= 0 < high for start, high in reads.values()), reads
    if table_store == "rocksdb" and stop == "kill-9":
        assert "did not stop cleanly" in log


def owned_event_partitions(worker: Any, events_topic: str) -> set[str]:
    """The events partitions a worker owns now: it reports ``xrec_consumer_lag`` for those only."""
    return {
        labels["partition"]
        for name, labels, _ in worker.metrics().samples
        if name == "xrec_consumer_lag" and labels.get("topic") == events_topic
    }


def test_each_of_two_workers_ranks_popularity_from_its_own_partitions_only(worker_env: WorkerEnv) -> None:
    """Pins what the README says (Scaling, several workers): trending counts, and with them a brand-new
    user's popular list, come from the events of the worker's own partitions. Readers on one worker all
    click one item, readers on the other another; each worker's newcomers get a popular list led by its
    own readers' item that does not contain the other worker's. Shared trending would fail this."""
    workers = [
        worker_env.start_worker("--no-encoder", "--dim", str(DIM), store_path=worker_env.tmp / f"store-{w}")
        for w in range(2)
    ]
    items = topic_items()
    worker_env.produce_json(worker_env.topics["items"], "item_id", items)
    for worker in workers:
        wait_indexed(worker, len(items))
    events_topic = worker_env.topics["events"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        owned = [owned_event_partitions(w, events_topic) for w in workers]
        if all(len(o) == 1 for o in owned) and owned[0] != owned[1]:
            break
        time.sleep(0.5)
    assert all(len(o) == 1 for o in owned) and owned[0] != owned[1], f"partitions per worker: {owned}"

    def owner(user: str) -> int:
        [index] = [i for i, w in enumerate(workers) if w.get(f"/recommendations/{user}")[0] == 200]
        return index

    readers = [f"R{u}" for u in range(12)]
    first = [click(u, "T0-0", 0) for u in readers]
    worker_env.produce_json(events_topic, "user_id", first)
    for c in first:
        latest_list(worker_env, c["user_id"], c["event_id"])
    owners = {u: owner(u) for u in readers}
    assert set(owners.values()) == {0, 1}, owners
    hot = {0: "T1-1", 1: "T2-2"}
    clicks = [click(u, hot[owners[u]], n) for n in range(1, 4) for u in readers]
    worker_env.produce_json(events_topic, "user_id", clicks)
    for c in clicks[-len(readers) :]:
        latest_list(worker_env, c["user_id"], c["event_id"])

    # A newcomer whose only event is a dislike has no interest: their list is the worker's popular items.
    newcomers = [f"N{u}" for u in range(12)]
    dislikes = [click(u, "T3-3", 0, "dislike") for u in newcomers]
    worker_env.produce_json(events_topic, "user_id", dislikes)
    served = set()
    for d in dislikes:
        lst = latest_list(worker_env, d["user_id"], d["event_id"])
        assert lst["strategy"] == "popular", lst
        w = owner(d["user_id"])
        ids = [i["item_id"] for i in lst["items"]]
        assert ids[0] == hot[w], (w, ids)
        assert hot[1 - w] not in ids, f"worker {w} knows the other worker's readers' item: {ids}"
        served.add(w)
    assert served == {0, 1}


def test_two_workers_on_one_qdrant_server_index_each_item_once_and_both_serve_lists(
    worker_env: WorkerEnv, qdrant_server: LocalQdrantServer
) -> None:
    worker_env.use_qdrant_server(qdrant_server)
    # Both become ready, although the items topic's one partition goes to one of them only.
    workers = [
        worker_env.start_worker("--no-encoder", "--dim", str(DIM), store_path=worker_env.tmp / f"store-{w}")
        for w in range(2)
    ]
    items = topic_items()
    worker_env.produce_json(worker_env.topics["items"], "item_id", items)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(
        w.metrics().sum("xrec_items_total", outcome="upserted") for w in workers
    ) < len(items):
        time.sleep(0.3)
    time.sleep(2)  # a second copy of any item would be upserted by now
    upserted = [w.metrics().sum("xrec_items_total", outcome="upserted") for w in workers]
    assert sum(upserted) == len(items), f"upserts per worker {upserted}: each item once in all"

    users = [f"S{u}" for u in range(12)]  # keyed by user: spread over both events partitions
    clicks = [click(u, f"T{k % TOPICS}-{k % 8}", 0) for k, u in enumerate(users)]
    worker_env.produce_json(worker_env.topics["events"], "user_id", clicks)
    lists = {c["user_id"]: latest_list(worker_env, c["user_id"], c["event_id"]) for c in clicks}
    for c in clicks:
        topic = c["item_id"].split("-")[0]
        assert all(i["item_id"].startswith(topic) for i in lists[c["user_id"]]["items"][:5]), lists[c["user_id"]]
    published = [w.metrics().sum("xrec_lists_published_total") for w in workers]
    assert all(n > 0 for n in published), f"lists per worker {published}: both serve their users"
    assert sum(published) == len(clicks)
