"""Errors every layer may raise for the command line to print as one line."""

from __future__ import annotations


class CommandError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
