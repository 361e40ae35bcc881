"""Producers that are not ours: librdkafka (confluent-kafka) writes, a running worker reads, librdkafka reads back.

What users' services send: every compression codec, keyed and unkeyed records, headers, a
transaction committed and one aborted, a null value and a large compressed record batch. The worker
runs without an encoder (items carry their vectors), on the session's real broker. Afterwards the
lists, the forget_user tombstone and the dead letters are read with librdkafka too; the worker must
never have stopped, and nothing of the aborted transaction may show anywhere.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest

from tests.integration.conftest import WorkerEnv, WorkerProcess
from tests.integration.test_faults import WORKER_ARGS, make_items, metric_sum, stored_profiles, wait_for
from xrec.config import Settings

confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka (librdkafka) is a dev dependency")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
BIG_BATCH_EVENTS = 4000  # ~1 KB each: a ~4 MB record batch before zstd


def librdkafka_producer(bootstrap: str, **config: Any) -> Any:
    return confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, **config})


def produce_all(producer: Any, topic: str, records: list[tuple[bytes | None, bytes | None, list[Any] | None]]) -> None:
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
    assert producer.flush(60) == 0
    assert failures == []


def read_all(bootstrap: str, topic: str, until: Any, timeout_s: float = 120.0) -> list[Any]:
    """Records of ``topic`` read with librdkafka from the start until ``until(records)`` holds."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"conformance-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(records):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                records.append(msg)
    finally:
        consumer.close()
    return records


def event(event_id: str, user: str, item: str, **extra: Any) -> bytes:
    ts = int(time.time() * 1000) - 60_000
    return orjson.dumps({"event_id": event_id, "user_id": user, "item_id": item, "type": "click", "ts": ts, **extra})


def users_with_lists(records: list[Any]) -> set[str]:
    return {m.key().decode() for m in records if m.key() is not None and m.value() is not None}


