"""Hypothesis properties of the scheduling core, on small random clusters (GPU and CPU nodes, several models and
NVLink layouts, labels, taints, cordons, pod limits) and random pods (CPU-only, fractional GPU, multi-GPU, with
GPU models, selectors, affinity and tolerations):

1. nothing is ever over-committed, whatever sequence of gang placements and releases;
2. a gang is placed whole (>= minMember pods) or not at all, and then the state is untouched;
3. release and trial rollback restore the state exactly, trials nested;
4. every filter admits exactly the nodes a per-node reference implementation (plain Python, Kubernetes semantics)
   admits;
5. the core's incremental cache (`Evaluator`) always answers like a fresh one.
"""

from __future__ import annotations

import numpy as np
from conftest import (
    Ledger,
    Snapshot,
    check_invariants,
    demands_st,
    gangs_st,
    gpu_node,
    nodes_st,
    random_fill,
    ref_affinity,
    ref_gpu_model,
    ref_taints,
    ref_unschedulable,
    scheduler,
)
from hypothesis import given, note
from hypothesis import strategies as st

from gangsched import state as state_module
from gangsched.core import Evaluator, Scheduler
from gangsched.frag import Workload
from gangsched.framework import ALL
from gangsched.model import Pod, demand
from gangsched.profile import FILTERS, load_profile, shipped_profiles
from gangsched.result import Code
from gangsched.state import CapacityError, ClusterState

PROFILES = st.sampled_from(shipped_profiles())
SEEDS = st.integers(0, 2**32 - 1)


def new_scheduler(nodes, profile: str, data: st.DataObject) -> Scheduler:
    """A scheduler for `profile`; FGD profiles get a workload of a few random typical pods."""
    typical = data.draw(st.lists(demands_st(constrained=False), min_size=1, max_size=4), label="typical pods")
    return Scheduler(ClusterState(nodes), load_profile(profile), seed=data.draw(SEEDS, label="seed"),
                     workload=Workload.from_demands(typical))


def release_some(state: ClusterState, data: st.DataObject) -> None:
    keys = sorted(state.assignments)
    for key in data.draw(st.lists(st.sampled_from(keys), unique=True, min_size=1, max_size=3), label="release"):
        state.release(key)


# ---- 1. no over-commitment -----------------------------------------------------------------------------------------
@given(nodes=nodes_st(min_nodes=1, max_nodes=6), profile=PROFILES, data=st.data())
def test_nothing_is_ever_overcommitted(nodes, profile: str, data: st.DataObject) -> None:
    """After every gang placement and release: used <= allocatable for every resource, 0 <= gpu_free <= gpu_cap on
    every device, and the arrays equal what the assignments add up to (checked against the Node objects)."""
    sched = new_scheduler(nodes, profile, data)
    for step in range(data.draw(st.integers(1, 10), label="steps")):
        if sched.state.assignments and data.draw(st.integers(0, 3), label="release?") == 0:
            release_some(sched.state, data)
        else:
            sched.schedule_gang(data.draw(gangs_st(f"g{step}", max_pods=5, constrained=True), label="gang"))
        check_invariants(sched.state, nodes)


# ---- 2. all or nothing ---------------------------------------------------------------------------------------------
@given(nodes=nodes_st(min_nodes=1, max_nodes=4), profile=PROFILES, data=st.data())
def test_gang_is_placed_whole_or_not_at_all(nodes, profile: str, data: st.DataObject) -> None:
    sched = new_scheduler(nodes, profile, data)
    state = sched.state
    placed_any = failed_any = False
    for step in range(data.draw(st.integers(1, 6), label="gangs")):
        gang = data.draw(gangs_st(f"g{step}", max_pods=6, constrained=data.draw(st.booleans())), label="gang")
        keys = {p.key for p in gang.pods}
        before = Snapshot.of(state)
        result = sched.schedule_gang(gang)
        placed = keys & set(state.assignments)
        note(f"{gang.group.key}: minMember={gang.group.min_member}, placed {sorted(placed)}")
        assert result.code != Code.ERROR
        if placed:
            placed_any = True
            assert len(placed) >= gang.group.min_member
            assert result.ok and placed == {a.pod_key for a in result.placed}
            assert placed.isdisjoint(result.waiting) and placed | set(result.waiting) == keys
        else:
            failed_any = True
            before.assert_equals(state)
            assert not result.ok and result.placed == [] and result.waiting
            assert f"minMember={gang.group.min_member}" in result.message()
        check_invariants(state, nodes)
    assert placed_any or failed_any


