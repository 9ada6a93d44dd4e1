"""Filter `gpu-model`: a pod that names GPU models (Alibaba's `gpu_spec`, or the `gangsched.io/gpu-models`
annotation) runs only on nodes with at least `gpu_count` devices of one of those models."""

from __future__ import annotations

from typing import Final

import numpy as np

from gangsched.framework import CycleContext, Rows
from gangsched.model import Demand
from gangsched.state import count_per_node


class GpuModel:
    name = "gpu-model"
    reason = "node(s) had no GPU of the requested model"
    per_node = True
    static: Final = True  # reads the nodes' device models only

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        if not demand.gpu_models or not demand.gpu_count:
            return np.ones(len(state.unschedulable[rows]), dtype=bool)
        matching = count_per_node(state.model_match(demand, rows))
        return matching >= demand.gpu_count
