"""Filter `taints`: every NoSchedule/NoExecute taint of the node is tolerated by the pod."""

from __future__ import annotations

from typing import Final

import numpy as np

from gangsched.framework import CycleContext, Rows
from gangsched.model import Demand


class TaintToleration:
    name = "taints"
    reason = "node(s) had untolerated taint"
    per_node = True
    static: Final = True  # reads the nodes' taints only

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        untolerated = np.array([not any(tol.tolerates(t) for tol in demand.tolerations) for t in state.taints],
                               dtype=bool)
        if not untolerated.any():
            return np.ones(len(state.unschedulable[rows]), dtype=bool)
        return ~state.taint_matrix[rows][:, untolerated].any(axis=1)
