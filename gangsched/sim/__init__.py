"""The simulator: the scheduling core driven by trace events instead of an API server."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(given: str | None = None) -> Path:
    """The public traces: --data, else $GANGSCHED_DATA, else ../shared/data beside the checkout or cwd.

    A folder the user named that does not exist is an error, never a silent fall-back to the default."""
    env = os.environ.get("GANGSCHED_DATA")
    for name, value in (("--data", given), ("$GANGSCHED_DATA", env)):
        if value:
            if not Path(value).is_dir():
                raise FileNotFoundError(f"{name} {value}: no such directory")
            return Path(value)
    candidates = [Path(__file__).resolve().parents[2].parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"trace data not found (tried {', '.join(map(str, candidates))}); "
                            "pass --data or set GANGSCHED_DATA")
