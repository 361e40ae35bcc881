"""A Faust worker, configured through ``xrec.kafka`` from Settings, consumes a record and commits its offset.

The worker runs as a child process (``faust.Worker`` owns its event loop and signal handlers, so a
subprocess is the robust way to boot and stop it from a test); ``run_forwarder_worker`` is that
child's entry point and is reused by the SASL test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streams.app import faust_broker_kwargs
from xrec.config import Settings
from xrec.kafka import KafkaConnection, TopicSpec, create_topics

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run_forwarder_worker() -> None:
    """Child process: ``python -c '…run_forwarder_worker()' APP_ID SOURCE SINK DATADIR GUARANTEE``.

    The agent forwards each record of SOURCE to SINK with a ``seen:`` prefix; Kafka settings come
    from the ``XREC_*`` variables like any worker of the project.
    """
    import faust

    app_id, source, sink, datadir, guarantee = sys.argv[1:6]
    app = faust.App(
        app_id,
        **faust_broker_kwargs(Settings.from_env()),
        store="memory://",
        web_enabled=False,
        datadir=datadir,
        processing_guarantee=guarantee,
        broker_commit_interval=0.5,
        topic_replication_factor=1,
        topic_partitions=1,
    )
    source_topic = app.topic(source, value_serializer="raw")
    sink_topic = app.topic(sink, value_serializer="raw")

    @app.agent(source_topic)
    async def forward(stream):  # type: ignore[no-untyped-def]
        async for value in stream:
            await sink_topic.send(value=b"seen:" + value)

    faust.Worker(app, loglevel="info").execute_from_commandline()


@contextmanager
def forwarder_worker(
    connection: KafkaConnection,
    env_extra: dict[str, str],
    tmp_path: Path,
    app_id: str,
    source: str,
    sink: str,
    guarantee: str,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Start the child worker, yield it with its log file, and stop it (SIGTERM, then SIGKILL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XREC_KAFKA_")}
    env.update(env_extra, XREC_KAFKA_BOOTSTRAP=connection.bootstrap_string)
    log_file = tmp_path / f"{app_id}.log"
    code = "from tests.integration.test_faust_smoke import run_forwarder_worker; run_forwarder_worker()"
    args = [sys.executable, "-c", code, app_id, source, sink, str(tmp_path / f"{app_id}-data"), guarantee]
    with log_file.open("wb") as out:
        worker = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield worker, log_file
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)


async def committed_offset(connection: KafkaConnection, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(**connection.aiokafka_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return max((meta.offset for tp, meta in offsets.items() if tp.topic == topic), default=-1)


async def forward_one_record(
    connection: KafkaConnection, env_extra: dict[str, str], tmp_path: Path, guarantee: str
) -> tuple[list[bytes], int]:
    """Boot a worker, produce one record, return what reached the sink and the group's committed offset."""
    app_id = f"smoke-{guarantee}-{uuid.uuid4().hex[:8]}"
    source, sink = f"{app_id}-in", f"{app_id}-out"
    await create_topics(connection, [TopicSpec(source), TopicSpec(sink)])
    payload = uuid.uuid4().hex.encode()
    with forwarder_worker(connection, env_extra, tmp_path, app_id, source, sink, guarantee) as (worker, log_file):
        producer = AIOKafkaProducer(**connection.aiokafka_kwargs())
        await producer.start()
        try:
            await producer.send_and_wait(source, payload)
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            sink, **connection.aiokafka_kwargs(), auto_offset_reset="earliest", isolation_level="read_committed"
        )
        await consumer.start()
        received: list[bytes] = []
        offset = -1
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and worker.poll() is None:
                batch = await consumer.getmany(timeout_ms=500)
                received += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
                if received:
                    offset = await committed_offset(connection, app_id, source)
                    if offset >= 1:
                        break
        finally:
            await consumer.stop()
        log_tail = log_file.read_text(errors="replace")[-3000:]
        assert worker.poll() is None, f"the Faust worker exited with {worker.returncode}:\n{log_tail}"
    assert received == [b"seen:" + payload], f"sink got {received!r}; worker log:\n{log_tail}"
    return received, offset


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_faust_worker_consumes_a_record_and_commits_its_offset(
    kafka_bootstrap: str, tmp_path: Path, guarantee: str
) -> None:
    connection = KafkaConnection.from_settings(Settings.from_env(), bootstrap=kafka_bootstrap)
    _, offset = asyncio.run(forward_one_record(connection, {}, tmp_path, guarantee))
    assert offset == 1, f"committed offset of the source partition: {offset}"
