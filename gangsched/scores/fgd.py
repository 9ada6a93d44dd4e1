"""Score `fgd`: fragmentation gradient descent — prefer the node whose expected GPU fragmentation against
the workload's typical pods grows least (or shrinks most) if the pod lands there (see `gangsched.frag`).

raw = F(node) - F(node with the pod on its best device), in GPU milli. With `quantize`, the score is
int(100 * sigmoid(raw / 1000)), exactly as the FGD paper's plugin, whose coarse integer steps leave many
ties for the random tie-break; without it the exact difference is min-max normalised.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from gangsched.frag import fragmentation_change
from gangsched.framework import CycleContext, Rows, minmax
from gangsched.model import Demand


def quantized(gain: np.ndarray) -> np.ndarray:
    return np.trunc(100.0 / (1.0 + np.exp(-gain / 1000.0)))


class Fgd:
    name = "fgd"
    per_node = True
    reads_workload: Final = True  # scores against the typical pod mix

    def __init__(self, quantize: bool = False):
        self.quantize = quantize

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        if ctx.workload is None:
            raise ValueError("score 'fgd' needs the workload's typical pods (CycleContext.workload)")
        idx = rows if isinstance(rows, np.ndarray) and rows.dtype != bool else np.arange(ctx.state.n_nodes)[rows]
        if demand.gpu_count == 0 and demand.request("cpu") == 0:
            return np.full(len(idx), 100.0)
        before, after = fragmentation_change(ctx.state, ctx.workload, demand, idx)
        gain = before - after
        return quantized(gain) if self.quantize else gain

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        return raw if self.quantize else minmax(raw)