def test_a_worker_serves_what_librdkafka_producers_send_and_librdkafka_reads_its_output(
    worker_env: WorkerEnv,
) -> None:
    env, bootstrap, topics = worker_env, worker_env.bootstrap, worker_env.topics
    worker: WorkerProcess = env.start_worker(*WORKER_ARGS)
    items = make_items()

    # Items: a fifth of the catalog per codec, keyed by item id; one transaction committed, one aborted.
    for i, codec in enumerate(CODECS):
        part = [it for j, it in enumerate(items) if j % len(CODECS) == i]
        produce_all(
            librdkafka_producer(bootstrap, **{"compression.type": codec}),
            topics["items"],
            [(it["item_id"].encode(), orjson.dumps(it), None) for it in part],
        )
    aborted_item = {**items[0], "item_id": "ABORTED-ITEM"}
    transactional = librdkafka_producer(bootstrap, **{"transactional.id": f"conf-{uuid.uuid4().hex[:8]}"})
    transactional.init_transactions(30)
    transactional.begin_transaction()
    produce_all(transactional, topics["items"], [(b"ABORTED-ITEM", orjson.dumps(aborted_item), None)])
    transactional.abort_transaction(30)
    wait_for("items indexed", lambda: metric_sum(worker, "xrec_items_indexed") >= len(items), 90, worker)

    # Events: one user per codec, keyed; an unkeyed one; one with headers; a committed and an aborted
    # transaction; a null value; a large zstd batch.
    per_codec = {codec: f"U-{codec}" for codec in CODECS}
    for codec, user in per_codec.items():
        produce_all(
            librdkafka_producer(bootstrap, **{"compression.type": codec}),
            topics["events"],
            [(user.encode(), event(f"e-{codec}-{k}", user, f"I{k}"), None) for k in range(3)],
        )
    plain = librdkafka_producer(bootstrap)
    produce_all(
        plain,
        topics["events"],
        [
            (None, event("e-unkeyed", "U-unkeyed", "I1"), None),
            (b"U-headers", event("e-headers", "U-headers", "I2"), [("trace-id", b"abc"), ("source", b"kcat")]),
            (b"k-null", None, None),
        ],
    )
    transactional.begin_transaction()
    produce_all(transactional, topics["events"], [(b"U-txn-aborted", event("e-aborted", "U-txn-aborted", "I3"), None)])
    transactional.abort_transaction(30)
    transactional.begin_transaction()
    produce_all(transactional, topics["events"], [(b"U-txn-ok", event("e-committed", "U-txn-ok", "I4"), None)])
    transactional.commit_transaction(30)
    big = librdkafka_producer(
        bootstrap,
        **{"compression.type": "zstd", "linger.ms": 1000, "batch.size": 8_000_000, "batch.num.messages": 100_000},
    )
    pad = "x" * 900
    produce_all(
        big,
        topics["events"],
        [
            (b"U-big", event(f"e-big-{k}", "U-big", f"I{k % len(items)}", pad=pad), None)
            for k in range(BIG_BATCH_EVENTS)
        ],
    )

    expected = {*per_codec.values(), "U-unkeyed", "U-headers", "U-txn-ok", "U-big"}
    lists = read_all(bootstrap, topics["recommendations"], lambda recs: expected <= users_with_lists(recs))
    assert users_with_lists(lists) >= expected, f"no list for {sorted(expected - users_with_lists(lists))}"
    processed = 3 * len(CODECS) + 3 + BIG_BATCH_EVENTS  # the per-codec, unkeyed, headers, committed and big events
    wait_for(
        "every good event processed",
        lambda: metric_sum(worker, "xrec_events_total", outcome="processed") >= processed,
        60,
        worker,
    )

    # forget_user: the tombstone reaches a librdkafka reader too.
    produce_all(
        plain, topics["control"], [(b"U-gzip", orjson.dumps({"type": "forget_user", "user_id": "U-gzip"}), None)]
    )
    tombstones = read_all(
        bootstrap,
        topics["recommendations"],
        lambda recs: any(m.key() == b"U-gzip" and m.value() is None for m in recs),
        timeout_s=60,
    )
    assert any(m.key() == b"U-gzip" and m.value() is None for m in tombstones)

    # The null value is a dead letter with its reason, read with librdkafka.
    dead = read_all(
        bootstrap, topics["dlq"], lambda recs: any(orjson.loads(m.value()).get("key") == "k-null" for m in recs)
    )
    null_letters = [orjson.loads(m.value()) for m in dead if orjson.loads(m.value()).get("key") == "k-null"]
    assert null_letters and null_letters[0]["error_class"] == "missing_field" and null_letters[0]["error"]

    # Nothing of the aborted transactions: no list, no profile, no item, and the worker never stopped.
    assert "U-txn-aborted" not in users_with_lists(lists)
    profiles = stored_profiles(bootstrap, env)
    assert "U-txn-ok" in profiles and "U-txn-aborted" not in profiles
    assert metric_sum(worker, "xrec_items_indexed") == len(items)
    assert worker.exited() is None
    assert metric_sum(worker, "xrec_events_total", outcome="processed") == processed


HIDE_CRAMJAM = (
    "import sys\nsys.modules['cramjam'] = None  # this worker's Kafka client cannot read snappy, lz4 or zstd\n"
)


