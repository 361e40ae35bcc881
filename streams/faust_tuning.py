"""Where xrec overrides Faust: two built-in waits that stalled the event loop under load, set once
the app runs, the isolation level of its consumer, set before it starts, and a watch that starts a
stalled table recovery again.

Both were found with ``xrec bench pipeline`` (BENCHMARKS.md, "The standing queue"): at 50–90% of
saturation the worker's queue of fresh events grew to seconds while its cores idled, in about half
of the runs. Each setting reaches into a Faust or aiokafka object that exists only once the app has
started, so ``tune_running_app`` is called from the event loop's task; if an upgrade renames what it
sets, it says so in the log and the worker runs with Faust's defaults (slower, not wrong).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: Longest time the broker may hold a fetch that found no new records (Faust fixes it at 1,500 ms).
FETCH_MAX_WAIT_MS = 10


def tune_running_app(app: Any, changelog_records_in_flight: int) -> None:
    shorten_fetch_wait(app, FETCH_MAX_WAIT_MS)
    let_changelog_writes_wait_in_the_producer(app, changelog_records_in_flight)


def shorten_fetch_wait(app: Any, wait_ms: int) -> None:
    """Let the broker hold an empty fetch for ``wait_ms`` instead of Faust's 1,500 ms.

    aiokafka keeps one fetch in flight per broker, and a fetch leaves out the partitions whose last
    records the worker is still consuming. Under load the events partitions are often such partitions
    when the next fetch goes out, so it asks only for quiet ones (control, re-keyed events, the
    changelog) and the broker holds it for the full wait; until it returns, nothing new is fetched
    for the events partitions either. Logged by fetch, that was 1,501 ms fetches that brought nothing,
    one after another, while events arrived at 500/s: the standing queue. With a short wait a fetch
    of quiet partitions returns at once and the next one takes the events.
    """
    try:
        fetcher = app.consumer._thread._consumer._fetcher
        before = fetcher._fetch_max_wait_ms
        fetcher._fetch_max_wait_ms = wait_ms
    except AttributeError as exc:
        log.warning("could not shorten the consumer's fetch wait (Faust or aiokafka changed: %s); it stays 1.5 s", exc)
        return
    log.info("consumer fetch wait: %d ms (was %d ms)", wait_ms, before)


def let_changelog_writes_wait_in_the_producer(app: Any, limit: int) -> None:
    """Raise the number of records Faust's producer buffer may hold before it stops the consumer.

    Table changelog writes wait in Faust's producer buffer until its sender hands them to Kafka, one
    at a time. Whenever that buffer holds more than ``ProducerBuffer.max_messages`` (100), Faust's
    conductor flushes it before it hands the agents each further record it fetched: a batch of more
    than 100 users writes more than 100 profile records, and under load 100 such flushes (the log's
    "producer buffer full") blocked the consumer for 10.5 s in one run. The event loop bounds its own
    writes (batches in flight × batch size), so that is the limit here.
    """
    buffer = app.producer.buffer
    buffer.max_messages = max(limit, type(buffer).max_messages)
    log.info("producer buffer: the consumer waits for it above %d records (Faust's default: 100)", buffer.max_messages)


READ_COMMITTED = "read_committed"


def read_committed_only(app: Any) -> None:
    """Make Faust's consumer skip the records of aborted transactions, whatever the processing guarantee.

    Faust reads ``read_committed`` only under ``exactly_once`` and otherwise ``read_uncommitted``, fixed
    in the code that creates its aiokafka consumer. A producer that aborts a transaction means its records
    never happened; with the default ``at_least_once`` they moved profiles. The consumer is made when the
    app starts, so this wraps that step (call it before the worker starts); a test fails if an upgrade
    renames what it wraps, and the worker then refuses to start rather than read aborted records.
    """
    thread = app.consumer._thread
    create = thread._create_worker_consumer

    def create_reading_committed(transport: Any) -> Any:
        consumer = create(transport)
        consumer._isolation_level = READ_COMMITTED  # read by aiokafka's start(), which builds its fetcher
        return consumer

    thread._create_worker_consumer = create_reading_committed
    log.info("event and control consumer: %s", READ_COMMITTED)


#: A table recovery that received no changelog record for this long is started again.
RECOVERY_STALL_S = 20.0
#: How often the worker looks (``streams/app.py``).
RECOVERY_CHECK_EVERY_S = 5.0


def restart_stalled_recovery(recovery: Any, now: float, stall_s: float = RECOVERY_STALL_S) -> bool:
    """Start Faust's table recovery again if it has stopped receiving changelog records; True when it did.

    After a rebalance Faust seeks the changelog partitions and waits until it has read them to their
    end. In about 2 of 10 runs of the lost-worker test (``tests/integration/test_faults.py``) the
    survivor then received nothing at all, for minutes, and stayed unready, although it had fetched
    those partitions before (Faust only logged "No event received for active tp"). Its cause inside
    Faust was not found: debug logging or an extra timer made it disappear. Starting the recovery
    again is what Faust does itself when another rebalance begins: it seeks every changelog
    partition anew and reads from there. ``now`` is ``time.monotonic()``. Reaches into Faust's
    ``Recovery`` by name; a unit test on a real one fails if an upgrade renames what it reads.
    """
    started = recovery._recovery_started_at
    if not recovery.in_recovery or started is None or not recovery.need_recovery():
        return False
    last_record = max(recovery._active_events_received_at.values(), default=started)
    idle_s = now - max(started, last_record)
    if idle_s < stall_s:
        return False
    log.warning(
        "table recovery received no changelog record for %.0f s with %d records still to read; "
        "starting it again (it seeks the changelog partitions anew)",
        idle_s,
        recovery.active_remaining_total(),
    )
    recovery.signal_recovery_start.set()
    return True
