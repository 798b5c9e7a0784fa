"""Matplotlib for the reports: file-only, and optional (the ``demo`` extra)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the headless Agg backend, or None when matplotlib is not
    installed: a report then skips its PNGs and keeps its tables."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
