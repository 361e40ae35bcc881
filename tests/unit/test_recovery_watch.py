"""A stalled table recovery is started again; a slow or finished one is left alone (real Faust Recovery)."""

from __future__ import annotations

import logging

import faust
import pytest
from faust.types import TP

from streams.faust_tuning import RECOVERY_STALL_S, restart_stalled_recovery

pytestmark = pytest.mark.unit

CHANGELOG = TP("xrec-profiles-changelog", 0)
STARTED = 1_000.0


@pytest.fixture
def recovery() -> faust.tables.recovery.Recovery:
    """Faust's own Recovery of an app that never starts, put in the state it is in while reading
    changelogs: 120 records to read, none received yet."""
    app = faust.App("xrec-recovery-watch-test", broker="kafka://127.0.0.1:1")
    rec = app.tables.recovery  # type: ignore[attr-defined]  # the TableManager has it; TableManagerT does not say so
    rec._set_recovery_started()
    rec._recovery_started_at = STARTED
    rec.active_highwaters[CHANGELOG] = 119
    rec.active_offsets[CHANGELOG] = -1
    return rec


def test_a_recovery_that_received_nothing_for_the_stall_time_is_started_again(
    recovery: faust.tables.recovery.Recovery, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="streams.faust_tuning"):
        assert not restart_stalled_recovery(recovery, STARTED + RECOVERY_STALL_S - 1)
        assert not recovery.signal_recovery_start.is_set()
        assert restart_stalled_recovery(recovery, STARTED + RECOVERY_STALL_S + 1)
    assert recovery.signal_recovery_start.is_set()  # what Faust's recovery task waits on to start over
    assert "no changelog record for 21 s with 120 records still to read" in caplog.text


def test_a_recovery_still_receiving_records_is_left_alone(recovery: faust.tables.recovery.Recovery) -> None:
    recovery._active_events_received_at[CHANGELOG] = STARTED + 30
    assert not restart_stalled_recovery(recovery, STARTED + 40)
    assert restart_stalled_recovery(recovery, STARTED + 30 + RECOVERY_STALL_S)  # and then it stopped


def test_a_finished_or_idle_recovery_is_left_alone(recovery: faust.tables.recovery.Recovery) -> None:
    recovery.active_offsets[CHANGELOG] = 119  # read to the end
    assert not restart_stalled_recovery(recovery, STARTED + 600)
    recovery._set_recovery_ended()
    assert not restart_stalled_recovery(recovery, STARTED + 600)
    assert not recovery.signal_recovery_start.is_set()
