"""``xrec config``: show the effective settings or the documentation table."""

from __future__ import annotations

import argparse

from xrec.commands import print_json
from xrec.config import Settings, settings_table_markdown


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="show the effective XREC_* settings (secrets masked)")
    p.add_argument("--markdown", action="store_true", help="print the README's configuration table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table_markdown())
    else:
        print_json(Settings.from_env().redacted())
    return 0
