"""The local broker as a user drives it (``xrec broker …``), and the Kafka features xrec relies on."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from xrec.broker import (
    BrokerError,
    LocalBroker,
    default_cache_dir,
    free_port,
    kafka_java_pids,
    pid_alive,
)
from xrec.config import Settings
from xrec.kafka import TopicSpec, create_topics, run_blocking

REPO = Path(__file__).resolve().parents[2]
XREC = [sys.executable, "-c", "import sys; from xrec.cli import main; sys.exit(main())"]  # the console script, as run
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _cli_env(path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XREC_KAFKA_BOOTSTRAP"}
    env["XREC_HOME"] = str(Settings.from_env().home_path)  # the machine's jar cache
    if path is not None:
        env["PATH"] = path
    return env


def _xrec_broker(action: str, port: int, data_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    args = ["broker", action, "--port", str(port), "--data-dir", str(data_dir), "--json"]
    done = subprocess.run([*XREC, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=540, check=False)
    assert done.returncode == 0, f"xrec broker {action} failed:\n{done.stdout}\n{done.stderr}"
    return dict(json.loads(done.stdout))


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _read_all(
    bootstrap: str, topic: str, *, expect: int, committed_only: bool = False
) -> list[tuple[bytes | None, bytes | None]]:
    """Read a topic from the beginning until ``expect`` records arrived or 20 s of silence."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes | None]] = []
    try:
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=1000)
            records += [(m.key, m.value) for msgs in batch.values() for m in msgs]
            if len(records) >= expect:
                break
    finally:
        await consumer.stop()
    return records


