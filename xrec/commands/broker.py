"""``xrec broker start|stop|status``: the local single-node Kafka broker (see ``xrec.broker``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xrec.commands import print_json
from xrec.errors import CommandError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "broker",
        help="start, stop or inspect the local Kafka broker (no Docker)",
        description="A single-node Apache Kafka broker (KRaft) fetched once from Maven Central and run with java. "
        "Skipped entirely when XREC_KAFKA_BOOTSTRAP points at an existing cluster.",
    )
    actions = p.add_subparsers(dest="broker_action", metavar="ACTION", required=True)
    for name, help_text in (
        ("start", "fetch Kafka (first run), format storage (once) and start the broker; says so if it runs already"),
        ("stop", "stop the broker cleanly (SIGTERM, then SIGKILL after a timeout)"),
        ("status", "tell whether the broker runs, with pid, port, version and data dir"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument(
            "--port", type=int, default=None, help="client port on 127.0.0.1 (default XREC_BROKER_PORT)"
        )
        action.add_argument(
            "--data-dir", type=Path, default=None, help="broker data directory (default $XREC_HOME/broker)"
        )
        action.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        action.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xrec.broker import BrokerError, LocalBroker
    from xrec.config import Settings, SettingsError

    try:
        settings = Settings.from_env()
        if args.broker_action == "start" and settings.kafka_bootstrap:
            return _external(settings.kafka_bootstrap, args.json)
        broker = LocalBroker.from_settings(settings, port=args.port, data_dir=args.data_dir)
        if args.broker_action == "start":
            report = broker.start()
            _show(report.to_dict(), args.json, _start_line(report.to_dict()))
        elif args.broker_action == "stop":
            was_running = broker.stop()
            info = {**broker.status().to_dict(), "was_running": was_running}
            line = (
                f"broker in {broker.data_dir} stopped" if was_running else f"no broker was running in {broker.data_dir}"
            )
            _show(info, args.json, line)
        else:
            status = broker.status().to_dict()
            _show(status, args.json, _status_line(status, settings.kafka_bootstrap))
            return 0
    except (BrokerError, SettingsError) as exc:
        raise CommandError(str(exc)) from None
    return 0


def _external(bootstrap: str, as_json: bool) -> int:
    line = f"XREC_KAFKA_BOOTSTRAP is set: using the existing broker at {bootstrap}; nothing started"
    _show({"running": None, "external": True, "bootstrap": bootstrap}, as_json, line)
    return 0


def _show(info: dict[str, object], as_json: bool, line: str) -> None:
    if as_json:
        print_json(info)
    else:
        print(line)


def _start_line(info: dict[str, object]) -> str:
    if info["already_running"]:
        return f"already running: Kafka {info['version']} on {info['bootstrap']} (pid {info['pid']}, data dir {info['data_dir']})"
    steps = [s for s, done in (("fetched jars", info["downloaded"]), ("formatted storage", info["formatted"])) if done]
    done_text = f"; {', '.join(steps)}" if steps else ""
    return (
        f"started Kafka {info['version']} on {info['bootstrap']} in {info['seconds']:.1f}s "
        f"(pid {info['pid']}, data dir {info['data_dir']}, log {info['log_file']}{done_text})"
    )


def _status_line(info: dict[str, object], external: str) -> str:
    note = f" (XREC_KAFKA_BOOTSTRAP={external} is what clients use)" if external else ""
    if not info["running"]:
        return f"not running: data dir {info['data_dir']}, port {info['port']}{note}"
    return (
        f"running: Kafka {info['version']} on {info['bootstrap']} (pid {info['pid']}, "
        f"{info['security_protocol']}, data dir {info['data_dir']}, log {info['log_file']}){note}"
    )
