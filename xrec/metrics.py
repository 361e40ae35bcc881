"""Every Prometheus metric of xrec, in one place.

The worker builds one :class:`XrecMetrics` and hands it to the pipeline; tests build their own. Each
instance owns a private ``CollectorRegistry``, so nothing here is global mutable state and two
instances never collide. The alert rules (``deploy/prometheus/alerts.yml``) and the Grafana
dashboard (``deploy/grafana/xrec.json``) use only names this module exposes, and a test checks that.

Label values stay low-cardinality: event types, outcomes and stages come from fixed sets (anything
else is a programming error and raises), DLQ reasons are short snake_case codes such as
``not_json`` (never an error message), topics and store operations are names from the code and the
settings. User ids, item ids and messages never become labels.
"""

from __future__ import annotations

import logging
import platform
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from xrec import __version__
from xrec.config import DEFAULT_VARIANT, EVENT_TYPES, Settings, parse_variants
from xrec.events import IMPRESSION, REASONS
from xrec.langid import SOURCES as LANGUAGE_SOURCES
from xrec.ranker import OnlineRanker
from xrec.ranking import FEATURES

log = logging.getLogger(__name__)

#: ``type`` label of events whose type could not be read (malformed records still count as input).
UNKNOWN_EVENT_TYPE = "unknown"
EVENT_TYPE_LABELS = (*EVENT_TYPES, IMPRESSION, UNKNOWN_EVENT_TYPE)
#: ``forgotten``: events still waiting for their item when ``forget_user`` erased their user.
EVENT_OUTCOMES = ("processed", "duplicate", "dlq", "forgotten")
ITEM_OUTCOMES = ("encoded", "upserted", "deleted", "dlq")
CONSUMER_LOOPS = ("encode", "items", "events")
#: States workers share through compacted topics (`streams/compacted.py`).
SHARED_STATES = ("click_through", "ranker")
STAGES = ("decode", "encode", "profile", "query", "rank", "publish")
#: Where a batch of events spends its time: ``fetch`` (from the event's Kafka timestamp to the worker
#: reading it, the oldest of the batch), ``queue`` (read, waiting for the batch loop), ``apply`` (decode,
#: profile updates: the part done in event order), ``lists`` (store search, ranking and sends, overlapping
#: the next batch's apply), ``delivery`` (from the last send to Kafka acknowledging every write).
BATCH_PHASES = ("fetch", "queue", "apply", "lists", "delivery")
#: Seconds between two readings of ``xrec_consumer_lag`` from the broker.
CONSUMER_LAG_INTERVAL_S = 5.0
STORE_BACKENDS = ("edge", "qdrant")
STORE_OPERATIONS = ("ensure_collection", "upsert", "delete", "fetch", "query", "count", "optimize")
#: What a resolved language was attached to: an item's text, or the text of a review.
LANGUAGE_KINDS = ("item", "review")

#: The DLQ reason codes (``xrec.events.REASONS``) are pre-registered at zero per topic, so rates
#: over them start from a known value. Other snake_case codes are accepted too (see ``dlq``).
DLQ_REASONS = REASONS
#: A label-safe code: lower-case snake_case, short. Anything else (a message, a class name with
#: dots, a value) is replaced by ``INVALID_REASON`` and logged once.
REASON_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
INVALID_REASON = "invalid_reason_code"
_NAME_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

