"""Argument types shared by the simulator's subcommands: each rejects a bad value with a message naming it,
which argparse prefixes with the option (`argument --seeds: ...`) and turns into exit code 2."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any


def positive(kind: type) -> Callable[[str], Any]:
    """int or float > 0 (and finite)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} {kind.__name__}") \
                from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in 0..1")
    return value


_SEED = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def seeds(text: str) -> list[int]:
    """'42-51' or '42,43,50-51': seeds >= 0 (numpy's generators take no negative seed), each once."""
    out: list[int] = []
    for part in text.split(","):
        m = _SEED.fullmatch(part)
        if not m:
            raise argparse.ArgumentTypeError(f"{text!r}: expected seeds >= 0 like 42-51 or 42,43 (got {part!r})")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise argparse.ArgumentTypeError(f"{text!r}: the range {lo}-{hi} is empty (it ends below its start)")
        out.extend(range(lo, hi + 1))
    twice = sorted({s for s in out if out.count(s) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r}: seed(s) {twice} given more than once")
    return out


def names(text: str) -> list[str]:
    """A comma list of non-empty names."""
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r}: an empty name in the list")
    return items
