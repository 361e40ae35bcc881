"""The root of every error xrec raises on purpose, so code that embeds xrec can catch one class.

The command line prints an ``XrecError`` as one line, without a traceback, and exits with its
``exit_code``; the library never imports the command line.
"""

from __future__ import annotations


class XrecError(Exception):
    """An error xrec raises on purpose, with a message a person can act on."""

    exit_code = 1

    def __init__(self, message: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CommandError(XrecError):
    """A command cannot do what was asked: a missing file, a bad option, data that does not fit."""
