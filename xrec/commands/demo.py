"""``xrec demo``: placeholder registered so the CLI layout is fixed; its owner replaces this module."""

from __future__ import annotations

import argparse

from xrec.cli import CommandError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="(not built yet)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise CommandError("xrec demo is not built yet")
