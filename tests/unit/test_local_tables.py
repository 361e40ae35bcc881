"""Local RocksDB profile tables are kept only after a clean stop (streams/tables.py)."""

from __future__ import annotations

from pathlib import Path

from streams.tables import CLEAN_STOP_MARKER, LocalTables, describe_table_store
from xrec.config import Settings


def tables_with_one_partition(table_dir: Path) -> LocalTables:
    (table_dir / "xrec-profiles-0.db").mkdir(parents=True)
    (table_dir / "xrec-profiles-0.db" / "CURRENT").write_text("MANIFEST-000001\n")
    return LocalTables(table_dir)


def test_tables_left_by_a_clean_stop_are_kept(tmp_path: Path) -> None:
    tables = tables_with_one_partition(tmp_path)
    tables.stopped_cleanly()
    assert "kept" in LocalTables(tmp_path).open()
    assert (tmp_path / "xrec-profiles-0.db" / "CURRENT").exists()


def test_tables_left_by_a_crash_are_removed_so_the_changelog_restores_them(tmp_path: Path) -> None:
    tables = tables_with_one_partition(tmp_path)
    assert "removed" in tables.open()
    assert not (tmp_path / "xrec-profiles-0.db").exists()


def test_starting_forgets_the_clean_stop_so_a_crash_of_this_run_is_noticed(tmp_path: Path) -> None:
    tables = tables_with_one_partition(tmp_path)
    tables.stopped_cleanly()
    tables.open()
    assert not (tmp_path / CLEAN_STOP_MARKER).exists()
    assert "removed" in LocalTables(tmp_path).open()  # this run "crashed": no marker was written


def test_a_first_start_has_nothing_to_keep_or_remove(tmp_path: Path) -> None:
    assert "no local tables yet" in LocalTables(tmp_path / "never-created").open()


def test_the_memory_store_says_how_to_keep_profiles_on_disk() -> None:
    assert "XREC_TABLE_STORE=rocksdb" in describe_table_store(Settings.from_env({}))
