"""Real worker processes for integration tests: each test gets its own topics, app id and store.

The workers are ``xrec.worker_process.WorkerProcess``, the harness the demo and the benchmark use.

``worker_env`` names everything uniquely, so tests share the session broker without seeing each
other's records; ``start_worker`` runs ``xrec worker`` as a subprocess and waits for /readyz.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from xrec.broker import free_port
from xrec.config import Settings
from xrec.modelhub import DEFAULT_MODEL_ID, default_model_dir
from xrec.store.local_server import LocalQdrantServer
from xrec.topics import own_topics_env
from xrec.worker_process import WORKER_COMMAND, WorkerProcess

READY_TIMEOUT_S = 180.0


@dataclass
class WorkerEnv:
    """Names for one test: topics, app id, store path; shared by the workers a test starts."""

    bootstrap: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        return {k.removeprefix("XREC_TOPIC_").lower(): v for k, v in self.env.items() if k.startswith("XREC_TOPIC_")}

    def start_worker(
        self, *args: str, store_path: Path | None = None, wait: bool = True, **extra_env: str
    ) -> WorkerProcess:
        port = free_port()
        env = {**os.environ, **self.env, "XREC_WEB_PORT": str(port), **extra_env}
        env["XREC_STORE_PATH"] = str(store_path or self.tmp / "store")
        # Local state beside the store, so each concurrent worker has its own and a restart finds its own.
        env.setdefault("XREC_STATE_DIR", env["XREC_STORE_PATH"] + "-state")
        log_path = self.tmp / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(env, log_path, port, [*WORKER_COMMAND, *args]).start()
        self.workers.append(worker)
        if wait:
            worker.wait_ready(READY_TIMEOUT_S)
        return worker

    def use_qdrant_server(self, server: LocalQdrantServer) -> None:
        """Workers started from now on keep their items in a collection of their own on ``server``."""
        self.env.update(
            XREC_STORE_BACKEND="qdrant",
            XREC_QDRANT_URL=server.url,
            XREC_QDRANT_GRPC_PORT=str(server.grpc_port),
            XREC_QDRANT_API_KEY=server.api_key,
            XREC_COLLECTION=f"items-{uuid.uuid4().hex[:8]}",
        )

    # --- Kafka helpers ------------------------------------------------------------------------
    def produce(self, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
            await producer.start()
            try:
                for key, value in records:
                    await producer.send(topic, key=key, value=value)
                await producer.flush()
            finally:
                await producer.stop()

        asyncio.run(send())

    def produce_json(self, topic: str, key_field: str, objs: list[dict[str, Any]]) -> None:
        self.produce(topic, [(str(o[key_field]).encode(), orjson.dumps(o)) for o in objs])

    def consume(
        self,
        topic: str,
        until: Callable[[list[Any]], bool],
        timeout_s: float = 60.0,
    ) -> list[Any]:
        """Read ``topic`` from the beginning until ``until(messages)`` holds or the timeout passes."""

        async def read() -> list[Any]:
            consumer = AIOKafkaConsumer(
                topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", group_id=None
            )
            await consumer.start()
            messages: list[Any] = []
            try:
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline and not until(messages):
                    batch = await consumer.getmany(timeout_ms=500)
                    for part in batch.values():
                        messages.extend(part)
            finally:
                await consumer.stop()
            return messages

        return asyncio.run(read())


@pytest.fixture(scope="module")
def model_ready() -> None:
    """Workers with the real encoder need the default model; ``./run test`` prepares it first."""
    path = default_model_dir(Settings.from_env())
    if not path.exists():
        pytest.fail(f"{DEFAULT_MODEL_ID} is not prepared in {path}: run `xrec model prepare` (./run test does)")


@pytest.fixture
def worker_env(kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerEnv]:
    tag = uuid.uuid4().hex[:8]
    env = {
        "XREC_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "XREC_APP_ID": f"xrec-test-{tag}",
        "XREC_PARTITIONS": "2",
        "XREC_BATCH_WITHIN_MS": "20",
        "XREC_UNKNOWN_ITEM_WAIT_S": "2",
        **own_topics_env(tag),
    }
    we = WorkerEnv(bootstrap=kafka_bootstrap, tmp=tmp_path, env=env)
    try:
        yield we
    finally:
        for worker in we.workers:
            worker.stop()


def lists_for(messages: list[Any], user_id: str) -> list[dict[str, Any] | None]:
    """Lists (or None for tombstones) published for one user, oldest first."""
    return [orjson.loads(m.value) if m.value is not None else None for m in messages if m.key == user_id.encode()]
