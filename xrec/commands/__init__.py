"""Sub-commands of ``xrec``; each module registers one group and imports heavy things lazily."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from xrec.jsonout import print_json

__all__ = ["print_json", "register_measurements"]


def register_measurements(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    command: str,
    help_text: str,
    package: str,
    entries: dict[str, str],
) -> None:
    """``xrec <command> <name>``: each entry is the module ``<package>.<name>``, with ``add_arguments(parser)``,
    ``run(args) -> dict`` and ``format_table(result) -> str``; ``--json`` prints the dict instead."""
    p = sub.add_parser(command, help=help_text)
    group = p.add_subparsers(dest=command, metavar=command.upper(), required=True)
    for name, entry_help in entries.items():
        parser = group.add_parser(name, help=entry_help)
        parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        module = importlib.import_module(f"{package}.{name}")
        module.add_arguments(parser)
        parser.set_defaults(handler=_runner(module))


def _runner(module: ModuleType):  # type: ignore[no-untyped-def]
    def handler(args: argparse.Namespace) -> int:
        result = module.run(args)
        if args.json:
            print_json(result)
        else:
            print(module.format_table(result))
        return 0

    return handler
