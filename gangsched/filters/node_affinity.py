"""Filter `node-affinity`: `spec.nodeSelector` and required node affinity (In, NotIn, Exists, DoesNotExist,
Gt, Lt on labels; In, NotIn on the node's name for `matchFields`).

Labels are stored as one value-code array per key, so each requirement is a vectorised `isin`, or for Gt/Lt a
lookup in a table of one verdict per distinct label value.
"""

from __future__ import annotations

from typing import Final

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
    if req.field:
        return _name_mask(state, req, rows)
    codes = _codes(state, req.key, rows)
    if codes is None:  # no node has the key
        return np.full(n, req.operator in ("NotIn", "DoesNotExist"))
    if req.operator == "Exists":
        return codes >= 0
    if req.operator == "DoesNotExist":
        return codes < 0
    if req.operator in ("Gt", "Lt"):
        return _compare_table(state.label_vocab[req.key], req)[codes]
    vocab = state.label_vocab[req.key]
    hit = _isin(codes, [vocab[v] for v in req.values if v in vocab])
    return hit if req.operator == "In" else ~hit  # NotIn also admits nodes without the key


def _compare_table(vocab: dict[str, int], req: Requirement) -> np.ndarray:
    """bool [V + 1]: whether the label value of each id is an integer Gt/Lt the operand; the last entry, which
    code -1 (no label) indexes, is False. Built per distinct value, so the per-node work is one lookup."""
    bound = int(req.values[0])  # Requirement checked it is an integer
    table = np.zeros(len(vocab) + 1, dtype=bool)
    for value, code in vocab.items():
        n = Requirement.integer(value)  # not an integer: matches neither operator, as in Kubernetes
        table[code] = n is not None and (n > bound if req.operator == "Gt" else n < bound)
    return table


def _name_mask(state: ClusterState, req: Requirement, rows: Rows) -> np.ndarray:
    """`matchFields` on metadata.name: In / NotIn the node's own name."""
    hit = _isin(np.arange(state.n_nodes)[rows], [state.index[v] for v in req.values if v in state.index])
    return hit if req.operator == "In" else ~hit


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
    static: Final = True  # reads node labels and names only

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
