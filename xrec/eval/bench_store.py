"""Placeholder for ``xrec bench store``; its owner replaces this module."""

from __future__ import annotations

import argparse
from typing import Any

from xrec.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise CommandError("xrec bench store is not built yet")


def format_table(result: dict[str, Any]) -> str:
    return str(result)
