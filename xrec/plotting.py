"""matplotlib for the ``--plot`` options of ``xrec eval`` and ``xrec bench``: optional, file output only."""

from __future__ import annotations

from typing import Any

from xrec.errors import CommandError


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or a clear error when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install 'xrec[dev]' (or matplotlib)") from None
    return plt
