"""What a run's records and samples mean: which list answered which event, latency percentiles, cost per
event, the fresh rate within the latency a user asks, and the shares of a py-spy profile."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from xrec.bench.pipeline.kafka_io import OutRecord
from xrec.bench.pipeline.process import SampledProcess
from xrec.worker_process import MetricSamples


@dataclass
class Coverage:
    """Which published list first answered each event (a list answers its user's events up to its trigger)."""

    covered: int
    first_list_s: float
    last_list_s: float
    lists: int
    answered_at: dict[str, float] = field(default_factory=dict)  # event_id -> wall s of its first list

    @property
    def events_per_s(self) -> float:
        span = self.last_list_s - self.first_list_s
        return self.covered / span if span > 0 else math.nan

    @property
    def lists_per_s(self) -> float:
        span = self.last_list_s - self.first_list_s
        return self.lists / span if span > 0 else math.nan


def coverage(events: list[dict[str, Any]], records: list[OutRecord]) -> Coverage:
    position: dict[str, tuple[str, int]] = {}
    per_user: dict[str, list[str]] = {}
    for e in events:
        seq = per_user.setdefault(e["user_id"], [])
        position[e["event_id"]] = (e["user_id"], len(seq))
        seq.append(e["event_id"])
    done: dict[str, int] = {}  # user -> events answered so far
    answered: dict[str, float] = {}
    times = []
    lists = 0
    for rec in sorted(records, key=lambda r: r.timestamp_ms):
        if rec.value is None:
            continue
        trigger = orjson.loads(rec.value).get("trigger_event_id")
        if trigger not in position:
            continue
        lists += 1
        user, index = position[trigger]
        start = done.get(user, 0)
        if index + 1 > start:
            for event_id in per_user[user][start : index + 1]:
                answered[event_id] = rec.timestamp_ms / 1000.0
            done[user] = index + 1
        times.append(rec.timestamp_ms / 1000.0)
    if not times:
        return Coverage(0, math.nan, math.nan, 0)
    return Coverage(sum(done.values()), min(times), max(times), lists, answered)


def unanswered(
    events: list[dict[str, Any]], cov: Coverage, records: list[OutRecord], limit: int = 20
) -> list[dict[str, Any]]:
    """The first ``limit`` events no list answered, each with where it sat in its user's sequence and
    the triggers of that user's lists: what a run that missed events must show to be diagnosed."""
    triggers: dict[str, list[str]] = {}
    for rec in records:
        if rec.value is not None and rec.key is not None:
            trigger = orjson.loads(rec.value).get("trigger_event_id")
            triggers.setdefault(rec.key.decode(errors="replace"), []).append(str(trigger))
    per_user: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for e in events:
        index = per_user[e["user_id"]] = per_user.get(e["user_id"], -1) + 1
        if e["event_id"] not in cov.answered_at and len(out) < limit:
            out.append({"event_id": e["event_id"], "user_id": e["user_id"], "index_in_user": index, "type": e["type"]})
    for row in out:
        row["user_events"] = per_user[row["user_id"]] + 1
        row["list_triggers"] = triggers.get(row["user_id"], [])[-5:]
    return out


def batch_phases(before: MetricSamples, after: MetricSamples) -> dict[str, Any]:
    """Where the worker's batches spent their time between two readings of its metrics: batches, mean
    events per batch, the mean seconds of each phase (``xrec_batch_seconds``) per batch, and the offset
    commits made meanwhile with their mean duration (``xrec_commit_seconds``), and the full collections of
    Python's garbage collector with their mean pause, and all its pauses together (``xrec_gc_pause_seconds``)."""
    from xrec.metrics import BATCH_PHASES

    def delta(name: str, **labels: str) -> float:
        return after.sum(name, **labels) - before.sum(name, **labels)

    batches = delta("xrec_batch_events_count")
    out: dict[str, Any] = {
        "batches": batches,
        "events_per_batch": delta("xrec_batch_events_sum") / batches if batches else math.nan,
    }
    for phase in BATCH_PHASES:
        count = delta("xrec_batch_seconds_count", phase=phase)
        out[f"{phase}_ms"] = 1000.0 * delta("xrec_batch_seconds_sum", phase=phase) / count if count else math.nan
    commits = delta("xrec_commit_seconds_count")  # Faust's, on its own timer: per commit, not per batch
    out["commits"] = commits
    out["commit_ms"] = 1000.0 * delta("xrec_commit_seconds_sum") / commits if commits else math.nan
    full = delta("xrec_gc_pause_seconds_count", generation="2")
    out["full_gcs"] = full
    out["full_gc_ms"] = 1000.0 * delta("xrec_gc_pause_seconds_sum", generation="2") / full if full else math.nan
    out["gc_ms"] = 1000.0 * delta("xrec_gc_pause_seconds_sum")
    return out


#: The freshness a user asks of a list: the bench reports the fresh rate a worker serves within it.
FRESH_P99_MS = 100.0


def fresh_rate_within(curve: list[dict[str, Any]], p99_ms: float = FRESH_P99_MS) -> dict[str, Any]:
    """The offered rate of fresh events up to which the list's p99 stays within ``p99_ms``, from one
    latency curve: interpolated between the last level within it and the first level above it.

    The levels are shares of the backlog's saturation, where batches are large and cheap; fresh events
    come a few at a time, so this is the figure to size workers by (README, "Fresh events never wait").
    """
    levels = sorted(curve, key=lambda c: c["offered_rate"])
    out: dict[str, Any] = {"p99_ms": p99_ms, "events_per_s": None, "bound": "none"}
    if not levels:
        return out

    def within(level: dict[str, Any]) -> bool:  # an unanswered event is a list that never came
        return level["answered"] == level["events"] and level["latency_ms"]["p99"] <= p99_ms

    for i, level in enumerate(levels):
        if within(level):
            continue
        if i == 0:
            return {**out, "events_per_s": level["offered_rate"], "bound": "below"}  # even the lowest level misses
        low = levels[i - 1]
        r0, r1 = low["offered_rate"], level["offered_rate"]
        q0, q1 = low["latency_ms"]["p99"], level["latency_ms"]["p99"]
        rate = r0 + (p99_ms - q0) * (r1 - r0) / (q1 - q0) if q1 > p99_ms else r0  # else: it lost events
        return {**out, "events_per_s": rate, "bound": "about"}
    return {**out, "events_per_s": levels[-1]["offered_rate"], "bound": "at least"}  # every level within it


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan}
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


