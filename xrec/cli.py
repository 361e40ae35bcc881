"""The ``xrec`` command line: one sub-command group per module in ``xrec.commands``.

Each command module exposes ``register(subparsers)`` and keeps heavy imports (torch, faust) inside
its handlers, so ``xrec --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from xrec import __version__
from xrec.config import SettingsError
from xrec.errors import XrecError

__all__ = ["build_parser", "main"]

#: Command modules in the order ``xrec --help`` lists them.
COMMAND_MODULES = ("demo", "worker", "broker", "model", "produce", "tail", "measure", "config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xrec",
        description="Streaming recommender for multilingual catalogs: Kafka in, Faust workers, Qdrant, lists out.",
    )
    parser.add_argument("--version", action="version", version=f"xrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"xrec.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SettingsError as exc:
        print(f"xrec: configuration: {exc}", file=sys.stderr)
        return exc.exit_code
    except XrecError as exc:  # every error xrec raises on purpose: one line, no traceback
        print(f"xrec: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