# ---- 3. release and trials restore exactly -------------------------------------------------------------------------
def random_assign(state: ClusterState, data: st.DataObject, key: str) -> bool:
    """Assign a random pod to a random node and random devices that have room; False when refused."""
    d = data.draw(demands_st(constrained=False), label="pod")
    node = data.draw(st.integers(0, state.n_nodes - 1), label="node")
    room = np.flatnonzero(state.gpu_free[node] >= d.gpu_milli)
    devices = tuple(int(x) for x in data.draw(st.permutations(list(room)), label="devices")[: d.gpu_count])
    before = Snapshot.of(state)
    try:
        state.assign(key, d, node, devices)
    except CapacityError:
        before.assert_equals(state)  # a refused assignment changes nothing
        return False
    return True


@given(nodes=nodes_st(min_nodes=1, max_nodes=5), data=st.data(), seed=SEEDS)
def test_release_restores_exactly(nodes, data: st.DataObject, seed: int) -> None:
    state = ClusterState(nodes)
    random_fill(state, Ledger(nodes), np.random.default_rng(seed), [data.draw(demands_st(False)) for _ in range(3)])
    for k in range(5):
        before = Snapshot.of(state)
        if random_assign(state, data, f"probe{k}"):
            state.release(f"probe{k}")
            before.assert_equals(state)


def run_ops(state: ClusterState, nodes, data: st.DataObject, depth: int, counter: list[int]) -> None:
    """A random mix of assigns, releases and nested trials (each committed or rolled back)."""
    for _ in range(data.draw(st.integers(0, 4), label="ops")):
        op = data.draw(st.sampled_from(["assign", "release", "trial"] if depth < 3 else ["assign", "release"]))
        if op == "assign":
            counter[0] += 1
            random_assign(state, data, f"p{counter[0]}")
        elif op == "release" and state.assignments:
            release_some(state, data)
        elif op == "trial":
            start = Snapshot.of(state)
            with state.trial() as t:
                run_ops(state, nodes, data, depth + 1, counter)
                if data.draw(st.booleans(), label="commit?"):
                    end = Snapshot.of(state)
                    t.commit()
                    end.assert_equals(state)
                else:
                    t.rollback()
                    start.assert_equals(state)
        check_invariants(state, nodes, constraints=False)  # the state itself does not filter


@given(nodes=nodes_st(min_nodes=1, max_nodes=5), data=st.data())
def test_trial_rollback_restores_exactly_nested(nodes, data: st.DataObject) -> None:
    state = ClusterState(nodes)
    counter = [0]
    run_ops(state, nodes, data, depth=1, counter=counter)  # some committed history first
    start = Snapshot.of(state)
    with state.trial():
        run_ops(state, nodes, data, depth=1, counter=counter)  # nested trials inside, some committed
    start.assert_equals(state)  # leaving the block without commit rolls everything back
    assert state._log == [] and state._depth == 0


# ---- 4. filters against a per-node reference -----------------------------------------------------------------------
@given(nodes=nodes_st(min_nodes=1, max_nodes=8), data=st.data(), seed=SEEDS)
def test_filters_match_the_reference(nodes, data: st.DataObject, seed: int) -> None:
    state = ClusterState(nodes)
    ledger = Ledger(nodes)
    background = data.draw(st.lists(demands_st(constrained=False), min_size=1, max_size=4), label="background")
    random_fill(state, ledger, np.random.default_rng(seed), background, tries=20)
    reference = {
        "unschedulable": lambda i, d: ref_unschedulable(nodes[i], d),
        "taints": lambda i, d: ref_taints(nodes[i], d),
        "node-affinity": lambda i, d: ref_affinity(nodes[i], d),
        "gpu-model": lambda i, d: ref_gpu_model(nodes[i], d),
        "resources": ledger.fits,
    }
    assert set(reference) == set(FILTERS)
    sched = Scheduler(state, load_profile("spread"))
    for _ in range(4):
        d = data.draw(demands_st(constrained=True), label="demand")
        combined = np.ones(len(nodes), dtype=bool)
        for name, cls in FILTERS.items():
            expected = [reference[name](i, d) for i in range(len(nodes))]
            got = cls()(sched.ctx, d, ALL)
            assert got.tolist() == expected, name
            combined &= expected
        assert sched.evaluator.mask(d).tolist() == combined.tolist()


@given(nodes=nodes_st(min_nodes=1, max_nodes=6), d=demands_st(constrained=True))
def test_precheck_rejects_only_what_no_node_could_ever_take(nodes, d) -> None:
    """`Scheduler.precheck` ("fits no node even in an empty cluster") never rejects a pod some node admits."""
    sched = Scheduler(ClusterState(nodes), load_profile("spread"))
    reason = sched.precheck(d)
    if reason is not None:
        assert not sched.evaluator.mask(d).any(), reason


