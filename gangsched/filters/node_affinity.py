"""Filter `node-affinity`: `spec.nodeSelector` and required node affinity (In, NotIn, Exists, DoesNotExist).

Labels are stored as one value-code array per key, so each requirement is a vectorised `isin`.
"""

from __future__ import annotations

import numpy as np

from gangsched.framework import CycleContext, Rows
from gangsched.model import Demand, Requirement
from gangsched.state import ClusterState


def _codes(state: ClusterState, key: str, rows: Rows) -> np.ndarray | None:
    codes = state.label_codes.get(key)
    return None if codes is None else codes[rows]


def _isin(codes: np.ndarray, ids: list[int]) -> np.ndarray:
    """`np.isin(codes, ids)`, without its sorting overhead for the usual zero or one value."""
    if not ids:
        return np.zeros(codes.shape, dtype=bool)
    if len(ids) == 1:
        return codes == ids[0]
    return np.isin(codes, ids)


def requirement_mask(state: ClusterState, req: Requirement, rows: Rows, n: int) -> np.ndarray:
    codes = _codes(state, req.key, rows)
    if codes is None:  # no node has the key
        return np.full(n, req.operator in ("NotIn", "DoesNotExist"))
    if req.operator == "Exists":
        return codes >= 0
    if req.operator == "DoesNotExist":
        return codes < 0
    vocab = state.label_vocab[req.key]
    hit = _isin(codes, [vocab[v] for v in req.values if v in vocab])
    return hit if req.operator == "In" else ~hit  # NotIn also admits nodes without the key


def _selector_mask(state: ClusterState, key: str, value: str, rows: Rows, n: int) -> np.ndarray:
    """`requirement_mask` of `key In (value)`, a nodeSelector entry."""
    codes = _codes(state, key, rows)
    code = state.label_vocab[key].get(value) if codes is not None else None
    if codes is None or code is None:
        return np.zeros(n, dtype=bool)
    return codes == code


class NodeAffinity:
    name = "node-affinity"
    reason = "node(s) didn't match Pod's node affinity/selector"
    per_node = True
    static = True  # reads node labels only

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        state = ctx.state
        n = len(state.unschedulable[rows])
        ok = np.ones(n, dtype=bool)
        for key, value in demand.node_selector:
            ok &= _selector_mask(state, key, value, rows, n)
        if demand.affinity:
            any_term = np.zeros(n, dtype=bool)
            for term in demand.affinity:
                if not term:  # an empty nodeSelectorTerm matches no node
                    continue
                term_ok = np.ones(n, dtype=bool)
                for req in term:
                    term_ok &= requirement_mask(state, req, rows, n)
                any_term |= term_ok
            ok &= any_term
        return ok
