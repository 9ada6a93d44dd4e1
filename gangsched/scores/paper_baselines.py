"""The baseline policies of the FGD paper (ATC'23), reimplemented to put our numbers beside theirs:
`random`, `dotprod`, `gpu-clustering` and `gpu-packing`. Integer arithmetic follows their Go plugins in
hkust-adsl/kubernetes-scheduler-simulator (`pkg/simulator/plugin/*_score.go`); none is normalised."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gangsched.framework import CycleContext, Normalized, Rows
from gangsched.model import CPU, MILLI_PER_GPU, Demand

if TYPE_CHECKING:
    from gangsched.state import ClusterState

CPU_SCALE = 128_000
GPU_SCALE = 8_000


def _scales(state: ClusterState) -> tuple[int, int]:
    """The paper's normalisers are the largest node of its cluster (128 cores, 8 GPUs); a cluster with bigger
    nodes uses its own largest, so that scores stay within 0..100 (they depend on the node set only)."""
    cpu = int(state.allocatable[:, state.res_index[CPU]].max(initial=0))
    gpu = MILLI_PER_GPU * int(state.gpu_count.max(initial=0))
    return max(CPU_SCALE, cpu), max(GPU_SCALE, gpu)


class RandomScore(Normalized):
    """One feasible node, drawn uniformly, gets 100 (their PreScore picks it); the rest 0."""

    name = "random"
    per_node = False

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        return ctx.rng.random(len(ctx.state.unschedulable[rows])) * 100.0


class DotProd(Normalized):
    """Prefer nodes whose leftover (cpu, GPU) vector is least aligned with the pod's request."""

    name = "dotprod"
    per_node = True

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        cpu_left = state.free[rows, state.res_index[CPU]]
        gpu_left = state.gpu_free[rows].sum(axis=1)
        cpu = demand.request(CPU)
        cpu_scale, gpu_scale = _scales(state)
        dot = (cpu_left / cpu_scale) * (cpu / cpu_scale) + (gpu_left / gpu_scale) * (demand.gpu_total_milli
                                                                                     / gpu_scale)
        return np.where(cpu_left < cpu, 0.0, np.trunc(100 * (1 - dot / 2)))


class GpuClustering(Normalized):
    """Keep pods of the same GPU shape together: +75 on a node holding only that shape, +50 if it holds
    it among others, +25 on a node with no GPU pods, plus up to 25 for how full the node's GPUs are."""

    name = "gpu-clustering"
    per_node = True

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        tag = demand.gpu_tag
        n = len(state.unschedulable[rows])
        if tag < 0:
            return np.zeros(n)
        gpu_scale = _scales(state)[1]
        base = (25 * (gpu_scale - state.gpu_free[rows].sum(axis=1).astype(np.int64))) // gpu_scale
        tags = state.gpu_tags[rows] > 0
        n_tags = tags.sum(axis=1)
        has = tags[:, tag]
        bonus = np.where(has, np.where(n_tags == 1, 75, 50), np.where(n_tags == 0, 25, 0))
        return (base + bonus).astype(np.float64)


class GpuPacking(Normalized):
    """Prefer partly used GPUs over fresh ones, and fresh GPUs on partly used nodes over empty nodes."""

    name = "gpu-packing"
    per_node = True

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        left = state.gpu_free[rows].astype(np.int64)
        n = len(left)
        if demand.gpu_count == 0:
            return np.zeros(n)
        cap = state.gpu_cap[rows]
        real = cap > 0
        n_gpu = real.sum(axis=1)
        n_full_free = ((left == MILLI_PER_GPU) & real).sum(axis=1)
        all_free = n_full_free == n_gpu
        # walk devices by ascending free milli, take the first gpu_count that fit
        order = np.argsort(np.where(real, left, MILLI_PER_GPU + 1), axis=1, kind="stable")
        sorted_left = np.take_along_axis(left, order, axis=1)
        sorted_real = np.take_along_axis(real, order, axis=1)
        fits = (sorted_left >= demand.gpu_milli) & sorted_real
        chosen = fits & (np.cumsum(fits, axis=1) <= demand.gpu_count)
        used_full = (chosen & (sorted_left == MILLI_PER_GPU)).sum(axis=1)
        partial = np.maximum(100 - (np.where(chosen, sorted_left * 100 // MILLI_PER_GPU, 0).sum(axis=1)) // 10,
                             50)
        score = np.where(used_full > 0, np.maximum(50 - used_full, 33), partial)
        score = np.where(all_free, np.maximum(33 - n_full_free, n_full_free), score)
        return score.astype(np.float64)
