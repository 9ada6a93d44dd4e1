"""A node's fragmentation depends on that node only, not on which other nodes are evaluated with it.

`_frag` once summed over typical pods with a BLAS matrix-vector product, which rounds a row differently
depending on how many rows share the call: the Evaluator's one-row refresh then disagreed in the last bit with
a fresh evaluation, and ties between equal nodes went by BLAS row position instead of the tie-break policy.
"""

from __future__ import annotations

import numpy as np
from conftest import gpu_node

from gangsched.core import Evaluator, Scheduler
from gangsched.frag import Workload, fragmentation_change, node_fragmentation
from gangsched.model import GIB, demand
from gangsched.profile import parse_profile
from gangsched.state import ClusterState

# many typical pods with uneven shares: the sum over them is where rounding could differ
MIX = [demand(cpu_milli=c, memory=GIB, gpus=g, gpu_milli=m) for c, g, m in [
    (2000, 0, 1000), (4000, 1, 250), (4000, 1, 500), (8000, 1, 1000), (8000, 1, 1000), (12000, 1, 1000),
    (16000, 2, 1000), (32000, 4, 1000), (64000, 8, 1000), (6000, 1, 700), (1000, 1, 100), (24000, 3, 1000)]]


def busy_state(n: int = 64) -> ClusterState:
    state = ClusterState([gpu_node(f"n{i}", gpus=8, cpu=128_000) for i in range(n)])
    rng = np.random.default_rng(7)
    for i in range(n):
        for d in range(int(rng.integers(0, 8))):
            state.assign(f"p{i}-{d}", demand(cpu_milli=int(rng.integers(1, 9)) * 1000, gpus=1,
                                             gpu_milli=int(rng.choice([300, 500, 1000]))), i, (d,))
    return state


def test_a_nodes_fragmentation_does_not_depend_on_the_rows_evaluated_with_it() -> None:
    state, wl = busy_state(), Workload.from_demands(MIX * 3 + MIX[:5])
    everything = node_fragmentation(state, wl)
    one_by_one = np.array([node_fragmentation(state, wl, np.array([i]))[0] for i in range(state.n_nodes)])
    np.testing.assert_array_equal(everything, one_by_one)
    for d in (MIX[3], MIX[6], MIX[0], MIX[2]):  # whole GPU, several GPUs, CPU only, GPU-sharing
        before, after = fragmentation_change(state, wl, d, np.arange(state.n_nodes))
        for i in (0, 5, 17, 63):
            b, a = fragmentation_change(state, wl, d, np.array([i]))
            assert (b[0], a[0]) == (before[i], after[i])


def test_cached_exact_fgd_scores_equal_a_fresh_evaluation() -> None:
    profile = parse_profile({"name": "fgd-exact", "scores": [{"name": "fgd"}], "tieBreak": "first"})
    state = busy_state()
    sched = Scheduler(state, profile, workload=Workload.from_demands(MIX * 3 + MIX[:5]))
    one_gpu = demand(cpu_milli=4000, memory=GIB, gpus=1)
    sched.evaluator.mask(one_gpu)
    for k in range(5):  # each placement refreshes one row of the cached entry
        node = int(np.flatnonzero(sched.evaluator.mask(one_gpu))[k])
        state.assign(f"x{k}", one_gpu, node, (int(np.flatnonzero(state.gpu_free[node] == 1000)[0]),))
    cached = sched.evaluator._entry(one_gpu)
    fresh = Evaluator(profile, sched.ctx)._entry(one_gpu)
    np.testing.assert_array_equal(cached.raws[0][fresh.mask], fresh.raws[0][fresh.mask])



def test_current_fragmentation_follows_every_change_of_the_state() -> None:
    """The per-node F kept by the workload equals a fresh computation after placements, releases, a rolled-back
    trial, many changes at once (recomputed whole) and a new node set."""
    state, wl = busy_state(32), Workload.from_demands(MIX * 3 + MIX[:5])

    def check() -> None:
        np.testing.assert_array_equal(wl.current_fragmentation(state), node_fragmentation(state, wl))
        rows = np.array([3, 9, state.n_nodes - 1])
        np.testing.assert_array_equal(wl.current_fragmentation(state, rows), node_fragmentation(state, wl, rows))

    def a_free_device() -> tuple[int, int]:
        node = int(np.flatnonzero((state.gpu_free == 1000).any(axis=1))[0])
        return node, int(np.flatnonzero(state.gpu_free[node] == 1000)[0])

    one_gpu = demand(cpu_milli=4000, memory=GIB, gpus=1)
    check()
    node, dev = a_free_device()
    state.assign("a", one_gpu, node, (dev,))
    check()
    with state.trial():
        node, dev = a_free_device()
        state.assign("b", one_gpu, node, (dev,))
        check()
    check()  # rolled back
    state.release("a")
    check()
    for key in sorted(state.assignments)[:40]:  # touches more than a quarter of the nodes
        state.release(key)
    check()
    state.set_nodes(state.nodes[:-4])  # a new epoch
    check()
