"""``xrec tail``: placeholder registered so the CLI layout is fixed; its owner replaces this module."""

from __future__ import annotations

import argparse

from xrec.cli import CommandError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tail", help="(not built yet)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise CommandError("xrec tail is not built yet")