async def _read_to_end(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of partition 0 up to its current end offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        records: list[tuple[bytes | None, bytes | None]] = []
        while await consumer.position(partition) < end:
            batch = await consumer.getmany(partition, timeout_ms=1000)
            records += [(m.key, m.value) for m in batch.get(partition, [])]
        return records
    finally:
        await consumer.stop()


def _dir_without_maven(tmp_path: Path) -> str:
    """A PATH holding only ``java``: a start that tried to run Maven would fail."""
    java = subprocess.run(["sh", "-c", "command -v java"], capture_output=True, text=True, check=True).stdout.strip()
    bin_dir = tmp_path / "bin-java-only"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(java)
    return str(bin_dir)


def test_broker_starts_round_trips_stops_and_restarts_with_its_data(tmp_path: Path) -> None:
    port, data_dir = free_port(), tmp_path / "broker"
    env = _cli_env()
    try:
        started = _xrec_broker("start", port, data_dir, env)
        assert started["running"] and started["already_running"] is False and started["formatted"] is True
        assert started["version"] == Settings.from_env().kafka_version and started["port"] == port
        pid = started["pid"]

        status = _xrec_broker("status", port, data_dir, env)
        assert status["running"] and status["pid"] == pid and status["data_dir"] == str(data_dir.resolve())

        again = _xrec_broker("start", port, data_dir, env)
        assert again["already_running"] is True and again["pid"] == pid

        bootstrap = started["bootstrap"]
        topic, key, value = f"roundtrip-{uuid.uuid4().hex[:8]}", b"U1", "héllo wörld".encode()
        assert run_blocking(lambda: create_topics(bootstrap, [TopicSpec(topic)])) == [topic]
        run_blocking(lambda: _produce(bootstrap, topic, key, value))
        assert run_blocking(lambda: _read_all(bootstrap, topic, expect=1)) == [(key, value)]

        stopped = _xrec_broker("stop", port, data_dir, env)
        assert stopped["was_running"] is True and stopped["running"] is False
        assert not pid_alive(pid)
        assert kafka_java_pids(data_dir) == []

        # Maven is not on this PATH: the restart must come from the cache and the formatted data dir.
        restarted = _xrec_broker("start", port, data_dir, _cli_env(path=_dir_without_maven(tmp_path)))
        assert restarted["downloaded"] is False and restarted["formatted"] is False and restarted["pid"] != pid
        assert run_blocking(lambda: _read_all(bootstrap, topic, expect=1)) == [(key, value)]

        _xrec_broker("stop", port, data_dir, env)
        assert kafka_java_pids(data_dir) == []
    finally:
        LocalBroker(port, data_dir, default_cache_dir(Settings.from_env())).stop()


def test_start_refuses_a_port_another_process_holds(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = LocalBroker(port, tmp_path / "broker", default_cache_dir(Settings.from_env()))
        with pytest.raises(BrokerError, match=f"port {port} .* in use"):
            broker.start()
    assert kafka_java_pids(tmp_path / "broker") == []


async def test_transactions_commit_and_abort_on_the_pinned_broker(kafka_bootstrap: str, unique_topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(unique_topic, b"committed")
        await producer.begin_transaction()
        await producer.send_and_wait(unique_topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(unique_topic, b"committed again")
    finally:
        await producer.stop()
    records = await _read_all(kafka_bootstrap, unique_topic, expect=2, committed_only=True)
    assert [value for _, value in records] == [b"committed", b"committed again"]
    everything = await _read_all(kafka_bootstrap, unique_topic, expect=3)
    assert b"aborted" in [value for _, value in everything]


async def test_create_topics_is_idempotent_and_compacts_when_asked(kafka_bootstrap: str) -> None:
    name = f"compacted-{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name, partitions=3, compacted=True, config={"min.cleanable.dirty.ratio": "0.1"})
    assert await create_topics(kafka_bootstrap, [spec]) == [name]
    assert await create_topics(kafka_bootstrap, [spec]) == []

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([name])
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 3
    configs = {entry[0]: entry[1] for entry in responses[0].resources[0][4]}
    assert configs["cleanup.policy"] == "compact"
    assert configs["min.cleanable.dirty.ratio"] == "0.1"


async def test_connected_clients_resume_by_themselves_after_the_broker_restarts(tmp_path: Path) -> None:
    broker = LocalBroker(free_port(), tmp_path / "broker", default_cache_dir(Settings.from_env()))
    await asyncio.to_thread(broker.start)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="restart", auto_offset_reset="earliest")
    try:
        topic = f"restart-{uuid.uuid4().hex[:8]}"
        await create_topics(broker.bootstrap, [TopicSpec(topic)])
        await producer.start()
        await consumer.start()
        consumer.subscribe([topic])
        await producer.send_and_wait(topic, b"before")
        assert (await asyncio.wait_for(consumer.getone(), 60)).value == b"before"

        await asyncio.to_thread(broker.stop)  # same port, same data dir: TIME_WAIT sockets must not block it
        report = await asyncio.to_thread(broker.start)
        assert report.formatted is False and report.status.port == broker.port

        await asyncio.wait_for(producer.send_and_wait(topic, b"after"), 60)
        assert (await asyncio.wait_for(consumer.getone(), 60)).value == b"after"
    finally:
        await consumer.stop()
        await producer.stop()
        await asyncio.to_thread(broker.stop)
    assert kafka_java_pids(broker.data_dir) == []


async def test_the_log_cleaner_compacts_a_compacted_topic_within_the_small_heap(kafka_bootstrap: str) -> None:
    topic = f"compaction-{uuid.uuid4().hex[:8]}"
    quick = {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "100"}
    await create_topics(kafka_bootstrap, [TopicSpec(topic, compacted=True, config=quick)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(200):
            await producer.send_and_wait(topic, f"v{i}".encode(), key=b"same-key")
        remaining: list[tuple[bytes | None, bytes | None]] = []
        for _ in range(24):  # the cleaner runs every 15 s by default; a new record rolls the last segment
            await asyncio.sleep(5)
            await producer.send_and_wait(topic, b"roll", key=b"other-key")
            remaining = await _read_to_end(kafka_bootstrap, topic)
            if len([r for r in remaining if r[0] == b"same-key"]) < 10:
                break
    finally:
        await producer.stop()
    same_key = [value for key, value in remaining if key == b"same-key"]
    assert len(same_key) < 10, f"{len(same_key)} of 200 records of one key still there: the cleaner did not run"
    assert same_key[-1] == b"v199"
