"""Score `gang-locality`: keep a gang close. 100 on a node already holding a member of the gang being
placed, `domain_score` on a node sharing a topology domain (the `topology_key` label, e.g. a rack) with
one, 0 elsewhere. Depends on the gang being placed, so it is recomputed every time (per_node = False)."""

from __future__ import annotations

import numpy as np

from gangsched.framework import CycleContext, Normalized, Rows
from gangsched.model import Demand


class GangLocality(Normalized):
    name = "gang-locality"
    per_node = False

    def __init__(self, topology_key: str = "topology.kubernetes.io/rack", domain_score: float = 50.0):
        self.topology_key, self.domain_score = topology_key, domain_score

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray:
        gang = ctx.gang_nodes
        if gang is None or not gang.any():
            n = len(rows) if isinstance(rows, np.ndarray) and rows.dtype != bool else len(ctx.state.unschedulable[rows])
            return np.zeros(n)
        score = np.where(gang[rows], 100.0, 0.0)
        codes = ctx.state.label_codes.get(self.topology_key)
        if codes is not None:
            # near[code]: the domain holds a member; the extra last slot, for nodes without the label (-1), stays
            # False (the same as np.isin(codes[rows], domains of the members))
            near = np.zeros(len(ctx.state.label_vocab[self.topology_key]) + 1, dtype=bool)
            domains = codes[gang]
            near[domains[domains >= 0]] = True
            score = np.maximum(score, np.where(near[codes[rows]], self.domain_score, 0.0))
        return score
