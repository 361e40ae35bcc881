"""Python's garbage collector in a worker: kept away from what lives forever, and its pauses measured.

A collection runs on whichever thread allocates past a threshold, usually the event loop's, and holds
the interpreter lock while it walks every object of the generations it collects. A full collection walks
everything Python tracks: in a worker that is ~100k objects from the imports alone (functions, types,
modules), tens of milliseconds each time, during which no event is read, applied or answered.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from xrec.metrics import XrecMetrics


def freeze_what_lives_forever() -> None:
    """Move every object alive now out of the collector's reach (``gc.freeze``): call it once the worker is
    built and before it runs, when what exists is imports, the model and the app. Garbage is collected first,
    since a frozen cycle is never freed."""
    gc.collect()
    gc.freeze()


class CollectorPauses:
    """Observes ``xrec_gc_pause_seconds{generation}`` for every collection while it watches.

    A collection cannot start while another runs (the collector holds the interpreter lock and refuses
    to re-enter), so one start time is enough.
    """

    def __init__(self, metrics: XrecMetrics) -> None:
        self.metrics = metrics
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.metrics.gc_pause(int(info["generation"]), time.perf_counter() - self._started)

    def watch(self) -> CollectorPauses:
        gc.callbacks.append(self)
        return self

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
