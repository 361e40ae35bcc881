"""The worker's offset commits, timed into xrec's metrics.

Faust commits the acked offsets on its own timer (``broker_commit_interval``), outside the batch loop.
How long each commit takes is worth seeing: a commit first flushes the producer, so a slow broker shows
here, and a crash re-reads everything since the last commit. A Faust sensor is the
public hook around each commit; this one implements only those two callbacks.
"""

from __future__ import annotations

import time
from typing import Any

import faust

from xrec.metrics import XrecMetrics


class CommitTimer(faust.Sensor):
    """Observes ``xrec_commit_seconds`` for every commit Faust makes."""

    def __init__(self, metrics: XrecMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_commit_initiated(self, consumer: Any) -> float:
        return time.perf_counter()

    def on_commit_completed(self, consumer: Any, state: float) -> None:
        self.metrics.commit(time.perf_counter() - state)
