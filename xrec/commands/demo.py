"""``xrec demo``: the README's first command — the whole pipeline on one machine, live, then a summary."""

from __future__ import annotations

import argparse

from xrec.commands import print_json
from xrec.errors import CommandError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the whole recommender on a multilingual demo catalog with simulated readers, live",
        description=(
            "Starts the local Kafka broker unless XREC_KAFKA_BOOTSTRAP is set, prepares the default model if "
            "needed, starts a worker with its own app id, topics and store, sends a catalog of news items in "
            "seven languages (football, cooking, astronomy, jazz, hiking, programming in each), plays simulated "
            "readers who each follow one topic in one language, prints each list as it arrives, and ends with "
            "a summary: events, event-to-list latency, how much of each list is on the reader's topic and in a "
            "language they never read, catalog coverage. Then it stops what it started and deletes its topics."
        ),
    )
    p.add_argument(
        "--users", type=int, default=14, metavar="N", help="simulated readers (default 14: two per language)"
    )
    p.add_argument(
        "--items-per-topic",
        type=int,
        default=None,
        metavar="N",
        help="catalog items per topic and language (default: all 8, i.e. 336 items)",
    )
    p.add_argument(
        "--interval-ms", type=float, default=60.0, metavar="MS", help="pause between simulated events (default 60 ms)"
    )
    p.add_argument(
        "--top", type=int, default=5, metavar="N", help="items shown per user in the closing lists (default 5)"
    )
    p.add_argument(
        "--ready-timeout", type=float, default=300.0, metavar="S", help="seconds to wait for the worker's /readyz"
    )
    p.add_argument(
        "--impressions",
        action="store_true",
        help="show each list to its reader: send an impression event of it, as a client that renders lists "
        "does (the readers still click only what their plan says, so the lists learn they pass over them)",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the summary keep the worker up and keep printing lists (e.g. from `xrec produce events`) "
        "until Ctrl-C",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (progress on stderr)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xrec.config import Settings, SettingsError
    from xrec.demo.catalog import max_items_per_topic
    from xrec.demo.runner import Console, DemoOptions, DemoRun

    if args.users < 1:
        raise CommandError("--users must be at least 1")
    most = max_items_per_topic()
    if args.items_per_topic is not None and not 1 <= args.items_per_topic <= most:
        raise CommandError(f"--items-per-topic must be between 1 and {most}")
    if args.interval_ms < 0 or args.top < 1 or args.ready_timeout <= 0:
        raise CommandError("--interval-ms must be ≥ 0, --top ≥ 1 and --ready-timeout > 0")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None
    options = DemoOptions(
        users=args.users,
        items_per_topic=args.items_per_topic,
        keep_running=args.keep_running,
        as_json=args.json,
        interval_ms=args.interval_ms,
        top=args.top,
        ready_timeout_s=args.ready_timeout,
        impressions=args.impressions,
    )
    console = Console(as_json=args.json)
    demo = DemoRun(settings, options, console)
    summary = demo.run()
    if not demo.summary_shown:
        if args.json:
            print_json(summary)
        else:
            console.summary(summary)
    if summary["missing_users"]:
        raise CommandError(
            f"the demo finished incomplete: {len(summary['missing_users'])} users got no list for their last event"
        )
    return 0
