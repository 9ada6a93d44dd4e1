"""Filter `resources`: scalar requests fit the node's free allocatable, and the GPU request fits per device.

A whole-GPU pod needs `gpu_count` devices with all 1000 milli free; a GPU-sharing pod needs one device
with at least `gpu_milli` free. Only devices of an accepted model count when the pod names models.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from gangsched.framework import CycleContext, Rows
from gangsched.model import GPU, Demand
from gangsched.state import count_per_node


class ResourceFit:
    name = "resources"
    reason = "Insufficient resources"
    per_node = True

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        vec = state.vector(demand)
        fits = state.used[rows] + vec <= state.allocatable[rows]
        need = vec.nonzero()[0]  # resources the pod does not ask for are not checked
        if len(need) < len(vec):
            fits = fits[:, need]
        ok = count_per_node(fits) == fits.shape[1]  # fits.all(axis=1)
        if demand.gpu_count:
            ok &= count_per_node(state.usable_devices(demand, rows)) >= demand.gpu_count
        return ok

    def explain(self, ctx: CycleContext, demand: Demand, rows: np.ndarray) -> Counter[str]:
        """Per rejected node, the first resource it lacks (kube-scheduler counts each lacking resource)."""
        state = ctx.state
        vec = state.vector(demand)
        reasons: Counter[str] = Counter()
        short = state.used[rows] + vec > state.allocatable[rows]
        for j in np.flatnonzero(vec):
            reasons[f"Insufficient {state.resources[j]}"] = int(short[:, j].sum())
        if demand.gpu_count:
            lacking = state.usable_devices(demand, rows).sum(axis=1) < demand.gpu_count
            reasons[f"Insufficient {GPU}"] = int(lacking.sum())
        return +reasons
