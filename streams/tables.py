"""The profile table: a Faust table whose changelog writes can be awaited.

The event agent awaits them before it acks a batch, so a committed offset never covers a profile
change that is still on its way to Kafka. Faust flushes its producer before each commit, but that
flush can return while a record is still being handed to the Kafka client (seen under load in the
kill -9 test), and a crash right after the commit would then lose the events behind that record.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust


class InFlight:
    """Futures of records sent but not yet acknowledged by Kafka; ``delivered`` waits for them."""

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[Any]] = set()

    def add(self, future: Any) -> Any:
        if not future.done():
            self._futures.add(future)
            future.add_done_callback(self._futures.discard)
        return future

    async def delivered(self) -> None:
        """Every record sent before this call is in Kafka (or its send error is raised here)."""
        pending = list(self._futures)
        if pending:
            await asyncio.gather(*pending)

    def drain(self) -> list[asyncio.Future[Any]]:
        """The futures still pending, handed over (a batch takes the changelog records it wrote)."""
        pending = list(self._futures)
        self._futures.clear()
        return pending

    def __len__(self) -> int:
        return len(self._futures)


class ProfileTable(faust.Table):
    """``faust.Table`` that keeps the futures of its changelog records (the app's ``Table`` class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changelog_in_flight = InFlight()

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        return self.changelog_in_flight.add(super().send_changelog(*args, **kwargs))
