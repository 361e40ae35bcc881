"""Consumer loops that fail loudly: logged at ERROR, counted, shown in /readyz, retried, fatal when stuck.

The item indexer and the event batch loop each run forever. Before this, an exception that escaped
one (a record batch in a codec the client cannot read, a bug) ended its task without a word: items
stopped being indexed while /readyz stayed green. Now each failure is one ERROR line naming the loop
and what it was reading, ``xrec_consumer_failures_total{consumer}`` counts it (an alert fires), and
/readyz answers 503 until the loop gets through a round again (a batch, or a wait with nothing to
read). The loop is started again after a growing pause; ``XREC_CONSUMER_MAX_FAILURES`` failures in
a row mean it cannot go on (the same bad batch, say), and the worker stops and exits non-zero with
one line, for its supervisor to act on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from xrec.metrics import XrecMetrics

log = logging.getLogger(__name__)

#: Exit status of a worker stopped because a consumer loop could not go on.
EXIT_CONSUMER_FAILED = 3
MAX_PAUSE_S = 60.0


class ConsumerLoopError(RuntimeError):
    """A consumer loop failed; the message names the loop, the topic and the partitions it was reading."""

    @classmethod
    def reading(cls, loop: str, topic: str, consumer: Any, exc: Exception) -> ConsumerLoopError:
        owned = sorted(tp.partition for tp in consumer.assignment())
        return cls(f"{loop} reading {topic} partitions {owned}: {type(exc).__name__}: {exc}")


@dataclass
class ConsumerLoops:
    """Runs the worker's consumer loops and owns their failure state."""

    metrics: XrecMetrics
    max_failures: int
    first_pause_s: float = 1.0
    failing: dict[str, str] = field(default_factory=dict)  # loop → its last error, until it goes round again
    fatal: str | None = None  # set when a loop gave up: the worker is stopping because of it
    _in_a_row: dict[str, int] = field(default_factory=dict)
    stop_worker: Callable[[], None] = field(default=lambda: os.kill(os.getpid(), signal.SIGTERM))

    async def run(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` until it returns; restart it after a failure, or stop the worker after too many."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not await self._failed(name, exc):
                    return

    def went_round(self, name: str) -> None:
        """A loop finished one round (a batch, a poll) or waits with nothing to do: it is healthy again."""
        if name in self.failing:
            log.info("%s is running again after %d failure(s)", name, self._in_a_row.get(name, 0))
            del self.failing[name]
        self._in_a_row[name] = 0

    async def _failed(self, name: str, exc: Exception) -> bool:
        """Count and say it; False when the worker must stop."""
        reason = f"{type(exc).__name__}: {exc}"
        in_a_row = self._in_a_row.get(name, 0) + 1
        self._in_a_row[name] = in_a_row
        self.failing[name] = reason
        self.metrics.consumer_failure(name)
        if in_a_row >= self.max_failures:
            self.fatal = f"{name} failed {in_a_row} times in a row, last: {reason}"
            log.error("%s; the worker stops (exit status %d)", self.fatal, EXIT_CONSUMER_FAILED)
            self.stop_worker()
            return False
        pause = min(MAX_PAUSE_S, self.first_pause_s * 2 ** (in_a_row - 1))
        log.error(
            "%s failed (%d of %d in a row): %s; starting it again in %.0f s",
            name,
            in_a_row,
            self.max_failures,
            reason,
            pause,
        )
        await asyncio.sleep(pause)
        return True
