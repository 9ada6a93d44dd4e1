"""Device pickers (the reserve stage): which GPUs of the chosen node a pod gets.

Every picker gives whole-GPU pods fully free devices; they differ for GPU-sharing pods, and `topology`
keeps a multi-GPU pod inside as few interconnect groups (NVLink islands) as it can.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from gangsched.frag import cpu_free, fragmentation_per_device, node_fragmentation
from gangsched.framework import CycleContext
from gangsched.model import CPU, MILLI_PER_GPU, Demand
from gangsched.scores.fgd import quantized


def _usable(ctx: CycleContext, demand: Demand, node: int) -> np.ndarray:
    return ctx.state.usable_devices(demand, slice(node, node + 1))[0]


class BestDevice:
    """GPU-sharing pods go to the fullest device that still fits (lowest index on ties); whole GPUs to the
    lowest-index free devices. The FGD paper's `best` GPU selection."""

    name = "best"

    def __call__(self, ctx: CycleContext, demand: Demand, node: int) -> tuple[int, ...]:
        if demand.gpu_count == 0:
            return ()
        ok = _usable(ctx, demand, node)
        if demand.gpu_milli < MILLI_PER_GPU:
            free = np.where(ok, ctx.state.gpu_free[node], np.iinfo(np.int32).max)
            return (int(np.argmin(free)),)
        return tuple(ok.nonzero()[0][: demand.gpu_count].tolist())


class RandomDevice(BestDevice):
    """GPU-sharing pods go to a uniformly drawn device that fits (the paper's `random`)."""

    name = "random"

    def __call__(self, ctx: CycleContext, demand: Demand, node: int) -> tuple[int, ...]:
        if demand.gpu_count == 1 and demand.gpu_milli < MILLI_PER_GPU:
            return (int(ctx.rng.choice(np.flatnonzero(_usable(ctx, demand, node)))),)
        return super().__call__(ctx, demand, node)


class TopologyDevice(BestDevice):
    """Multi-GPU pods take free devices from the interconnect group with the fewest free devices that can
    still hold them all (keeping larger groups whole), else the fewest groups (largest first); others as `best`."""

    name = "topology"

    def __call__(self, ctx: CycleContext, demand: Demand, node: int) -> tuple[int, ...]:
        if demand.gpu_count <= 1:
            return super().__call__(ctx, demand, node)
        ok = np.flatnonzero(_usable(ctx, demand, node))
        groups = ctx.state.dev_group[node, ok]
        ids, sizes = np.unique(groups, return_counts=True)
        fitting = sizes >= demand.gpu_count
        if fitting.any():  # the tightest single group that holds the whole pod
            g = ids[fitting][np.argmin(sizes[fitting])]
            return tuple(int(d) for d in ok[groups == g][: demand.gpu_count])
        order = ids[np.argsort(-sizes, kind="stable")]
        picked = [int(d) for g in order for d in ok[groups == g]]
        return tuple(picked[: demand.gpu_count])


class FgdDevice(TopologyDevice):
    """GPU-sharing pods go to the device that leaves the node least fragmented. With `quantize`, devices
    are compared on the paper's integer score, first index on ties, as their `FGDScore` selection does."""

    name = "fgd"
    reads_workload: Final = True  # picks the device against the typical pod mix (falls back without one)

    def __init__(self, quantize: bool = False):
        self.quantize = quantize

    def __call__(self, ctx: CycleContext, demand: Demand, node: int) -> tuple[int, ...]:
        if not (demand.gpu_count == 1 and demand.gpu_milli < MILLI_PER_GPU) or ctx.workload is None:
            return super().__call__(ctx, demand, node)
        state, rows = ctx.state, np.array([node])
        left = state.gpu_free[rows].astype(np.int64)
        cpu_after = cpu_free(state, rows) - demand.request(CPU)
        acc = ctx.workload.accessible(state)[rows]
        frag = fragmentation_per_device(left, cpu_after, ctx.workload, acc, demand.gpu_milli)[0]
        frag = np.where(_usable(ctx, demand, node), frag, np.inf)
        if self.quantize:
            before = node_fragmentation(state, ctx.workload, rows)[0]
            score = np.where(np.isfinite(frag), quantized(before - frag), -1)
            return (int(np.argmax(score)),)
        return (int(np.argmin(frag)),)
