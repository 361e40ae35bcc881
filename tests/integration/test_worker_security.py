"""A real worker's secrets and listening address: against a broker that requires SASL/PLAIN, the
worker authenticates with the password from ``XREC_KAFKA_SASL_PASSWORD`` (topic creation through the
admin client included) and neither its log nor /metrics shows it or the Qdrant API key; its web port
answers only on ``XREC_WEB_HOST``.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import WorkerEnv, WorkerProcess
from tests.integration.test_faults import WORKER_ARGS, isolated_env
from xrec.broker import LocalBroker, SaslPlainUser, default_cache_dir, free_port
from xrec.config import Settings
from xrec.kafka import aiokafka_kwargs, run_blocking

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

USER = "xrec-worker"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalBroker, str]]:
    password = "pw-" + secrets.token_urlsafe(16)
    broker = LocalBroker(
        port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka-sasl-worker"),
        cache_dir=default_cache_dir(Settings.from_env()),
        sasl=SaslPlainUser(USER, password),
    )
    broker.start()
    try:
        yield broker, password
    finally:
        broker.stop()


def test_a_sasl_worker_authenticates_and_never_shows_its_secrets_in_logs_or_metrics(
    sasl_broker: tuple[LocalBroker, str], tmp_path: Path
) -> None:
    broker, password = sasl_broker
    qdrant_key = "qk-" + secrets.token_urlsafe(16)
    env = WorkerEnv(bootstrap=broker.bootstrap, tmp=tmp_path, env=isolated_env(broker.bootstrap, "sasl"))
    env.env.update(
        XREC_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        XREC_KAFKA_SASL_MECHANISM="PLAIN",
        XREC_KAFKA_SASL_USERNAME=USER,
        XREC_KAFKA_SASL_PASSWORD=password,
        XREC_QDRANT_API_KEY=qdrant_key,
    )
    try:
        worker = env.start_worker(*WORKER_ARGS)  # ready: topics created and group joined over SASL
        event = {"event_id": "s1", "user_id": "S", "item_id": "I0", "type": "click", "ts": int(time.time() * 1000)}
        settings = Settings.from_env(env.env)
        processed = _send_and_count(worker, settings, env.topics["events"], event)
        pages = {path: _get(worker, path) for path in ("/metrics", "/readyz", "/healthz", "/recommendations/S")}
        worker.stop()
        log = worker.log_path.read_text(errors="replace")
        print(
            f"\n[secrets] SASL worker ready; it took {processed:.0f} event sent over SASL (dead-lettered: unknown item); "
            f"log {len(log)} chars and {len(pages)} pages checked for the password and the Qdrant key"
        )
        assert "'kafka_sasl_password': '***'" in log and "'qdrant_api_key': '***'" in log  # logged, masked
        for text in [log, *pages.values()]:
            assert password not in text and qdrant_key not in text
    finally:
        for w in env.workers:
            w.stop()


def _send_and_count(worker: WorkerProcess, settings: Settings, topic: str, event: dict[str, object]) -> float:
    """Send one event over SASL; it names an unknown item, so the worker dead-letters it after its wait."""
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(**aiokafka_kwargs(settings))
        await producer.start()
        try:
            await producer.send_and_wait(topic, orjson.dumps(event), key=b"S")
        finally:
            await producer.stop()

    run_blocking(send, timeout_s=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "xrec_events_total" in (metrics := _get(worker, "/metrics")):
            total = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("xrec_events_total{") and 'outcome="processed"' not in line
            )
            if total >= 1:
                return total
        time.sleep(0.5)
    raise AssertionError(f"the worker did not take the event:\n{worker.log_tail()}")


def _get(worker: WorkerProcess, path: str, host: str = "127.0.0.1") -> str:
    try:
        with urllib.request.urlopen(f"http://{host}:{worker.web_port}{path}", timeout=5) as resp:
            return resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.read().decode(errors="replace")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _loopback_alias_usable() -> bool:
    """127.0.0.2 is loopback on Linux; elsewhere it may not be configured."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _loopback_alias_usable(), reason="127.0.0.2 is not a usable loopback address here")
def test_the_web_port_answers_only_on_the_configured_address(worker_env: WorkerEnv) -> None:
    local = worker_env.start_worker(*WORKER_ARGS, XREC_WEB_HOST="127.0.0.1")
    other = worker_env.start_worker(
        *WORKER_ARGS, store_path=worker_env.tmp / "store-2", wait=False, XREC_WEB_HOST="127.0.0.2"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _answers("127.0.0.2", other.web_port):
        assert other.exited() is None, other.log_tail()
        time.sleep(0.5)
    figures = {
        "bound 127.0.0.1, asked on 127.0.0.1": _answers("127.0.0.1", local.web_port),
        "bound 127.0.0.1, asked on 127.0.0.2": _answers("127.0.0.2", local.web_port),
        "bound 127.0.0.2, asked on 127.0.0.2": _answers("127.0.0.2", other.web_port),
        "bound 127.0.0.2, asked on 127.0.0.1": _answers("127.0.0.1", other.web_port),
    }
    print("\n[web bind] " + json.dumps(figures))
    assert figures == {
        "bound 127.0.0.1, asked on 127.0.0.1": True,
        "bound 127.0.0.1, asked on 127.0.0.2": False,
        "bound 127.0.0.2, asked on 127.0.0.2": True,
        "bound 127.0.0.2, asked on 127.0.0.1": False,
    }
    assert '"ready"' in _get(other, "/readyz", host="127.0.0.2")
