"""The local broker's configuration and its checks, without starting Java or Maven."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xrec.broker import (
    KAFKA_VERSION,
    BrokerError,
    LocalBroker,
    SaslPlainUser,
    ensure_broker,
    fetch_kafka,
    find_maven,
    jars_cached,
    kafka_libs,
    new_cluster_id,
    parse_java_version,
    render_pom,
    render_server_properties,
)
from xrec.config import Settings


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "11.0.22" 2024-01-16 LTS', 11),
    ],
)
def test_java_versions_are_read_from_java_version_output(output: str, major: int) -> None:
    assert parse_java_version(output) == major


def test_unreadable_java_version_output_is_an_error() -> None:
    with pytest.raises(BrokerError, match="cannot read the Java version"):
        parse_java_version("command not found")


def test_server_properties_fit_one_node_on_loopback_only(tmp_path: Path) -> None:
    props = properties(render_server_properties(port=19092, controller_port=19093, log_dir=tmp_path))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    assert int(props["log.cleaner.dedupe.buffer.size"]) < 128 * 1024 * 1024  # fits the small heap
    assert props["log.dirs"] == str(tmp_path)
    assert "sasl.enabled.mechanisms" not in props


def test_a_sasl_broker_has_only_a_sasl_client_listener(tmp_path: Path) -> None:
    user = SaslPlainUser("alice", "pw-123")
    props = properties(render_server_properties(port=1, controller_port=2, log_dir=tmp_path, sasl=user))
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2"
    assert props["sasl.enabled.mechanisms"] == "PLAIN"
    assert 'user_alice="pw-123"' in props["listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    assert "pw-123" not in repr(user)


@pytest.mark.parametrize("password", ["", 'with"quote', "back\\slash", "new\nline"])
def test_sasl_passwords_that_would_break_the_jaas_line_are_refused(password: str) -> None:
    with pytest.raises(BrokerError, match="SASL password"):
        SaslPlainUser("alice", password)


def test_the_pom_pins_kafka_and_the_tarballs_logging_backend() -> None:
    pom = render_pom()
    assert f"<artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version>" in pom
    assert "<artifactId>slf4j-reload4j</artifactId>" in pom and "<artifactId>reload4j</artifactId>" in pom


def test_cluster_ids_look_like_kafkas() -> None:
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_a_half_finished_fetch_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = kafka_libs(tmp_path)
    libs.mkdir(parents=True)
    (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").write_bytes(b"partial")
    assert not jars_cached(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no mvn: the fetch must be retried, and fail plainly
    with pytest.raises(BrokerError, match="mvn not found"):
        fetch_kafka(tmp_path)


def test_a_completed_fetch_is_reused_without_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka_libs(tmp_path).mkdir(parents=True)
    (tmp_path / KAFKA_VERSION / ".complete").write_text(json.dumps({"version": KAFKA_VERSION}))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(BrokerError):
        find_maven()
    assert fetch_kafka(tmp_path) == (kafka_libs(tmp_path), False)


def test_missing_java_is_said_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(BrokerError, match="java not found"):
        LocalBroker(19092, tmp_path / "data", tmp_path / "cache").start()


def test_ensure_broker_uses_an_existing_cluster_without_starting_anything(tmp_path: Path) -> None:
    settings = Settings.from_env({}, kafka_bootstrap="kafka.example:9092", home=str(tmp_path))
    assert ensure_broker(settings) == "kafka.example:9092"
    assert list(tmp_path.iterdir()) == []


def test_the_local_broker_takes_sasl_plain_from_settings_and_refuses_ssl(tmp_path: Path) -> None:
    sasl = Settings.from_env(
        {},
        home=str(tmp_path),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="alice",
        kafka_sasl_password="pw",
    )
    broker = LocalBroker.from_settings(sasl, port=4242)
    assert broker.sasl == SaslPlainUser("alice", "pw")
    assert broker.status().security_protocol == "SASL_PLAINTEXT" and not broker.status().running
    with pytest.raises(BrokerError, match="PLAINTEXT or SASL_PLAINTEXT"):
        LocalBroker.from_settings(sasl.replace(kafka_security_protocol="SSL"))


def test_kafka_4_gets_log4j2_and_its_config_format() -> None:
    from xrec.broker import KAFKA4_VERSION, render_log4j2, uses_log4j2

    pom = render_pom(KAFKA4_VERSION)
    assert f"<artifactId>kafka_2.13</artifactId><version>{KAFKA4_VERSION}</version>" in pom
    assert "<artifactId>log4j-slf4j2-impl</artifactId>" in pom and "reload4j" not in pom
    assert uses_log4j2("4.0.1") and not uses_log4j2(KAFKA_VERSION)
    assert "appender.file.type=RollingFile" in render_log4j2(Path("/tmp/server.log"))
