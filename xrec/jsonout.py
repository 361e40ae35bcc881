"""Machine-readable output: exactly one JSON object on stdout (logs go to stderr)."""

from __future__ import annotations

import sys
from typing import Any

import orjson


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    sys.stdout.flush()