# ---- 5. the Evaluator's cache --------------------------------------------------------------------------------------
@given(nodes=nodes_st(min_nodes=4, max_nodes=16), profile=PROFILES, data=st.data())
def test_evaluator_cache_matches_a_fresh_evaluator(nodes, profile: str, data: st.DataObject) -> None:
    """After random gangs, releases and rolled-back trials, interleaved with cache lookups, the cached mask and
    per-node scores of every demand equal those of a fresh Evaluator: no stale row survives."""
    sched = new_scheduler(nodes, profile, data)
    state, evaluator = sched.state, sched.evaluator
    pool = data.draw(st.lists(demands_st(constrained=True), min_size=1, max_size=4), label="demands")

    def look_up() -> None:
        for d in pool:
            feasible = np.flatnonzero(evaluator.mask(d))
            if feasible.size:
                evaluator.scores(d, feasible)

    look_up()
    for step in range(data.draw(st.integers(1, 10), label="steps")):
        op = data.draw(st.sampled_from(["gang", "release", "trial", "look up"]), label="op")
        if op == "gang":
            sched.schedule_gang(data.draw(gangs_st(f"g{step}", max_pods=4, constrained=True), label="gang"))
        elif op == "release" and state.assignments:
            release_some(state, data)
        elif op == "trial":
            with state.trial():  # placed, looked up, then rolled back
                for k in range(data.draw(st.integers(1, 3), label="pods")):
                    sched.place_pod(Pod(f"t{step}-{k}", data.draw(st.sampled_from(pool), label="pod")))
                look_up()
        else:
            look_up()

    fresh = Evaluator(sched.profile, sched.ctx)
    for d in pool:
        cached, new = evaluator._entry(d), fresh._entry(d)
        np.testing.assert_array_equal(cached.mask, new.mask)
        for a, b in zip(cached.raws, new.raws, strict=True):
            np.testing.assert_array_equal(a[new.mask], b[new.mask])  # rows outside the mask are never read
        feasible = np.flatnonzero(new.mask)
        if feasible.size and all(p.name != "random" for p, _ in evaluator.live_scores):
            np.testing.assert_array_equal(evaluator.scores(d, feasible), fresh.scores(d, feasible))


def test_evaluator_after_the_touch_log_was_truncated(monkeypatch) -> None:
    monkeypatch.setattr(state_module, "_TOUCH_LOG_LIMIT", 8)
    sched = scheduler([gpu_node(f"n{i}", gpus=2) for i in range(16)], "binpack")
    one_gpu = demand(gpus=1)
    assert sched.evaluator.mask(one_gpu).all()
    version = sched.state.version
    for i in range(30):  # fills all 32 GPUs but two, far past the log's reach
        sched.state.assign(f"p{i}", one_gpu, i // 2, (i % 2,))
    assert sched.state.touched_since(version) is None
    assert sched.evaluator.mask(one_gpu).tolist() == [False] * 15 + [True]


def test_evaluator_refreshes_only_what_changed_and_matches_a_fresh_one() -> None:
    sched = scheduler([gpu_node(f"n{i}", gpus=2) for i in range(16)], "paper-gpu-packing", tie_break="first")
    whole, share = demand(gpus=1), demand(gpus=1, gpu_milli=500)
    for d in (whole, share):
        sched.evaluator.scores(d, np.flatnonzero(sched.evaluator.mask(d)))
    sched.state.assign("a", whole, 3, (0,))
    sched.state.assign("b", whole, 3, (1,))
    sched.state.assign("c", share, 7, (1,))  # three touches on two nodes of 16: a refresh, not a rebuild
    fresh = Evaluator(sched.profile, sched.ctx)
    for d in (whole, share):
        assert sched.evaluator.mask(d).tolist() == fresh.mask(d).tolist()
        feasible = np.flatnonzero(fresh.mask(d))
        np.testing.assert_array_equal(sched.evaluator.scores(d, feasible), fresh.scores(d, feasible))
    assert not sched.evaluator.mask(whole)[3] and sched.evaluator.mask(share)[7]
    # gpu-packing for a 500-milli pod: n7 has a half-used device: 100 - (500 * 100 // 1000) // 10 = 95
    assert fresh.scores(share, np.array([0, 7])).tolist() == [31.0, 95.0]


def test_evaluator_capacity_and_node_set_changes() -> None:
    sched = scheduler([gpu_node(f"n{i}", gpus=1) for i in range(4)])
    small = Evaluator(sched.profile, sched.ctx, capacity=2)
    ds = [demand(cpu_milli=k) for k in (1, 2, 3)]
    for d in ds:
        assert small.mask(d).all()
    assert list(small._cache) == ds[1:]  # least recently used evicted
    sched.state.assign("p", demand(gpus=1), 2, (0,))
    nodes = [*sched.state.nodes[:3], gpu_node("n3", gpus=1, unschedulable=True), gpu_node("n4", gpus=1)]
    sched.state.set_nodes(nodes)  # a new epoch: cached rows no longer line up with nodes
    assert small.mask(demand(gpus=1)).tolist() == [True, True, False, False, True]
    assert small.mask(ds[2]).tolist() == [True, True, True, False, True]
