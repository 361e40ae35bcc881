"""Kafka client kwargs built from Settings: what aiokafka and Faust receive, and what never gets printed."""

from __future__ import annotations

import logging
import ssl

import pytest

from streams.app import faust_broker_kwargs as faust_app_kwargs
from xrec.config import Settings, SettingsError
from xrec.kafka import (
    KafkaConnection,
    KafkaSettingsError,
    TopicSpec,
    aiokafka_kwargs,
    split_bootstrap,
)

SECRET = "s3cr3t-Pa55"


def sasl_settings(**changes: str) -> Settings:
    values = {
        "kafka_bootstrap": "k1.example:9092, k2.example:9093",
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "alice",
        "kafka_sasl_password": SECRET,
        **changes,
    }
    return Settings.from_env({}, **values)


def test_plaintext_kwargs_carry_only_the_bootstrap_servers_and_protocol() -> None:
    kwargs = aiokafka_kwargs(Settings.from_env({}, kafka_bootstrap="127.0.0.1:9092"))
    assert kwargs == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}


def test_an_explicit_bootstrap_wins_over_the_settings() -> None:
    kwargs = aiokafka_kwargs(Settings.from_env({}, kafka_bootstrap="remote:9092"), bootstrap="127.0.0.1:4242")
    assert kwargs["bootstrap_servers"] == ["127.0.0.1:4242"]


def test_bootstrap_lists_accept_commas_semicolons_and_kafka_urls() -> None:
    assert split_bootstrap("a:1, b:2;kafka://c:3,") == ("a:1", "b:2", "c:3")
    assert split_bootstrap(["kafka://a:1", " b:2 "]) == ("a:1", "b:2")


def test_sasl_kwargs_pass_mechanism_user_and_password_to_aiokafka() -> None:
    kwargs = aiokafka_kwargs(sasl_settings())
    assert kwargs == {
        "bootstrap_servers": ["k1.example:9092", "k2.example:9093"],
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET,
    }


def test_protocol_and_mechanism_are_read_case_insensitively() -> None:
    kwargs = aiokafka_kwargs(sasl_settings(kafka_security_protocol="sasl_plaintext", kafka_sasl_mechanism="plain"))
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_PLAINTEXT", "PLAIN")


def test_faust_gets_every_broker_in_one_url_and_sasl_credentials() -> None:
    import faust

    kwargs = faust_app_kwargs(sasl_settings())
    assert kwargs["broker"] == "kafka://k1.example:9092;k2.example:9093"
    credentials = kwargs["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("alice", SECRET)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_PLAINTEXT"
    assert SECRET not in repr(credentials)


def test_faust_gets_no_credentials_for_plaintext() -> None:
    kwargs = faust_app_kwargs(Settings.from_env({}, kafka_bootstrap="127.0.0.1:9092"))
    assert kwargs == {"broker": "kafka://127.0.0.1:9092", "broker_credentials": None}


def test_ssl_protocols_get_a_verifying_tls_context_from_the_ca_file() -> None:
    import faust

    certifi = pytest.importorskip("certifi")
    settings = sasl_settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=certifi.where())
    context = aiokafka_kwargs(settings)["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    credentials = faust_app_kwargs(settings)["broker_credentials"]
    assert credentials.protocol.value == "SASL_SSL" and isinstance(credentials.ssl_context, ssl.SSLContext)

    ssl_only = Settings.from_env(
        {}, kafka_bootstrap="k:9093", kafka_security_protocol="SSL", kafka_ssl_cafile=certifi.where()
    )
    assert isinstance(faust_app_kwargs(ssl_only)["broker_credentials"], faust.SSLCredentials)
    assert aiokafka_kwargs(ssl_only)["security_protocol"] == "SSL"


def test_secrets_stay_out_of_repr_and_the_log_line(caplog: pytest.LogCaptureFixture) -> None:
    connection = KafkaConnection.from_settings(sasl_settings(kafka_ssl_key_password="key-" + SECRET))
    caplog.set_level(logging.INFO)
    logging.getLogger("xrec.test").info("connecting to %s", connection.describe())
    for text in (repr(connection), str(connection), connection.describe(), caplog.text):
        assert SECRET not in text
    assert "alice" in connection.describe() and "SCRAM-SHA-512" in connection.describe()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kafka_bootstrap": ""}, "XREC_KAFKA_BOOTSTRAP"),
        ({"kafka_bootstrap": "no-port-here"}, "not host:port"),
        ({"kafka_security_protocol": "SASL_TLS"}, "XREC_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "XREC_KAFKA_SASL_MECHANISM"),
        ({"kafka_sasl_mechanism": ""}, "XREC_KAFKA_SASL_MECHANISM"),
        ({"kafka_sasl_password": ""}, "XREC_KAFKA_SASL_PASSWORD"),
        ({"kafka_sasl_username": ""}, "XREC_KAFKA_SASL_USERNAME"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"}, "no such file"),
        ({"kafka_ssl_cafile": "/etc/hostname"}, "uses no TLS"),
    ],
)
def test_settings_that_cannot_connect_are_refused_with_the_variable_named(
    changes: dict[str, str], message: str
) -> None:
    with pytest.raises(KafkaSettingsError, match=message) as caught:
        aiokafka_kwargs(sasl_settings(**changes))
    assert SECRET not in str(caught.value)


def test_a_compacted_topic_spec_asks_for_compaction_and_keeps_other_config() -> None:
    spec = TopicSpec("xrec.recommendations", partitions=4, compacted=True, config={"segment.ms": "60000"})
    assert spec.topic_configs() == {"cleanup.policy": "compact", "segment.ms": "60000"}
    assert TopicSpec("plain").topic_configs() == {}


def test_every_kafka_codec_can_be_read_here() -> None:
    from xrec.kafka import available_codecs, missing_codecs

    assert available_codecs() == ["gzip", "snappy", "lz4", "zstd"]  # cramjam is a dependency
    assert missing_codecs() == []


def test_producers_compress_with_the_chosen_codec_and_none_means_uncompressed() -> None:
    from xrec.kafka import compression_type, producer_kwargs

    assert compression_type(Settings.from_env({})) is None
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        settings = Settings.from_env({}, kafka_compression=codec, kafka_bootstrap="h:9092")
        assert producer_kwargs(settings)["compression_type"] == codec


def test_a_codec_this_python_cannot_write_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import xrec.kafka
    from xrec.kafka import KafkaSettingsError, compression_type

    monkeypatch.setattr(xrec.kafka, "available_codecs", lambda: ["gzip"])
    with pytest.raises(KafkaSettingsError, match=r"XREC_KAFKA_COMPRESSION=zstd.*pip install cramjam"):
        compression_type(Settings.from_env({}, kafka_compression="zstd"))


def test_an_unknown_codec_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="XREC_KAFKA_COMPRESSION"):
        Settings.from_env({"XREC_KAFKA_COMPRESSION": "brotli"})
