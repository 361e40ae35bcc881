"""SASL/PLAIN settings pass through to aiokafka, the admin client and Faust, against a real broker that requires them."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from tests.integration.test_faust_smoke import forward_one_record
from xrec.broker import LocalBroker, SaslPlainUser, default_cache_dir, free_port
from xrec.config import Settings
from xrec.kafka import (
    KafkaConnection,
    KafkaUnreachableError,
    TopicSpec,
    aiokafka_kwargs,
    check_connection,
    create_topics,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

USER = "xrec-client"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalBroker, str]]:
    """A second local broker whose only client listener is SASL_PLAINTEXT with one PLAIN user."""
    password = "pw-" + secrets.token_urlsafe(12)
    broker = LocalBroker(
        port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka-sasl"),
        cache_dir=default_cache_dir(Settings.from_env()),
        sasl=SaslPlainUser(USER, password),
    )
    broker.start()
    try:
        yield broker, password
    finally:
        broker.stop()


def _settings(broker: LocalBroker, password: str) -> Settings:
    return Settings.from_env(
        kafka_bootstrap=broker.bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=USER,
        kafka_sasl_password=password,
    )


async def test_client_built_from_settings_round_trips_a_record_over_sasl(sasl_broker: tuple[LocalBroker, str]) -> None:
    broker, password = sasl_broker
    settings = _settings(broker, password)
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    assert await create_topics(settings, [TopicSpec(topic)]) == [topic]  # the admin client authenticates too

    producer = AIOKafkaProducer(**aiokafka_kwargs(settings))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"secret-free payload", key=b"U1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **aiokafka_kwargs(settings), auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"U1", b"secret-free payload")


async def test_a_wrong_password_is_refused_with_an_authentication_error(
    sasl_broker: tuple[LocalBroker, str], caplog: pytest.LogCaptureFixture
) -> None:
    broker, password = sasl_broker
    wrong = _settings(broker, password + "-wrong")
    with pytest.raises(KafkaUnreachableError, match="SaslAuthenticationFailed: Authentication failed") as caught:
        await check_connection(wrong)
    assert f"user={USER}" in str(caught.value) and password not in str(caught.value)

    producer = AIOKafkaProducer(**aiokafka_kwargs(wrong), request_timeout_ms=10000)
    with pytest.raises(KafkaConnectionError):
        try:
            await producer.start()
        finally:
            await producer.stop()
    assert "Authentication failed: Invalid username or password" in caplog.text
    assert password not in caplog.text


async def test_the_right_password_passes_the_connection_check(sasl_broker: tuple[LocalBroker, str]) -> None:
    broker, password = sasl_broker
    await check_connection(_settings(broker, password))


async def test_a_plaintext_client_cannot_use_the_sasl_listener(sasl_broker: tuple[LocalBroker, str]) -> None:
    broker, _ = sasl_broker
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
    with pytest.raises(KafkaError):
        try:
            await producer.start()
        finally:
            await producer.stop()


def test_faust_worker_connects_with_sasl_credentials_from_settings(
    sasl_broker: tuple[LocalBroker, str], tmp_path: Path
) -> None:
    broker, password = sasl_broker
    connection = KafkaConnection.from_settings(_settings(broker, password))
    env = {
        "XREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "XREC_KAFKA_SASL_MECHANISM": "PLAIN",
        "XREC_KAFKA_SASL_USERNAME": USER,
        "XREC_KAFKA_SASL_PASSWORD": password,
    }
    _, offset = asyncio.run(forward_one_record(connection, env, tmp_path, "at_least_once"))
    assert offset == 1
    worker_logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert password not in worker_logs


def test_the_broker_log_and_status_never_show_the_password(sasl_broker: tuple[LocalBroker, str]) -> None:
    broker, password = sasl_broker
    assert password not in broker.log_file.read_text(errors="replace")
    assert password not in repr(broker.sasl) and password not in str(broker.status().to_dict())
