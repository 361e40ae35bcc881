"""``xrec bench restart`` end to end on the test broker, tiny sizes: every start must serve a list.

Times are never asserted (the machine is shared); what is checked is that each figure is a list the
worker really published for the probe click, and that every stop between the starts was clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.slow


def test_the_restart_bench_times_a_cold_and_a_warm_start_for_each_table_store(kafka_bootstrap: str) -> None:
    args = ["--profiles", "300", "--items", "400", "--generated"]
    done = subprocess.run(
        [sys.executable, "-m", "xrec.cli", "bench", "restart", "--json", *args],
        env={**os.environ, "XREC_KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = orjson.loads(done.stdout)
    assert result["profiles"] == result["seed"]["count"] == 300
    rows = {(r["table_store"], r["start"]): r for r in result["rows"]}
    assert set(rows) == {(s, t) for s in ("memory", "rocksdb") for t in ("cold", "warm")}
    for row in rows.values():
        assert row["first_list_s"] > 0 and row["rss_mb"] > 0
        assert row["profiles_held"] >= 300  # the seeded profiles are there at the first list, cold or warm
        assert row["stop_exit"] == 0  # a clean stop: the warm rocksdb start may keep its tables
