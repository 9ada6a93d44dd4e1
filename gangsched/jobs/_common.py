"""What the job scripts share: deadlines, the weight digest and the one-line summary. No TF or torch imports."""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

# The same tiny model and schedule in every job: 20 steps of a 8-16-1 MLP on synthetic data.
STEPS = 20
BATCH = 32
DIM, HIDDEN = 8, 16
LR = 0.05

DEFAULT_STARTUP_DEADLINE = 120.0
# Once the cluster has formed, a peer dying mid-run can still leave the others blocked in a collective forever;
# this bounds the whole run so that no job can outlive its pod's purpose.
DEFAULT_RUN_DEADLINE = 900.0


def startup_deadline() -> float:
    return float(os.environ.get("STARTUP_DEADLINE_SECONDS", DEFAULT_STARTUP_DEADLINE))


def run_deadline() -> float:
    return float(os.environ.get("RUN_DEADLINE_SECONDS", DEFAULT_RUN_DEADLINE))


def arm_watchdog(seconds: float, what: str) -> None:
    """Exit the process (status 1, all threads' tracebacks on stderr) unless disarmed within `seconds`.

    faulthandler's watchdog is a C thread: it fires even while the main thread sits in a TF/gloo call that
    holds the GIL or ignores signals, which is exactly where a worker with missing peers hangs.
    """
    log(f"{what}: deadline {seconds:.0f}s")
    faulthandler.dump_traceback_later(seconds, exit=True)


def disarm_watchdog() -> None:
    faulthandler.cancel_dump_traceback_later()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def weights_digest(arrays: Iterable[np.ndarray]) -> str:
    """sha256 (first 16 hex digits) of the weights as little-endian float32, in order: equal iff bitwise equal."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return h.hexdigest()[:16]


def summary(**fields: Any) -> None:
    """The job's result as one JSON line on stdout, the line the tests and the demo read."""
    print(json.dumps(fields, sort_keys=True), flush=True)


def tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise SystemExit("TF_CONFIG is not set")
    return json.loads(raw)
