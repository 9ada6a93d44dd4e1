"""Filter `unschedulable`: cordoned nodes (`spec.unschedulable`) take no new pods, unless the pod tolerates
`node.kubernetes.io/unschedulable:NoSchedule`, as kube-scheduler's NodeUnschedulable does."""

from __future__ import annotations

from typing import Final

import numpy as np

from gangsched.framework import CycleContext, Rows
from gangsched.model import Demand, Taint, TaintEffect

CORDON = Taint("node.kubernetes.io/unschedulable", "", TaintEffect.NO_SCHEDULE)


class Unschedulable:
    name = "unschedulable"
    reason = "node(s) were unschedulable"
    per_node = True
    static: Final = True  # reads spec.unschedulable only

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        cordoned = ctx.state.unschedulable[rows]
        if any(t.tolerates(CORDON) for t in demand.tolerations):
            return np.ones_like(cordoned)
        return ~cordoned
