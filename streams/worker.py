"""Start a worker: broker, topics, encoder, store, metrics, then the Faust app until a signal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import faust

from streams.app import create_app
from streams.collector import CollectorPauses, freeze_what_lives_forever
from streams.runtime import Runtime, load_encoder
from streams.supervision import EXIT_CONSUMER_FAILED
from xrec.config import Settings
from xrec.kafka import missing_codecs, run_blocking
from xrec.metrics import XrecMetrics
from xrec.store import open_store
from xrec.store.exact import use_one_blas_thread
from xrec.topics import prepare_topics
from xrec.vectors import VectorSpace

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0005


def build_runtime(settings: Settings, *, with_encoder: bool = True, dim: int | None = None) -> Runtime:
    """Load the model and open the store; ``with_encoder=False`` runs on precomputed vectors only."""
    metrics = XrecMetrics.for_settings(settings)
    encoder = load_encoder(settings) if with_encoder else None
    if encoder is not None:
        dim = encoder.dim
        metrics.set_encoder(encoder.model_name, str(encoder.device), encoder.precision, encoder.backend)
        encoder.on_batch = metrics.encoder_batch  # each forward pass: texts and padded tokens
        encoder.on_error = lambda exc: metrics.encoder_error()
    if dim is None:
        raise ValueError("a worker without an encoder needs the vector dimension (XREC_VECTOR_DIM)")
    store = open_store(settings, dim=dim)
    space = encoder.space if encoder is not None else VectorSpace.precomputed(dim)
    return Runtime(settings=settings, store=store, encoder=encoder, metrics=metrics, dim=dim, space=space)


def run_worker(
    settings: Settings, bootstrap: str, *, with_encoder: bool = True, dim: int | None = None, loglevel: str = "info"
) -> None:
    use_one_blas_thread()
    # Faust runs the Kafka consumer in a thread of its own: with Python's default 5 ms GIL switch interval
    # it waits up to 5 ms each time the event loop or the store thread computes, and events queue in
    # Kafka. 0.5 ms: in `xrec bench pipeline` at 70% of saturation, 2 runs each, p99 206 and 403 ms
    # against 362 and 2,410 ms (BENCHMARKS.md); the evidence is two runs, the cost a few % CPU.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    missing = missing_codecs()
    if missing:  # a producer's batch in one of these would stop the consumer that meets it
        log.error("this worker cannot read %s-compressed records: pip install cramjam", "/".join(missing))
    runtime = build_runtime(settings, with_encoder=with_encoder, dim=dim)  # first: a bad model fails before Kafka
    created = run_blocking(lambda: prepare_topics(settings, bootstrap, runtime.space), timeout_s=60)
    if created:
        log.info("created topics: %s", ", ".join(created))
    app = create_app(runtime, bootstrap)
    log.info(
        "worker %s: broker %s, store %s, web http://%s:%d (/metrics, /readyz, /recommendations/{user})",
        settings.app_id,
        bootstrap,
        runtime.store.name,
        settings.web_host,
        settings.web_port,
    )
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    CollectorPauses(runtime.metrics).watch()
    freeze_what_lives_forever()
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        if runtime.loops.fatal is not None:  # stopped because a consumer loop could not go on
            print(f"xrec worker: {runtime.loops.fatal}", file=sys.stderr)
            raise SystemExit(EXIT_CONSUMER_FAILED) from None
        crashed = _crash_reason(app, worker)
        if crashed is not None:  # Faust's own services (its Kafka consumer's fetcher) crashed: say it in one line
            print(f"xrec worker: Faust stopped after a crash: {type(crashed).__name__}: {crashed}", file=sys.stderr)
            raise SystemExit(done.code or 1) from None
        if not done.code and runtime.local_tables is not None:
            runtime.local_tables.stopped_cleanly()
        raise


def _crash_reason(*services: Any) -> BaseException | None:
    """The first crash reason among Faust services and their children (mode records one per crashed service)."""
    seen: set[int] = set()
    todo = list(services)
    while todo:
        service = todo.pop(0)
        if id(service) in seen:
            continue
        seen.add(id(service))
        reason = getattr(service, "crash_reason", None)
        if isinstance(reason, BaseException):
            return reason
        todo.extend(getattr(service, "_children", ()) or ())
    return None
