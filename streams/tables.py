"""The profile table: a Faust table whose changelog writes can be awaited, in memory or on disk.

The event agent awaits the changelog writes before it acks a batch, so a committed offset never
covers a profile change that is still on its way to Kafka. Faust flushes its producer before each
commit, but that flush can return while a record is still being handed to the Kafka client (seen
under load in the kill -9 test), and a crash right after the commit would then lose the events
behind that record.

``XREC_TABLE_STORE`` picks Faust's store: ``memory`` restores every profile from the changelog at
each start; ``rocksdb`` (Faust's RocksDB store through ``rocksdict``) keeps them on disk with the
changelog offset they reflect, so a restart reads only what was written since. The disk is trusted
only after a clean stop: a worker killed between a profile write and its changelog record's
acknowledgement leaves the write on disk but not in Kafka, its event comes again and is skipped as a
duplicate, and the changelog would never get it; so after any other end (kill -9, out of memory, a
crash) the tables are removed and restored from the changelog, as in memory.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import faust
from faust.stores import rocksdb
from faust.types import StoreT, TableT
from yarl import URL

from xrec.config import Settings, SettingsError

log = logging.getLogger(__name__)

#: Written into the table directory when a worker stopped cleanly, removed when one starts.
CLEAN_STOP_MARKER = "stopped-cleanly"


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

    def _new_store_by_url(self, url: str | URL) -> StoreT:
        """Faust's own store, except that RocksDB is the key-partitioned kind below."""
        if URL(str(url)).scheme != "rocksdb":
            return super()._new_store_by_url(url)
        return KeyPartitionedRocksDB(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )


class KeyPartitionedRocksDB(rocksdb.Store):
    """Faust's RocksDB store, writing each key into the database of the partition its changelog record
    goes to. Faust's takes the partition from the event being processed, but the event loop writes
    profiles for a whole batch outside any single event's context (Faust then fails the write)."""

    def _set(self, key: bytes, value: bytes | None) -> None:
        topic = self.table.changelog_topic.get_topic_name()
        partition = self.app.producer.key_partition(topic, key).partition
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)


def describe_table_store(settings: Settings) -> str:
    """One line for the start-up log; refuses ``rocksdb`` plainly when its driver is missing (the settings
    already refused it with ``exactly_once``)."""
    if settings.table_store == "memory":
        return "in memory, restored from its changelog at every start (XREC_TABLE_STORE=rocksdb keeps it on disk)"
    try:
        import rocksdict  # noqa: F401  # Faust's RocksDB driver
    except ImportError as exc:
        raise SettingsError("XREC_TABLE_STORE=rocksdb needs the rocksdict package (pip install rocksdict)") from exc
    return f"rocksdb under {settings.worker_state_dir}; after a clean stop a restart reads only the changelog's tail"


class LocalTables:
    """The on-disk tables of one worker (``XREC_TABLE_STORE=rocksdb``) and whether the last run left
    them trustworthy (see the module docstring)."""

    def __init__(self, table_dir: Path) -> None:
        self.table_dir = table_dir
        self.marker = table_dir / CLEAN_STOP_MARKER

    def open(self) -> str:
        """Keep the tables after a clean stop, remove them after any other end; what was done, in words."""
        databases = sorted(p for p in self.table_dir.glob("*") if p != self.marker) if self.table_dir.is_dir() else []
        clean = self.marker.exists()
        self.marker.unlink(missing_ok=True)  # from now on, a crash of this run must be detectable
        if not databases:
            return "no local tables yet: profiles are restored from the changelog"
        if clean:
            return f"local tables kept ({len(databases)} entries; the last run stopped cleanly)"
        for path in databases:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        log.warning(
            "local tables in %s were left by a worker that did not stop cleanly (kill -9, out of memory, a "
            "crash): removed, profiles are restored from the changelog",
            self.table_dir,
        )
        return "local tables removed after an unclean stop: profiles are restored from the changelog"

    def stopped_cleanly(self) -> None:
        self.table_dir.mkdir(parents=True, exist_ok=True)
        self.marker.write_text("the worker stopped cleanly; its tables match the changelog offsets they hold\n")


def held_profiles(table: TableT) -> int:
    """Profiles this worker holds: exact in memory; RocksDB's own estimate on disk, since counting a
    million keys would take seconds on every batch."""
    databases = getattr(table.data, "_dbs", None)  # Faust's RocksDB store: one database per partition
    if databases is None:
        return len(table)
    return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in databases.values())
