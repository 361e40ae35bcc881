"""The command line of ``xrec bench pipeline``: its flags and how their comma lists are read."""

from __future__ import annotations

import argparse
from pathlib import Path

from xrec.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=10_000, help="catalog size (default 10000)")
    parser.add_argument("--users", type=int, default=5_000, help="users in the replayed stream (default 5000)")
    parser.add_argument("--events", type=int, default=20_000, help="events drained at saturation (default 20000)")
    parser.add_argument(
        "--load-levels",
        default="10,30,50,70,90",
        help="offered loads of the latency curve, in percent of the lists/s at saturation (default 10,30,50,70,90)",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="one offered load in events/s instead of --load-levels")
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="length of each level of the latency curve (default 10)"
    )
    parser.add_argument("--plot", type=Path, help="write the latency-vs-load curve here (PNG)")
    parser.add_argument(
        "--naive-events", type=int, default=3_000, help="events the naive baseline processes (default 3000; 0: skip)"
    )
    parser.add_argument(
        "--with-text", action="store_true", help="also run the review-heavy mix (needs the prepared model)"
    )
    parser.add_argument("--text-events", type=int, default=2_000, help="events of the review-heavy mix (default 2000)")
    parser.add_argument(
        "--held-profiles",
        type=int,
        default=-1,
        help="profiles the worker holds before the run, restored from its changelog: returning users U0… with "
        "20 events each (default: half the users; 0: every user is new)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="Amazon-M2 sessions folder (default: XREC_DATA_DIR/amazon-m2)"
    )
    parser.add_argument("--generated", action="store_true", help="use a generated stream even if the data is there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--py-spy", type=Path, help="record the worker with py-spy during saturation into this file")
    parser.add_argument(
        "--py-spy-level",
        type=int,
        help="record the level of the latency curve at this percentage instead of saturation",
    )
    parser.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="sample only the thread that holds the interpreter lock (what bounds a worker stuck at ~1 core)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, stores) for inspection")
    parser.add_argument(
        "--workers",
        default="1",
        help="several workers in one consumer group, e.g. 2 or 1,2 (each count on fresh topics; see xrec/bench/scale.py)",
    )
    parser.add_argument(
        "--store",
        choices=("edge", "qdrant"),
        default="edge",
        help="with --workers: qdrant starts the Qdrant server binary (XREC_QDRANT_BIN) and every worker shares it",
    )
    parser.add_argument(
        "--kill-one", action="store_true", help="with --workers N>1: SIGKILL one worker during a 50%% level"
    )


def comma_ints(spec: str, flag: str, example: str, low: int, high: int) -> list[int]:
    """``1,2`` → ``[1, 2]``: a flag's comma-separated whole numbers, each within ``low``..``high``."""
    try:
        values = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"{flag} {spec!r}: expected numbers such as {example}") from None
    if not values or any(not low <= v <= high for v in values):
        raise CommandError(f"{flag} {spec!r}: each must be from {low} to {high}")
    return values


def worker_counts(spec: str) -> list[int]:
    return comma_ints(spec, "--workers", "1,2", 1, 1_000)


def parse_levels(spec: str) -> list[int]:
    """Offered loads in percent of saturation (above 0, at most 200)."""
    return comma_ints(spec, "--load-levels", "10,30,50", 1, 200)
