"""Python's garbage collector in a worker: frozen out of the long-lived objects, its pauses in the metrics."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams.collector import CollectorPauses, freeze_what_lives_forever
from xrec.metrics import XrecMetrics

pytestmark = pytest.mark.unit


def pauses(metrics: XrecMetrics, generation: int) -> float:
    return metrics.registry.get_sample_value("xrec_gc_pause_seconds_count", {"generation": str(generation)}) or 0.0


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """A test that freezes gives the objects back afterwards, so the rest of the suite collects as usual."""
    yield
    gc.unfreeze()


def test_each_collection_is_observed_once_under_its_generation_while_watched() -> None:
    metrics = XrecMetrics()
    watcher = CollectorPauses(metrics).watch()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        watcher.stop()
    assert pauses(metrics, 0) >= 1
    assert pauses(metrics, 2) >= 2  # the interpreter may collect on its own meanwhile, never fewer
    seconds = metrics.registry.get_sample_value("xrec_gc_pause_seconds_sum", {"generation": "2"})
    assert seconds is not None and seconds >= 0
    before = pauses(metrics, 2)
    gc.collect(2)
    assert pauses(metrics, 2) == before and watcher not in gc.callbacks  # stopped: no longer observed


def test_what_exists_when_the_worker_freezes_is_out_of_the_collectors_reach(unfrozen: None) -> None:
    class Held:
        """A long-lived object the collector tracks (a plain instance with a __dict__)."""

    held = [Held() for _ in range(1000)]
    assert all(gc.is_tracked(h) for h in held)
    freeze_what_lives_forever()
    assert gc.get_freeze_count() >= len(held)
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(h) in tracked for h in held)  # a full collection no longer walks them
    later = Held()
    assert id(later) in {id(o) for o in gc.get_objects()}  # what comes after is collected as usual
