"""Filter `resources`: scalar requests fit the node's free allocatable, and the GPU request fits per device.

A whole-GPU pod needs `gpu_count` devices with all 1000 milli free; a GPU-sharing pod needs one device
with at least `gpu_milli` free. Only devices of an accepted model count when the pod names models.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from gangsched.framework import CycleContext, Rows
from gangsched.model import GPU, Demand
from gangsched.state import ClusterState


def count_per_node(mask: np.ndarray) -> np.ndarray:
    """True values per row of a bool [n, k] mask: `mask.sum(axis=1)`, several times faster for a short row."""
    if mask.shape[-1] > np.iinfo(np.uint8).max:
        return mask.sum(axis=-1)
    return np.einsum("...k->...", mask.view(np.uint8))


def usable_devices(state: ClusterState, demand: Demand, rows: Rows) -> np.ndarray:
    """bool [n, G]: devices of the selected nodes with room for one device's share of the demand."""
    ok = state.gpu_free[rows] >= demand.gpu_milli
    if demand.gpu_models:
        ok &= model_match(state, demand, rows)
    return ok


def model_ids(state: ClusterState, demand: Demand) -> list[int]:
    return [state.model_index[m] for m in demand.gpu_models if m in state.model_index]


def model_match(state: ClusterState, demand: Demand, rows: Rows) -> np.ndarray:
    """bool [n, G]: devices of the selected nodes whose model the demand accepts
    (`np.isin(state.dev_model[rows], model_ids(state, demand))`)."""
    models = state.dev_model[rows]
    ids = model_ids(state, demand)
    if len(ids) == 1:
        return models == ids[0]
    return np.isin(models, ids)


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
            ok &= count_per_node(usable_devices(state, demand, rows)) >= demand.gpu_count
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
            lacking = usable_devices(state, demand, rows).sum(axis=1) < demand.gpu_count
            reasons[f"Insufficient {GPU}"] = int(lacking.sum())
        return +reasons
