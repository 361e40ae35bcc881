"""``xrec bench pipeline``: events/s, freshness and cost of a real worker, measured on the output topic.

One run, one broker, one machine:

1. **Catalog.** ``--items`` items with precomputed 384-d vectors (``xrec.bench.sessions``) are written
   straight into an edge store (``EdgeStore.upsert``, then ``optimize()`` when the catalog is above
   ``XREC_STORE_INDEX_THRESHOLD``, as every catalog-loading command does). The worker and the naive
   baseline each open their own copy of that directory: same data, same index.
2. **Saturation.** ``--events`` clicks (Amazon-M2 sessions replayed as users, or a generated stream)
   are written to the events topic *before* the worker starts; the worker (``xrec worker
   --no-encoder``, a subprocess) then drains them. From the recommendations topic: events/s = events
   covered / (last list − first list), where a list covers its user's events up to its trigger id (a
   list can answer several events of one user: coalescing). CPU seconds come from the worker's
   ``/proc/<pid>/stat`` between those two moments, memory from its RSS.
3. **Freshness.** Fresh events are offered at ``--rate`` (default: half the lists/s at saturation), each
   stamped with the wall clock as it is sent; latency = timestamp of the first list that covers the
   event − the event's ``ts``. The bench's lists topic is stamped by the broker as it appends a record
   (``LogAppendTime``), so a latency ends when a subscriber could read the list: the worker's producer
   linger and its produce request are inside it.
4. **Memory.** The profile changelog topic is read back: mean serialized profile size × 100k, next to
   the worker's RSS growth while it built those profiles.
5. **Naive baseline.** ``python -m xrec.bench.naive`` processes the first ``--naive-events`` events of
   the same stream one at a time (see that module for exactly what it does), measured the same way.
6. **Review-heavy mix** (``--with-text``): a worker with the encoder drains a stream in which half the
   events are reviews whose text must be encoded.

The broker is ``XREC_KAFKA_BOOTSTRAP`` when set, else a private local broker on a free port that is
stopped at the end. Every run uses its own app id, topics and temp directory.
"""

from __future__ import annotations

from xrec.bench.pipeline.cli import add_arguments
from xrec.bench.pipeline.harness import run
from xrec.bench.pipeline.report import format_table, write_plot

__all__ = ["add_arguments", "format_table", "run", "write_plot"]
