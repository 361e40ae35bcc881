"""Shared fixtures: a real Kafka broker and a real Qdrant server for the session, unique topics, and
markers by directory.

Tests under ``tests/integration`` are marked ``integration``, those under ``tests/unit`` ``unit`` (unless
a parameter marks them ``integration``: a contract test run against the Qdrant server), so
``pytest -m unit`` runs without Java or a server. Keep this file small; put fixtures of one area in a
conftest next to its tests.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xrec.broker import LocalBroker, default_cache_dir, free_port
from xrec.config import Settings
from xrec.kafka import TopicSpec, create_topics, run_blocking
from xrec.store.local_server import LocalQdrantServer

#: The API key every test Qdrant server requires, so the key's path is always exercised.
QDRANT_TEST_API_KEY = "xrec-test-key"

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        if _TESTS / "integration" in path.parents:
            item.add_marker(pytest.mark.integration)
        elif _TESTS / "unit" in path.parents and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)


def qdrant_binary_or_skip() -> Path:
    """The Qdrant server binary (``XREC_QDRANT_BIN``, default ``../shared/bin/qdrant``). Without it the
    test skips, except under ``CI``, where that is a failure."""
    binary = Settings.from_env().qdrant_binary()
    if not os.access(binary, os.X_OK):
        message = f"no Qdrant server binary at {binary} (set XREC_QDRANT_BIN; see ../shared/bin/README.md)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def start_qdrant_server(data_dir: Path) -> LocalQdrantServer:
    """A real Qdrant server on free loopback ports with ``QDRANT_TEST_API_KEY``."""
    return LocalQdrantServer(qdrant_binary_or_skip(), data_dir, api_key=QDRANT_TEST_API_KEY).start()


@pytest.fixture(scope="session")
def qdrant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalQdrantServer]:
    """One server for the session; tests that stop or restart a server start their own."""
    server = start_qdrant_server(tmp_path_factory.mktemp("qdrant"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real broker: ``XREC_KAFKA_BOOTSTRAP`` if set, else a local one on a free port.

    The local broker's jars come from the machine's cache (``$XREC_HOME/kafka``), so they are
    downloaded once per machine; its data dir is a temp dir, and it is stopped at session end.
    """
    settings = Settings.from_env()
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    broker = LocalBroker(
        port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka"),
        cache_dir=default_cache_dir(settings),
        version=settings.kafka_version,  # XREC_KAFKA_VERSION=4.4.0 runs the suite against Kafka 4
    )
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> Settings:
    """Settings that point every client at the test broker."""
    return Settings.from_env(kafka_bootstrap=kafka_bootstrap)


@pytest.fixture
def topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Create a uniquely named topic on the test broker: ``topic_factory(partitions=1, compacted=False)``."""
    prefix = "t-" + re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60]

    def make(partitions: int = 1, compacted: bool = False, **config: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        spec = TopicSpec(name, partitions=partitions, compacted=compacted, config=config)
        run_blocking(lambda: create_topics(kafka_bootstrap, [spec]), timeout_s=60)
        return name

    return make


@pytest.fixture
def unique_topic(topic_factory: Callable[..., str]) -> str:
    """One fresh single-partition topic."""
    return topic_factory()
