"""Scores `least-allocated` (spread) and `most-allocated` (bin-pack), as kube-scheduler's NodeResourcesFit
strategies: per resource, the share of allocatable that would be free (or used) after placing the pod,
averaged with weights. `nvidia.com/gpu` counts the node's GPU milli as one more resource."""

from __future__ import annotations

import numpy as np

from gangsched.framework import CycleContext, Normalized, Rows
from gangsched.model import CPU, GPU, MEMORY, Demand

DEFAULT_WEIGHTS = {CPU: 1, MEMORY: 1, GPU: 1}


def _used_fraction(ctx: CycleContext, demand: Demand, rows: Rows, weights: dict[str, int]) -> np.ndarray:
    """Weighted mean over resources of (used + requested) / allocatable, in [0, 1]; 0-capacity skipped."""
    state = ctx.state
    total = 0.0
    weight = 0.0
    vec = state.vector(demand)
    for res, w in weights.items():
        if res == GPU:
            # device sums by einsum: exact integers like .sum(axis=1), faster over 8 devices
            cap = np.einsum("ng->n", state.gpu_cap[rows]).astype(np.float64)
            used = cap - np.einsum("ng->n", state.gpu_free[rows]) + demand.gpu_total_milli
        elif res in state.res_index:
            j = state.res_index[res]
            cap = state.allocatable[rows, j].astype(np.float64)
            used = state.used[rows, j] + vec[j]
        else:
            continue
        has = cap > 0
        total = total + w * np.where(has, np.minimum(used, cap) / np.where(has, cap, 1), 0.0)
        weight = weight + w * has
    return np.where(np.asarray(weight) > 0, total / np.maximum(weight, 1e-12), 0.0)


class MostAllocated(Normalized):
    name = "most-allocated"
    per_node = True

    def __init__(self, resources: dict[str, int] | None = None):
        self.weights = resources or DEFAULT_WEIGHTS

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        return 100.0 * _used_fraction(ctx, demand, rows, self.weights)


class LeastAllocated(MostAllocated):
    name = "least-allocated"

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        return 100.0 * (1.0 - _used_fraction(ctx, demand, rows, self.weights))