def test_a_consumer_loop_that_cannot_go_on_is_logged_counted_unready_and_ends_the_worker_with_one_line(
    worker_env: WorkerEnv, tmp_path: Any
) -> None:
    """The injected failure is a real one: a worker whose Kafka client lacks the snappy codec meets a
    snappy record batch on the items topic (what a missing cramjam did before it was a dependency)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_CRAMJAM)
    worker = worker_env.start_worker(*WORKER_ARGS, PYTHONPATH=str(site), XREC_CONSUMER_MAX_FAILURES="3")
    item = make_items(1)[0]
    produce_all(
        librdkafka_producer(worker_env.bootstrap, **{"compression.type": "snappy"}),
        worker_env.topics["items"],
        [(b"I0", orjson.dumps(item), None)],
    )

    def failing_and_unready() -> bool:
        status, body = worker.get_json("/readyz") if worker.alive() else (0, {})
        return status == 503 and "encode" in body.get("failing", {}) and not body["checks"]["consumer_loops"]

    # The items topic is read by the item encoder's loop (``encode``, streams/encoding.py).
    wait_for("/readyz naming the failing item encoder loop", failing_and_unready, 60, worker)
    assert metric_sum(worker, "xrec_consumer_failures_total", consumer="encode") >= 1
    assert worker.wait(120) == 3  # exits on its own, non-zero, after three failures in a row
    log = worker.log_path.read_text(errors="replace")
    assert "cannot read snappy/lz4/zstd-compressed records: pip install cramjam" in log
    failures = [ln for ln in log.splitlines() if "encode failed (" in ln and "ERROR" in ln]
    assert failures and f"reading {worker_env.topics['items']} partitions [0]" in failures[0]
    assert "UnsupportedCodecError" in failures[0]
    last = log.strip().splitlines()[-1]
    assert last.startswith("xrec worker: encode failed 3 times in a row, last: ConsumerLoopError"), last


def test_a_batch_fausts_consumer_cannot_read_ends_the_worker_non_zero_with_one_line(
    worker_env: WorkerEnv, tmp_path: Any
) -> None:
    """Events are read by Faust's consumer: an undecodable batch there crashes its fetcher. The worker
    must not hang or exit 0; its last line says why."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_CRAMJAM)
    worker = worker_env.start_worker(*WORKER_ARGS, PYTHONPATH=str(site))
    produce_all(
        librdkafka_producer(worker_env.bootstrap, **{"compression.type": "snappy"}),
        worker_env.topics["events"],
        [(b"U1", event("e1", "U1", "I0"), None)],
    )
    assert worker.wait(120) != 0
    last = worker.log_path.read_text(errors="replace").strip().splitlines()[-1]
    assert last.startswith("xrec worker: Faust stopped after a crash: UnsupportedCodecError"), last


def test_the_java_clients_console_producer_with_its_default_settings_is_served(worker_env: WorkerEnv) -> None:
    """Kafka's own Java client, as `kafka-console-producer` runs it (idempotent, its default batching),
    from the jars of the suite's broker; keys parsed from `key|value` lines."""
    import subprocess
    import zipfile

    from xrec.broker import default_cache_dir, find_java, kafka_libs

    settings = Settings.from_env()
    libs = kafka_libs(default_cache_dir(settings), settings.kafka_version)
    core = next(libs.glob("kafka_2.13-*.jar"), None)
    if core is None or "kafka/tools/ConsoleProducer.class" not in zipfile.ZipFile(core).namelist():
        pytest.skip(f"no kafka.tools.ConsoleProducer in the Kafka {settings.kafka_version} jars the suite fetched")
    worker = worker_env.start_worker(*WORKER_ARGS)
    items = make_items()

    def console_produce(topic: str, lines: list[str]) -> None:
        cmd = [
            find_java(), "-cp", f"{libs}/*", "kafka.tools.ConsoleProducer",
            "--bootstrap-server", worker_env.bootstrap, "--topic", topic,
            "--property", "parse.key=true", "--property", "key.separator=|",
        ]  # fmt: skip
        done = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]

    console_produce(worker_env.topics["items"], [f"{it['item_id']}|{orjson.dumps(it).decode()}" for it in items])
    wait_for("items indexed", lambda: metric_sum(worker, "xrec_items_indexed") >= len(items), 90, worker)
    users = [f"U-java-{k}" for k in range(3)]
    console_produce(
        worker_env.topics["events"],
        [f"{u}|{event(f'e-java-{u}-{j}', u, f'I{j}').decode()}" for u in users for j in range(2)],
    )
    lists = read_all(
        worker_env.bootstrap, worker_env.topics["recommendations"], lambda r: set(users) <= users_with_lists(r)
    )
    assert set(users) <= users_with_lists(lists)
    assert worker.exited() is None