EVENT_TO_PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The generations of CPython's garbage collector (2: full collections).
GC_GENERATIONS = ("0", "1", "2")
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENCODER_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ENCODER_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
LIST_LENGTH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class MetricDoc:
    """One exposed metric as an operator sees it: name on the wire, kind, labels, meaning."""

    name: str
    kind: str
    labels: tuple[str, ...]
    doc: str

    def series_names(self) -> tuple[str, ...]:
        """Names of the series Prometheus stores for this metric (what PromQL can select)."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count", f"{self.name}_created")
        if self.kind == "counter":
            return (self.name, self.name.removesuffix("_total") + "_created")
        return (self.name,)


class XrecMetrics:
    """The worker's metrics and the small helpers the pipeline calls to update them."""

    def __init__(
        self,
        *,
        store_backend: str | None = None,
        dlq_topics: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
        variants: Iterable[str] = (DEFAULT_VARIANT,),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.docs: list[MetricDoc] = []
        self.store_backend = store_backend
        self._reported_bad_reasons: set[str] = set()

        self.events = self._counter(
            "xrec_events_total",
            "Records read from the events topic, counted once each, by event type and outcome "
            "(processed, duplicate, dlq, forgotten).",
            ("type", "outcome"),
        )
        self.items = self._counter(
            "xrec_items_total",
            "Item records by outcome: encoded (texts this worker encoded for every store of its vector space; "
            "summed over the workers, each text once), upserted and deleted (in this worker's store), dlq.",
            ("outcome",),
        )
        self.event_to_publish = self._histogram(
            "xrec_event_to_publish_seconds",
            "From the event's own timestamp to the publication of the list it triggered.",
            (),
            EVENT_TO_PUBLISH_BUCKETS,
        )
        self.stage = self._histogram(
            "xrec_stage_seconds",
            "Time spent in one pipeline stage (decode, encode, profile, query, rank, publish) per call.",
            ("stage",),
            STAGE_BUCKETS,
        )
        self.batch_phase = self._histogram(
            "xrec_batch_seconds",
            "Per batch of events, the time of each phase: fetch (event timestamp to read, oldest event), queue "
            "(read to batch start), apply (decode, profile updates), lists (search, ranking, sends) and delivery "
            "(last send to all acknowledged).",
            ("phase",),
            STAGE_BUCKETS,
        )
        self.batch_events = self._histogram(
            "xrec_batch_events", "Events in each batch the event loop takes (what had arrived).", (), BATCH_SIZE_BUCKETS
        )
        self.commit_seconds = self._histogram(
            "xrec_commit_seconds",
            "Each offset commit of the worker's consumer, from its start (Faust first flushes the producer) to the "
            "broker's answer. Lists never wait for it; after a crash, events are read again from the last one.",
            (),
            STAGE_BUCKETS,
        )
        self.gc_pause_seconds = self._histogram(
            "xrec_gc_pause_seconds",
            "Each collection of Python's garbage collector, by generation (2: a full one). The worker stands still "
            "meanwhile: nothing is read, applied or answered.",
            ("generation",),
            STAGE_BUCKETS,
        )
        self.encoder_batch_size = self._histogram(
            "xrec_encoder_batch_size", "Texts per encoder forward pass.", (), ENCODER_BATCH_BUCKETS
        )
        self.texts_encoded = self._counter(
            "xrec_texts_encoded_total",
            "Texts this worker's encoder turned into vectors (item and review texts); summed over the workers, "
            "what the catalog cost to encode.",
            (),
        )
        self.encoder_batch_tokens = self._histogram(
            "xrec_encoder_batch_tokens", "Padded tokens per encoder forward pass.", (), ENCODER_TOKEN_BUCKETS
        )
        self.encoder_info = self._gauge(
            "xrec_encoder_info",
            "Always 1; labels say which model runs on which device, backend (torch, openvino) and precision.",
            ("model", "device", "backend", "dtype"),
        )
        self.encoder_gpu_expected = self._gauge(
            "xrec_encoder_gpu_expected",
            "1 when this worker was told to run the encoder on a GPU (XREC_EXPECT_GPU or XREC_DEVICE=cuda…).",
            (),
        )
        self.encoder_errors = self._counter("xrec_encoder_errors_total", "Encoder calls that raised.", ())
        self.recovery_restarts = self._counter(
            "xrec_table_recovery_restarts_total",
            "Profile-table recoveries started again because no changelog record arrived for a while (a Faust "
            "stall after rebalances); each is logged at WARNING.",
            (),
        )
        self.consumer_failures = self._counter(
            "xrec_consumer_failures_total",
            "Failures of a consumer loop (encode: the item encoder; items: the item indexer; events: the event "
            "batch loop); each is logged at ERROR and retried, and too many in a row stop the worker.",
            ("consumer",),
        )
        self.store_request = self._histogram(
            "xrec_store_request_seconds",
            "Vector store calls, failed ones included, by backend and operation.",
            ("backend", "operation"),
            STORE_BUCKETS,
        )
        self.store_errors = self._counter(
            "xrec_store_errors_total",
            "Vector store calls that raised, by backend and operation.",
            ("backend", "operation"),
        )
        self.store_reachable = self._gauge(
            "xrec_store_reachable",
            "1 while the vector store answers; 0 while a Qdrant server is unreachable (calls wait and try again, "
            "records stay in Kafka).",
            (),
        )
        self.dlq_records = self._counter(
            "xrec_dlq_records_total",
            "Records sent to the dead-letter topic, by reason code and source topic.",
            ("reason", "topic"),
        )
        self.consumer_lag = self._gauge(
            "xrec_consumer_lag",
            "Records from the consumer group's committed offset to the end of each input partition this worker "
            "owns (read by no one yet, or not finished).",
            ("topic", "partition"),
        )
        self.languages = self._counter(
            "xrec_languages_resolved_total",
            "Item and review texts by where their language came from: label (as sent), identified (none was "
            "sent), corrected (the label was contradicted by the text) or unknown (none sent, none identified).",
            ("kind", "source"),
        )
        self.profiles = self._gauge("xrec_profiles", "User profiles held by this worker.", ())
        self.items_indexed = self._gauge(
            "xrec_items_indexed",
            "Items in the vector store, as last counted (after each item batch, and every 5 s while idle).",
            (),
        )
        self.lists_published = self._counter(
            "xrec_lists_published_total",
            "Recommendation lists published to the output topic, by the A/B variant that ranked them.",
            ("variant",),
        )
        self.variant_events = self._counter(
            "xrec_variant_events_total",
            "Events processed, by the A/B variant of their user and the event type (clicks per variant over "
            "xrec_variant_items_shown_total is each variant's click-through rate).",
            ("variant", "type"),
        )
        self.variant_items_shown = self._counter(
            "xrec_variant_items_shown_total",
            "Items shown to users (impression events), by the A/B variant of the user.",
            ("variant",),
        )
        self.list_length = self._histogram("xrec_list_length", "Items in each published list.", (), LIST_LENGTH_BUCKETS)
        self.ranker_weight = self._gauge(
            "xrec_ranker_weight",
            "The learned ranker's weight of each score term (hand-set plus what every worker learned; with "
            "ranker=learned in no variant, the hand-set weights).",
            ("feature",),
        )
        self.ranker_updates = self._gauge(
            "xrec_ranker_updates",
            "Clicks this worker's learned ranker has learned from (taken items with passed-over items beside them).",
            (),
        )
        self.shared_state_records = self._counter(
            "xrec_shared_state_records_total",
            "Records of the compacted topics workers share state through (state: click_through, ranker), by "
            "direction (published, read) and outcome (ok, unreadable: logged and skipped).",
            ("state", "direction", "outcome"),
        )
        self.shared_state_failures = self._counter(
            "xrec_shared_state_failures_total",
            "Times sharing a state through its compacted topic failed (broker away, topic missing) and was "
            "started again; the state goes on changing meanwhile, only sharing pauses.",
            ("state",),
        )
        self.build_info = self._gauge(
            "xrec_build_info",
            "Always 1; labels say which xrec and Python version this worker runs.",
            ("version", "python"),
        )
        self.worker_ready = self._gauge(
            "xrec_worker_ready",
            "1 while /readyz answers 200 (store and model loaded, tables recovered, items caught up); else 0.",
            (),
        )

        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)
        self.worker_ready.set(0)
        self.store_reachable.set(1)
        # Pre-register the known label sets at zero: a counter that appears only with its first
        # increment loses that increment to rate(), and ratio alerts need both sides present.
        for event_type in EVENT_TYPE_LABELS:
            for outcome in EVENT_OUTCOMES:
                self.events.labels(type=event_type, outcome=outcome)
        for outcome in ITEM_OUTCOMES:
            self.items.labels(outcome=outcome)
        for feature in FEATURES:
            self.ranker_weight.labels(feature=feature)
        for variant in variants:
            self.lists_published.labels(variant=variant)
            self.variant_items_shown.labels(variant=variant)
            for event_type in (*EVENT_TYPES, IMPRESSION):
                self.variant_events.labels(variant=variant, type=event_type)
        for consumer in CONSUMER_LOOPS:
            self.consumer_failures.labels(consumer=consumer)
        for state in SHARED_STATES:
            self.shared_state_failures.labels(state=state)
            self.shared_state_records.labels(state=state, direction="published", outcome="ok")
            for outcome in ("ok", "unreadable"):
                self.shared_state_records.labels(state=state, direction="read", outcome=outcome)
        for stage in STAGES:
            self.stage.labels(stage=stage)
        for phase in BATCH_PHASES:
            self.batch_phase.labels(phase=phase)
        for generation in GC_GENERATIONS:
            self.gc_pause_seconds.labels(generation=generation)
        for kind in LANGUAGE_KINDS:
            for source in LANGUAGE_SOURCES:
                self.languages.labels(kind=kind, source=source)
        if store_backend is not None:
            self._check_backend(store_backend)
            for operation in STORE_OPERATIONS:
                self.store_request.labels(backend=store_backend, operation=operation)
                self.store_errors.labels(backend=store_backend, operation=operation)
        for topic in dlq_topics:
            for reason in DLQ_REASONS:
                self.dlq_records.labels(reason=reason, topic=topic)

    @classmethod
    def for_settings(cls, settings: Settings) -> XrecMetrics:
        """The worker's instance: store backend and topics from the settings, GPU expectation set."""
        metrics = cls(
            store_backend=settings.store_backend,
            dlq_topics=(settings.topic_events, settings.topic_items, settings.topic_control),
            variants=[v.name for v in parse_variants(settings.variants)],
        )
        metrics.set_gpu_expected(gpu_expected(settings))
        return metrics

    # --- registration ----------------------------------------------------------------------------
    def _counter(self, name: str, doc: str, labels: tuple[str, ...]) -> Counter:
        self.docs.append(MetricDoc(name, "counter", labels, doc))
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
        self.docs.append(MetricDoc(name, "gauge", labels, doc))
        return Gauge(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
        self.docs.append(MetricDoc(name, "histogram", labels, doc))
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)

    def series_names(self) -> frozenset[str]:
        """Every series name this instance can expose: what rules and dashboards may select."""
        return frozenset(name for doc in self.docs for name in doc.series_names())

    # --- events and items ------------------------------------------------------------------------
    def event(self, event_type: str | None, outcome: str, count: int = 1) -> None:
        """Count records of the events topic; an unreadable or unknown type counts as ``unknown``."""
        if outcome not in EVENT_OUTCOMES:
            raise ValueError(f"event outcome {outcome!r} is not one of {EVENT_OUTCOMES}")
        label = event_type if event_type in EVENT_TYPE_LABELS else UNKNOWN_EVENT_TYPE
        self.events.labels(type=label, outcome=outcome).inc(count)

    def set_ranker(self, ranker: OnlineRanker) -> None:
        for feature, weight in zip(FEATURES, ranker.weights(), strict=True):
            self.ranker_weight.labels(feature=feature).set(float(weight))
        self.ranker_updates.set(ranker.updates)

    def variant_event(self, variant: str, event_type: str, items_shown: int = 0) -> None:
        """One processed event of a user in ``variant`` (an impression also counts the items it showed)."""
        self.variant_events.labels(variant=variant, type=event_type).inc()
        if items_shown:
            self.variant_items_shown.labels(variant=variant).inc(items_shown)

    def item(self, outcome: str, count: int = 1) -> None:
        if outcome not in ITEM_OUTCOMES:
            raise ValueError(f"item outcome {outcome!r} is not one of {ITEM_OUTCOMES}")
        self.items.labels(outcome=outcome).inc(count)

    def dlq(self, reason: str, topic: str) -> None:
        """Count one dead-lettered record. ``reason`` is a short code (``not_json``), never a message.

        A reason that is not a code is counted under ``invalid_reason_code`` and logged once, rather
        than raising: this runs on the error path, which must never stop a worker.
        """
        if not REASON_CODE.match(reason):
            if reason not in self._reported_bad_reasons and len(self._reported_bad_reasons) < 100:
                self._reported_bad_reasons.add(reason)
                log.warning("DLQ reason %r is not a short snake_case code; counted as %s", reason, INVALID_REASON)
            reason = INVALID_REASON
        self.dlq_records.labels(reason=reason, topic=_checked_name("topic", topic)).inc()

    def batch(self, events: int, **phases: float) -> None:
        """One batch of the event loop: its size and the seconds of the phases given (``BATCH_PHASES``)."""
        self.batch_events.observe(events)
        for phase, seconds in phases.items():
            self.batch_phase_seconds(phase, seconds)

    def commit(self, seconds: float) -> None:
        """One offset commit took ``seconds``."""
        self.commit_seconds.observe(max(0.0, seconds))

    def gc_pause(self, generation: int, seconds: float) -> None:
        """Python's collector ran on ``generation`` for ``seconds``."""
        self.gc_pause_seconds.labels(generation=str(generation)).observe(max(0.0, seconds))

    def batch_phase_seconds(self, phase: str, seconds: float) -> None:
        if phase not in BATCH_PHASES:
            raise ValueError(f"batch phase {phase!r} is not one of {BATCH_PHASES}")
        self.batch_phase.labels(phase=phase).observe(max(0.0, seconds))

    def language_resolved(self, kind: str, source: str) -> None:
        """Count one item or review text by where its language came from (``xrec.langid.SOURCES``)."""
        if kind not in LANGUAGE_KINDS or source not in LANGUAGE_SOURCES:
            raise ValueError(
                f"language resolution {kind!r}/{source!r} is not one of {LANGUAGE_KINDS}/{LANGUAGE_SOURCES}"
            )
        self.languages.labels(kind=kind, source=source).inc()

    # --- latency ---------------------------------------------------------------------------------
    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """Time the body as one call of ``stage``; failures are timed too."""
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {STAGES}")
        child = self.stage.labels(stage=stage)
        start = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - start)

    @contextmanager
    def observe_store(self, operation: str, backend: str | None = None) -> Iterator[None]:
        """Time one vector-store call and count it as an error if the body raises (then re-raise)."""
        backend = backend or self.store_backend
        if backend is None:
            raise ValueError("observe_store needs a backend: pass it or build XrecMetrics(store_backend=...)")
        self._check_backend(backend)
        operation = _checked_name("operation", operation)
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self.store_errors.labels(backend=backend, operation=operation).inc()
            raise
        finally:
            self.store_request.labels(backend=backend, operation=operation).observe(time.perf_counter() - start)

    def list_published(
        self,
        length: int,
        event_ts_ms: float | None = None,
        now_ms: float | None = None,
        variant: str = DEFAULT_VARIANT,
    ) -> None:
        """Count one published list; with the triggering event's timestamp, observe event-to-publish.

        Producer clocks can run ahead of the worker's: a negative delay is observed as 0 rather than
        corrupting the histogram's sum.
        """
        self.lists_published.labels(variant=variant).inc()
        self.list_length.observe(length)
        if event_ts_ms is not None:
            now = time.time() * 1000.0 if now_ms is None else now_ms
            self.event_to_publish.observe(max(0.0, (now - event_ts_ms) / 1000.0))

    # --- encoder ---------------------------------------------------------------------------------
    def encoder_batch(self, size: int, tokens: int) -> None:
        self.texts_encoded.inc(size)
        self.encoder_batch_size.observe(size)
        self.encoder_batch_tokens.observe(tokens)

    def encoder_error(self) -> None:
        self.encoder_errors.inc()

    def set_encoder(self, model: str, device: str, dtype: str, backend: str = "torch") -> None:
        """Say which encoder runs where; replaces any earlier value (one series at a time)."""
        self.encoder_info.clear()
        self.encoder_info.labels(model=model, device=device, backend=backend, dtype=dtype).set(1)

    def set_gpu_expected(self, expected: bool) -> None:
        self.encoder_gpu_expected.set(1 if expected else 0)

    # --- state -----------------------------------------------------------------------------------
    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic=_checked_name("topic", topic), partition=str(partition)).set(max(0, lag))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition this worker no longer owns (after a rebalance)."""
        with suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))

    def set_profiles(self, count: int) -> None:
        self.profiles.set(count)

    def set_items_indexed(self, count: int) -> None:
        self.items_indexed.set(count)

    def consumer_failure(self, consumer: str) -> None:
        if consumer not in CONSUMER_LOOPS:
            raise ValueError(f"consumer {consumer!r} is not one of {CONSUMER_LOOPS}")
        self.consumer_failures.labels(consumer=consumer).inc()

    def set_ready(self, ready: bool) -> None:
        self.worker_ready.set(1 if ready else 0)

    def set_store_reachable(self, reachable: bool) -> None:
        self.store_reachable.set(1 if reachable else 0)

    # --- exposition ------------------------------------------------------------------------------
    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from the scraper's Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def _check_backend(self, backend: str) -> None:
        if backend not in STORE_BACKENDS:
            raise ValueError(f"store backend {backend!r} is not one of {STORE_BACKENDS}")


def gpu_expected(settings: Settings) -> bool:
    """Whether the operator asked for a GPU: explicitly, or by naming a CUDA device."""
    return settings.expect_gpu or settings.device.startswith("cuda")


def _checked_name(what: str, value: str) -> str:
    if not _NAME_CODE.match(value):
        raise ValueError(f"{what} label {value!r} is not a plain name")
    return value


def metrics_table_markdown(metrics: XrecMetrics | None = None) -> str:
    """The operator docs' metrics table, generated so it cannot drift from the code."""
    metrics = metrics or XrecMetrics()
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for doc in metrics.docs:
        labels = ", ".join(f"`{label}`" for label in doc.labels) or "–"
        rows.append(f"| `{doc.name}` | {doc.kind} | {labels} | {doc.doc} |")
    return "\n".join(rows)
