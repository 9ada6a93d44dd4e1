"""Progress of long simulator runs: a tqdm bar on a terminal, plain lines when stderr is a file or a pipe.

A 12-minute run that prints nothing into a CI log looks hung, so without a terminal a line goes out at the
start, at most every `every` seconds while running, and at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


class LineProgress:
    """The part of tqdm's interface the simulator uses (update, close, context manager), as log lines."""

    def __init__(self, total: int, desc: str, unit: str, every: float = 30.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream, self.clock = stream or sys.stderr, clock
        self.n = 0
        self.started = self.last = clock()
        self._say(f"{desc}: 0/{total} {unit}s")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if n and now - self.last >= self.every and self.n < self.total:
            self.last = now
            self._say(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {now - self.started:.0f} s")

    def close(self) -> None:
        self._say(f"{self.desc}: {self.n}/{self.total} {self.unit}s done in {self.clock() - self.started:.0f} s")

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def progress(total: int, desc: str, unit: str, enabled: bool = True, leave: bool = True) -> Any:
    """A tqdm bar if stderr is a terminal, else `LineProgress`; nothing shown when not `enabled`."""
    from tqdm import tqdm  # the sim extra

    if not enabled or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=leave)
    return LineProgress(total, desc, unit)
