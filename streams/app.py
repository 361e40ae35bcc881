"""The Faust application of a worker, built from Settings and a Runtime (no module-level app).

``create_app`` declares the topics, the profile table, the agents, the item indexer and the web
views; ``xrec worker`` runs it. Profiles live in a Faust table of raw bytes with a changelog
topic, keyed by user_id and partitioned by the producer's partitioner (``use_partitioner``), which
puts each profile on the same partition number as the user's events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, cast

import faust

from streams.agents import register_agents
from streams.click_through import start_click_through_sync
from streams.commits import CommitTimer
from streams.encoding import start_encoder
from streams.faust_tuning import RECOVERY_CHECK_EVERY_S, read_committed_only, restart_stalled_recovery
from streams.items import start_indexer
from streams.lag import ConsumerLagProbe, LagReporter
from streams.ranker_weights import start_ranker_sync
from streams.runtime import Runtime
from streams.tables import LocalTables, ProfileTable, describe_table_store
from streams.views import register_views
from xrec import __version__
from xrec.config import Settings
from xrec.kafka import KafkaConnection, compression_type, heartbeat_interval_s
from xrec.metrics import CONSUMER_LAG_INTERVAL_S

log = logging.getLogger(__name__)

PROFILE_TABLE = "profiles"
#: How long the worker's producer holds a list or a profile change for company before it sends them: not at
#: all. Records that come while a request is in flight still share the next one (aiokafka keeps one request
#: per broker in flight), so batching under load stays. Measured with ``xrec bench pipeline`` to the list's
#: append in Kafka (BENCHMARKS.md, "Measured to the list in Kafka"): 5 ms added ~6 ms to every list at light
#: load and made no difference at 200–320 events/s or at saturation.
PRODUCER_LINGER_MS = 0


def create_app(runtime: Runtime, bootstrap: str) -> faust.App:
    settings = runtime.settings
    # Logged here: Faust's on_before_configured fires when the table below first reads app.conf, before
    # a handler connected after it could hear it.
    log.info("xrec %s worker settings: %s", __version__, settings.redacted())
    settings.worker_state_dir.mkdir(parents=True, exist_ok=True)
    log.info("profile table: %s", describe_table_store(settings))
    app = faust.App(
        settings.app_id,
        **faust_broker_kwargs(settings, bootstrap),
        store=f"{settings.table_store}://",
        Table=ProfileTable,  # its changelog writes can be awaited before a batch is acked
        datadir=str(settings.worker_state_dir),
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        producer_linger_ms=PRODUCER_LINGER_MS,
        producer_compression_type=compression_type(settings),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,  # how soon a killed worker's partitions move
        broker_heartbeat_interval=heartbeat_interval_s(settings),
        stream_buffer_maxsize=max(4096, settings.event_batch_size * 4),
        table_cleanup_interval=300.0,
        version=1,
        autodiscover=False,
        origin="streams",
    )
    profiles = app.Table(
        PROFILE_TABLE,
        default=None,
        key_type=bytes,  # bytes keys and values: Faust uses the raw codec for table and changelog
        value_type=bytes,
        partitions=settings.partitions,
        use_partitioner=True,
        help="User profiles (xrec.profile.UserProfile bytes), keyed by user_id.",
    )
    if settings.table_store == "rocksdb":
        runtime.local_tables = LocalTables(Path(app.conf.tabledir))
        log.info("profile table: %s", runtime.local_tables.open())
    register_agents(app, runtime, profiles)
    register_views(app, runtime, profiles)
    app.sensors.add(CommitTimer(runtime.metrics))  # xrec_commit_seconds
    read_committed_only(app)

    @app.task
    async def index_items() -> None:
        runtime.indexer_task = start_indexer(runtime, bootstrap)
        runtime.encoder_task = start_encoder(runtime, bootstrap)
        runtime.ranker_task = start_ranker_sync(runtime, bootstrap)
        runtime.click_through_task = start_click_through_sync(runtime, bootstrap)

    topics = runtime.topics
    lag_reporter = LagReporter(
        ConsumerLagProbe(settings, bootstrap, group_id=app.conf.id),
        (topics.events, topics.events_by_user, topics.control),
        runtime.metrics,
    )

    @app.timer(interval=RECOVERY_CHECK_EVERY_S, name="xrec.recovery-watch")
    async def watch_table_recovery() -> None:
        if restart_stalled_recovery(app.tables.recovery, time.monotonic()):  # type: ignore[attr-defined]
            runtime.metrics.recovery_restarts.inc()

    @app.timer(interval=CONSUMER_LAG_INTERVAL_S, name="xrec.consumer-lag")
    async def report_consumer_lag() -> None:
        await lag_reporter.report(app.consumer.assignment())

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close_lag_probe(sender: Any, **kwargs: Any) -> None:
        await lag_reporter.probe.close()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _publish_shared_state(sender: Any, **kwargs: Any) -> None:
        """A clean stop publishes the learned weights and click-through counts of its last seconds."""
        for task in (runtime.ranker_task, runtime.click_through_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def _hold_records_until_faust_resumes_its_flow(sender: Any, **kwargs: Any) -> None:
        """After this signal Faust resumes the stream partitions, seeks them, and only then resumes its
        flow control, which empties every stream buffer; records fetched in between were dropped with
        nothing reading them again, and its commit passed over the hole (faust-streaming #596, #606; at
        a start with events already waiting, 1 run in 6 lost one: RELIABILITY.md). Suspended here, the
        flow holds each fetched record before it enters a buffer until that resume, so the emptying
        finds none."""
        app.flow_control.suspend()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def _rewind_uncommitted_partitions(sender: Any, **kwargs: Any) -> None:
        """After recovery Faust seeks each stream partition to its committed offset, but leaves one with
        none (or 0) where reading the changelogs moved it, and the records fetched meanwhile were
        dropped: such a partition starts again at its earliest offset, as auto_offset_reset says."""
        consumer = app.consumer
        owned = [
            tp for tp in consumer.assignment() if tp.topic in (topics.events, topics.events_by_user, topics.control)
        ]
        if not owned:
            return
        committed = await cast(Any, consumer).seek_to_committed()  # not in ConsumerT; what perform_seek calls
        fresh = [tp for tp in owned if not committed.get(tp)]
        if fresh:
            earliest = await consumer.earliest_offsets(*fresh)
            for tp in fresh:
                await consumer.seek(tp, earliest[tp])

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _forget_lag(sender: Any, revoked: set, **kwargs: Any) -> None:
        for tp in revoked:
            runtime.metrics.forget_partition(tp.topic, tp.partition)

    return app


def faust_broker_kwargs(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App`` (Faust's form of the Kafka connection)."""
    connection = KafkaConnection.from_settings(settings, bootstrap)
    credentials: Any = None
    if connection.uses_sasl:
        credentials = faust.SASLCredentials(
            username=connection.sasl_username,
            password=connection.sasl_password,
            mechanism=connection.sasl_mechanism,
            ssl_context=connection.ssl_context(),
        )
    elif connection.uses_ssl:
        credentials = faust.SSLCredentials(connection.ssl_context())
    return {"broker": "kafka://" + ";".join(connection.bootstrap), "broker_credentials": credentials}
