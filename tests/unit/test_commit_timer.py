"""Faust's offset commits reach ``xrec_commit_seconds`` through the worker's sensor."""

from __future__ import annotations

import pytest

from streams.commits import CommitTimer
from xrec.metrics import XrecMetrics

pytestmark = pytest.mark.unit


def commits(metrics: XrecMetrics) -> tuple[float, float]:
    count = metrics.registry.get_sample_value("xrec_commit_seconds_count") or 0.0
    total = metrics.registry.get_sample_value("xrec_commit_seconds_sum") or 0.0
    return count, total


async def test_each_commit_faust_makes_is_observed_once_with_its_duration() -> None:
    metrics = XrecMetrics()
    timer = CommitTimer(metrics)
    assert commits(metrics) == (0.0, 0.0)
    state = timer.on_commit_initiated(consumer=None)
    timer.on_commit_completed(consumer=None, state=state)
    count, total = commits(metrics)
    assert count == 1 and total >= 0
