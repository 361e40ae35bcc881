"""Kafka client settings built from ``Settings``: aiokafka kwargs, Faust app kwargs, topic creation.

One place turns the ``XREC_KAFKA_*`` variables into what aiokafka and Faust take, so the worker, the
CLI, the benchmarks and the tests all connect the same way (SASL/SSL included) and secrets pass
through to the clients without ever being printed: ``KafkaConnection``'s repr and ``describe()``
leave them out, and the kwargs dicts are meant for client constructors, not for logs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from xrec.config import Settings, SettingsError
from xrec.errors import XrecError

log = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

T = TypeVar("T")


class KafkaSettingsError(SettingsError):
    """The Kafka connection settings cannot work together; the message names the variable."""


class KafkaUnreachableError(XrecError, RuntimeError):
    """No bootstrap server accepted a connection; the message says why for each (never the password)."""


class TopicCreationError(XrecError, RuntimeError):
    """The broker refused to create a topic; the message names the topic and the broker's reason."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where and how to connect to Kafka, validated; secrets are kept out of ``repr``."""

    bootstrap: tuple[str, ...]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise KafkaSettingsError(
                "no Kafka bootstrap servers: set XREC_KAFKA_BOOTSTRAP or start the local broker (xrec broker start)"
            )
        for host in self.bootstrap:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit():
                raise KafkaSettingsError(f"XREC_KAFKA_BOOTSTRAP: {host!r} is not host:port")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise KafkaSettingsError(
                f"XREC_KAFKA_SECURITY_PROTOCOL={self.security_protocol!r}: expected one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise KafkaSettingsError(
                    f"XREC_KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}: expected one of {', '.join(SASL_MECHANISMS)} "
                    f"with {self.security_protocol}"
                )
            if not self.sasl_username or not self.sasl_password:
                raise KafkaSettingsError(
                    f"{self.security_protocol} needs XREC_KAFKA_SASL_USERNAME and XREC_KAFKA_SASL_PASSWORD"
                )
        for env, path in (
            ("XREC_KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("XREC_KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("XREC_KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path and not self.uses_ssl:
                raise KafkaSettingsError(
                    f"{env} is set but XREC_KAFKA_SECURITY_PROTOCOL={self.security_protocol} uses no TLS"
                )
            if path and not Path(path).is_file():
                raise KafkaSettingsError(f"{env}={path}: no such file")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise KafkaSettingsError("XREC_KAFKA_SSL_KEYFILE needs XREC_KAFKA_SSL_CERTFILE")

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str | Sequence[str] | None = None) -> KafkaConnection:
        """Read the connection from ``settings``; ``bootstrap`` (e.g. the local broker's) wins when given."""
        return cls(
            bootstrap=split_bootstrap(settings.kafka_bootstrap if bootstrap is None else bootstrap),
            security_protocol=settings.kafka_security_protocol.strip().upper(),
            sasl_mechanism=settings.kafka_sasl_mechanism.strip().upper(),
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
            ssl_key_password=settings.kafka_ssl_key_password,
        )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def bootstrap_string(self) -> str:
        return ",".join(self.bootstrap)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (system CAs unless a CA file is set); None for plaintext protocols."""
        if not self.uses_ssl:
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(
            cafile=self.ssl_cafile or None,
            certfile=self.ssl_certfile or None,
            keyfile=self.ssl_keyfile or None,
            password=self.ssl_key_password or None,
        )

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap),
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            # aiokafka takes the SCRAM credentials through the sasl_plain_* arguments too.
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        return kwargs

    def describe(self) -> str:
        """One log-safe line: where, which protocol, which user; never a password."""
        parts = [self.bootstrap_string, self.security_protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} user={self.sasl_username}")
        if self.ssl_cafile:
            parts.append(f"ca={self.ssl_cafile}")
        if self.ssl_certfile:
            parts.append(f"cert={self.ssl_certfile}")
        return " ".join(parts)


def split_bootstrap(bootstrap: str | Sequence[str]) -> tuple[str, ...]:
    """``"h1:9092, h2:9092"`` or a list → ``("h1:9092", "h2:9092")``; a ``kafka://`` prefix is dropped."""
    items = bootstrap.replace(";", ",").split(",") if isinstance(bootstrap, str) else list(bootstrap)
    hosts = []
    for item in items:
        host = item.strip()
        if host.startswith("kafka://"):
            host = host[len("kafka://") :]
        if host:
            hosts.append(host)
    return tuple(hosts)


def aiokafka_kwargs(settings: Settings, bootstrap: str | Sequence[str] | None = None) -> dict[str, Any]:
    """aiokafka client kwargs from settings (see ``KafkaConnection.aiokafka_kwargs``)."""
    return KafkaConnection.from_settings(settings, bootstrap).aiokafka_kwargs()


def producer_kwargs(settings: Settings, bootstrap: str | Sequence[str] | None = None) -> dict[str, Any]:
    """``aiokafka_kwargs`` plus what only a producer takes: the compression of ``XREC_KAFKA_COMPRESSION``."""
    return {**aiokafka_kwargs(settings, bootstrap), "compression_type": compression_type(settings)}


def heartbeat_interval_s(settings: Settings) -> float:
    """A group member's heartbeat: three per session timeout, at most every 3 s (Kafka's default)."""
    return min(3.0, settings.session_timeout_s / 3)


def group_member_kwargs(settings: Settings) -> dict[str, Any]:
    """Session timeout and heartbeat of a consumer group member: a worker silent for ``XREC_SESSION_TIMEOUT_S``
    loses its partitions, in the item encoder's and indexer's groups as in Faust's."""
    return {
        "session_timeout_ms": int(settings.session_timeout_s * 1000),
        "heartbeat_interval_ms": int(heartbeat_interval_s(settings) * 1000),
    }


def compression_type(settings: Settings) -> str | None:
    """The codec xrec's producers use (None: uncompressed), after checking it can run here."""
    codec = settings.kafka_compression
    if codec == "none":
        return None
    if codec not in available_codecs():
        raise KafkaSettingsError(
            f"XREC_KAFKA_COMPRESSION={codec}: this Python cannot {codec}-compress (pip install cramjam)"
        )
    return codec


def available_codecs() -> list[str]:
    """Record codecs the Kafka client can decode and encode here (gzip is built in; the rest need cramjam)."""
    from aiokafka import codec

    checks = {"gzip": codec.has_gzip, "snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
    return [name for name, check in checks.items() if check()]


def missing_codecs() -> list[str]:
    """Codecs a producer may use that this worker could not read: a record batch in one stops its consumer."""
    return [c for c in ("gzip", "snappy", "lz4", "zstd") if c not in available_codecs()]


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: partitions, replication and config (``compacted`` sets ``cleanup.policy``)."""

    name: str
    partitions: int = 1
    replication: int = 1
    compacted: bool = False
    config: Mapping[str, str] = field(default_factory=dict)

    def topic_configs(self) -> dict[str, str]:
        configs = {key: str(value) for key, value in self.config.items()}
        if self.compacted:
            configs.setdefault("cleanup.policy", "compact")
        return configs


async def create_topics(
    target: Settings | KafkaConnection | str,
    specs: Iterable[TopicSpec],
    *,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created (existing ones are left as they are)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    wanted = list(specs)
    if isinstance(target, KafkaConnection):
        connection = target
    elif isinstance(target, Settings):
        connection = KafkaConnection.from_settings(target)
    else:
        connection = KafkaConnection(bootstrap=split_bootstrap(target))
    admin = AIOKafkaAdminClient(**connection.aiokafka_kwargs(), request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in wanted if spec.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.topic_configs()) for s in missing],
            timeout_ms=int(timeout_s * 1000),
        )
    finally:
        await admin.close()
    created = []
    for topic_error in response.topic_errors:
        name, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else None
        if code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:  # created meanwhile by someone else: fine
            raise TopicCreationError(f"cannot create topic {name}: {for_code(code).__name__} {message or ''}".rstrip())
    if created:
        log.info("created topics %s on %s", ", ".join(created), connection.bootstrap_string)
    return created


async def check_connection(target: Settings | KafkaConnection, *, timeout_s: float = 10.0) -> None:
    """Connect (and authenticate) to a bootstrap server, or raise one clear error.

    aiokafka's clients only say "Unable to bootstrap" and log the cause; a worker or the CLI calls
    this first so a wrong password or an unreachable host is reported as such.
    """
    from aiokafka.conn import create_conn

    connection = target if isinstance(target, KafkaConnection) else KafkaConnection.from_settings(target)
    kwargs = connection.aiokafka_kwargs()
    kwargs.pop("bootstrap_servers")
    reasons = []
    for host in connection.bootstrap:
        name, _, port = host.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(name, int(port), request_timeout_ms=int(timeout_s * 1000), **kwargs), timeout_s
            )
        except Exception as exc:  # refused, timed out, TLS or SASL failure: each is a reason to report
            reason = f"{host}: {type(exc).__name__}: {exc}"
            if connection.sasl_password:
                reason = reason.replace(connection.sasl_password, "***")
            reasons.append(reason)
            continue
        conn.close()
        return
    raise KafkaUnreachableError(f"cannot connect to Kafka ({connection.describe()}): " + "; ".join(reasons))


def run_blocking(make_coroutine: Callable[[], Coroutine[Any, Any, T]], timeout_s: float | None = None) -> T:
    """Run a coroutine to completion from synchronous code, even when the caller's thread has a running loop.

    It runs on a fresh event loop in a helper thread, so the CLI, a Faust worker or an async test can
    all call the synchronous broker helpers.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make_coroutine()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="xrec-kafka-blocking", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"Kafka call did not finish within {timeout_s}s")
    if error:
        raise error[0]
    return result[0]


async def read_to_end(
    kwargs: Mapping[str, Any],
    topic: str,
    on_record: Callable[[Any], None],
    *,
    timeout_s: float = 120.0,
) -> bool:
    """Hand every record of ``topic`` up to the end it has when the read starts to ``on_record``
    (aiokafka's ``ConsumerRecord``, in offset order within a partition).

    It reads without a consumer group, so nobody's committed offsets move. A topic that does not exist
    reads as empty. False when ``timeout_s`` ran out before the end was reached.
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **kwargs)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return True
        deadline = asyncio.get_running_loop().time() + timeout_s
        ends: dict[Any, int] | None = None
        while asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=300, max_records=10_000)
            for records in batches.values():
                for record in records:
                    on_record(record)
            assigned = consumer.assignment()
            if not assigned:
                continue  # the subscription is not assigned yet
            if ends is None:
                ends = await consumer.end_offsets(list(assigned))
            if all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                return True
        return False
    finally:
        await consumer.stop()
