"""Score `best-fit`: prefer the node the pod fills most tightly, by its cpu and GPU left over afterwards.

raw = 100 * (1 - (0.5 * cpu_left_after / cpu_scale + 0.5 * gpu_left_after / gpu_scale)), min-max normalised.
With `quantize` the raw and normalised scores are truncated to integers and all-equal scores become 0,
exactly like the BestFit baseline of the FGD paper (cpu_scale 128000 milli, gpu_scale 8000 milli).
"""

from __future__ import annotations

import numpy as np

from gangsched.frag import cpu_free
from gangsched.framework import CycleContext, Rows, minmax
from gangsched.model import CPU, Demand


class BestFit:
    name = "best-fit"
    per_node = True

    def __init__(self, cpu_scale: float = 128_000, gpu_scale: float = 8_000, quantize: bool = False):
        self.cpu_scale, self.gpu_scale, self.quantize = cpu_scale, gpu_scale, quantize

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        cpu_left = cpu_free(state, rows) - demand.request(CPU)
        gpu_left = state.gpu_free[rows].sum(axis=1) - demand.gpu_total_milli
        raw = (1 - (0.5 * cpu_left / self.cpu_scale + 0.5 * gpu_left / self.gpu_scale)) * 100
        return np.trunc(raw) if self.quantize else raw

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        if not self.quantize or raw.size == 0:
            return minmax(raw)
        lo, hi = raw.min(), raw.max()
        return np.zeros_like(raw) if hi == lo else np.floor((raw - lo) * 100 / (hi - lo))
