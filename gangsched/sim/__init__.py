"""The simulator: the scheduling core driven by trace events instead of an API server."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(given: str | None = None) -> Path:
    """The public traces: --data, else $GANGSCHED_DATA, else ../shared/data beside the checkout or cwd."""
    candidates = [given, os.environ.get("GANGSCHED_DATA"),
                  Path(__file__).resolve().parents[2].parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise FileNotFoundError(f"trace data not found (tried {', '.join(str(c) for c in candidates if c)}); "
                            "pass --data or set GANGSCHED_DATA")
