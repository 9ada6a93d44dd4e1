"""Score `balanced-allocation`: kube-scheduler's NodeResourcesBalancedAllocation with GPU as a resource.
Prefer the node whose used fractions of cpu, memory and GPU stay closest to each other after placing the
pod: score = 100 * (1 - std(fractions)). A node that runs out of cpu while GPUs sit idle strands them."""

from __future__ import annotations

import numpy as np

from gangsched.framework import CycleContext, Normalized, Rows
from gangsched.model import CPU, GPU, MEMORY, Demand

DEFAULT_RESOURCES = (CPU, GPU)


class BalancedAllocation(Normalized):
    name = "balanced-allocation"
    per_node = True

    def __init__(self, resources: list[str] | None = None):
        self.resources = tuple(resources or DEFAULT_RESOURCES)

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        vec = state.vector(demand)
        fractions = []
        for res in self.resources:
            if res == GPU:
                cap = state.gpu_cap[rows].sum(axis=1).astype(np.float64)
                used = cap - state.gpu_free[rows].sum(axis=1) + demand.gpu_total_milli
            else:
                j = state.res_index[res if res in state.res_index else MEMORY]
                cap = state.allocatable[rows, j].astype(np.float64)
                used = state.used[rows, j] + vec[j]
            fractions.append(np.divide(used, cap, out=np.ones_like(cap), where=cap > 0))
        return 100.0 * (1.0 - np.std(np.minimum(np.vstack(fractions), 1.0), axis=0))