def cost(child: SampledProcess, cov: Coverage) -> dict[str, Any]:
    """CPU per 1,000 events and RSS growth of ``child`` between the first and the last list."""
    s = child.sampler
    if len(s.samples) < 2 or not cov.covered or math.isnan(cov.first_list_s):
        return {"cpu_s_per_1k_events": math.nan, "cpu_util": math.nan, "rss_mb_end": math.nan}
    cpu = s.cpu_at(cov.last_list_s) - s.cpu_at(cov.first_list_s)
    span = cov.last_list_s - cov.first_list_s
    threads = s.threads_between(cov.first_list_s, cov.last_list_s)
    total = sum(threads.values())
    return {
        "cpu_s_per_1k_events": 1000.0 * cpu / cov.covered,
        "cpu_util": cpu / span if span > 0 else math.nan,
        "cpu_share_by_thread": {k: v / total for k, v in sorted(threads.items(), key=lambda kv: -kv[1])}
        if total
        else {},
        "rss_mb_start": s.rss_at(cov.first_list_s) / 2**20,
        "rss_mb_end": s.rss_at(cov.last_list_s) / 2**20,
    }


#: Frames of a thread that waits rather than works: left out of a profile's shares.
IDLE_FRAMES = ("select (selectors.py", "wait (threading.py", "_find_and_load", "epoll")


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the busiest functions in a py-spy raw (collapsed-stack) profile.

    Waiting and importing frames are left out, so shares are of the time the worker's Python threads
    worked. Native threads without Python frames (Qdrant Edge's ``edge-search``) are not in it.
    """
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit() or any(f in stack for f in IDLE_FRAMES):
            continue
        n = int(count)
        busy += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            within[f] = within.get(f, 0) + n
    if not busy:
        return {"busy_samples": 0, "self": [], "inclusive_xrec": []}

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, n / busy) for f, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    entry = (
        "<module>",
        "<listcomp>",
        "<setcomp>",
        "<dictcomp>",
        "(xrec/cli.py)",
        "(xrec/commands/",
        "(streams/worker.py)",
    )
    xrec_frames = {
        f: n for f, n in within.items() if ("(xrec/" in f or "(streams/" in f) and not any(e in f for e in entry)
    }
    return {"busy_samples": busy, "self": ranked(own), "inclusive_xrec": ranked(xrec_frames)}
