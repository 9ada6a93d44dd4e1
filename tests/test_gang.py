"""Gang placement through `Scheduler.schedule_gang`: errors and diagnoses, all-or-nothing, members already running,
gang locality, and the topology device picker."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import RACK, Snapshot, check_invariants, cpu_node, gang, gpu_node, pod, scheduler

from gangsched.core import Scheduler
from gangsched.devices import BestDevice, TopologyDevice
from gangsched.framework import Diagnosis, GangInfo
from gangsched.model import GIB, ModelError, PodGroup, Taint, TaintEffect, Toleration
from gangsched.profile import parse_profile
from gangsched.result import Code, Status
from gangsched.state import ClusterState


def with_bound(g: GangInfo, bound: list) -> GangInfo:
    g.bound = tuple(bound)
    return g


def placement(sched: Scheduler) -> dict[str, str]:
    return {k: a.node_name for k, a in sched.state.assignments.items()}


# ---- specification errors and diagnoses ----------------------------------------------------------------------------
def test_min_member_larger_than_the_gang_is_an_error() -> None:
    sched = scheduler([gpu_node("n0")])
    before = Snapshot.of(sched.state)
    result = sched.schedule_gang(gang("job", [pod("a"), pod("b")], min_member=3))
    assert result.status == Status.unresolvable(
        "PodGroup default/job: spec.minMember=3 but only 2 pod(s) of the group exist")
    assert not result.ok and result.placed == []
    before.assert_equals(sched.state)


def test_min_member_zero_is_rejected() -> None:
    with pytest.raises(ModelError, match=r"PodGroup default/job: spec.minMember=0 must be >= 1"):
        PodGroup("job", 0)


@pytest.mark.parametrize(("member", "message"), [
    (pod("huge", cpu=200_000), "pod requests more cpu than any node has (200000)"),
    (pod("mem", memory=4096 * GIB), f"pod requests more memory than any node has ({4096 * GIB})"),
    (pod("gpus", gpus=16), "pod requests 16 nvidia.com/gpu but the largest node has 8"),
    (pod("nic", extended={"example.com/nic": 1}), "unknown resource 'example.com/nic': no node offers it"),
    (pod("h100", gpus=1, gpu_models=frozenset({"H100"})), "pod requests GPU model(s) ['H100'] that no node has"),
])
def test_a_pod_that_fits_no_node_even_when_empty(member, message: str) -> None:
    sched = scheduler([gpu_node("n0", cpu=96_000, memory=1024 * GIB), cpu_node("n1", cpu=128_000)])
    result = sched.schedule_gang(gang("job", [member, pod("small")], min_member=2))
    diag = result.waiting[f"default/{member.name}"]
    assert diag.unschedulable == message and diag.message() == message
    assert not result.ok and sched.state.assignments == {}
    # the gang stops at its first member that can never fit, before trying the others; freeing capacity
    # cannot help, so the gang waits for a change to itself or to the nodes
    assert result.status == Status.unresolvable(f"0/2 pods fit, minMember=2; {message}")


def test_failed_scheduling_message_counts_nodes_per_reason() -> None:
    nodes = [gpu_node("cordoned", unschedulable=True),
             gpu_node("tainted1", taints=[Taint("dedicated", "infer", TaintEffect.NO_SCHEDULE)]),
             gpu_node("tainted2", taints=[Taint("dedicated", "infer", TaintEffect.NO_EXECUTE)]),
             cpu_node("cpu-only"),
             gpu_node("few-cores", cpu=2000),
             gpu_node("busy", gpus=1, cpu=8000),
             gpu_node("soft", taints=[Taint("dedicated", "infer", TaintEffect.PREFER_NO_SCHEDULE)], cpu=1000)]
    sched = scheduler(nodes)
    sched.state.assign("other", pod("x", cpu=6000, gpus=1).demand, 5, (0,))
    result = sched.schedule_gang(gang("job", [pod("p", cpu=4000, gpus=1)]))
    # each node counts under the first filter (profile order) that rejects it; `resources` counts every resource a
    # node lacks, as kube-scheduler does: busy lacks cpu (2000 left) and GPUs, soft (PreferNoSchedule) lacks cpu
    expected = ("0/7 nodes are available: 3 Insufficient cpu, 2 Insufficient nvidia.com/gpu, "
                "2 node(s) had untolerated taint, 1 node(s) were unschedulable.")
    assert result.waiting["default/p"].message() == expected
    assert result.message() == "0/1 pods fit, minMember=1; " + expected
    diag = sched.evaluator.diagnose(pod("q", gpus=1, node_selector=(("zone", "a"),)).demand)
    # cordoned: unschedulable; tainted1/2: taints; the other four lack the zone label
    assert diag.message() == ("0/7 nodes are available: 4 node(s) didn't match Pod's node affinity/selector, "
                              "2 node(s) had untolerated taint, 1 node(s) were unschedulable.")


def test_diagnosis_message_orders_by_count_then_reason() -> None:
    diag = Diagnosis(10)
    diag.reasons.update({"b reason": 3, "a reason": 3, "c reason": 4})
    assert diag.message() == "0/10 nodes are available: 4 c reason, 3 a reason, 3 b reason."


# ---- all or nothing ------------------------------------------------------------------------------------------------
def test_gang_that_does_not_fit_leaves_nothing_reserved() -> None:
    sched = scheduler([gpu_node(f"n{i}") for i in range(3)], "binpack")
    sched.state.assign("running", pod("r", cpu=1000).demand, 0)
    before = Snapshot.of(sched.state)
    job = gang("job", [pod(f"w{i}", cpu=8000, gpus=8) for i in range(4)])  # 4 x 8 GPUs on 3 nodes of 8
    result = sched.schedule_gang(job)
    assert not result.ok and result.placed == []
    before.assert_equals(sched.state)
    # three members had found nodes before the fourth did not; 32 GPUs on 24 can never fit
    assert result.code == Code.UNRESOLVABLE
    assert result.message() == ("3/4 pods fit, minMember=4; 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    assert sched.ctx.gang_nodes is None


def test_gang_above_min_member_keeps_the_members_that_fit() -> None:
    sched = scheduler([gpu_node("n0", gpus=4), gpu_node("n1", gpus=4)], "binpack")
    job = gang("job", [pod(f"w{i}", gpus=3) for i in range(3)], min_member=2)
    result = sched.schedule_gang(job)
    assert result.ok and len(result.placed) == 2
    assert list(result.waiting) == ["default/w2"]
    assert sorted(placement(sched).values()) == ["n0", "n1"]
    check_invariants(sched.state, sched.state.nodes)


def test_min_member_counts_members_already_running() -> None:
    sched = scheduler([gpu_node("n0", gpus=4), gpu_node("n1", gpus=4)], "binpack")
    first = sched.schedule_gang(gang("job", [pod("w0", gpus=2)], min_member=1))
    home = first.placed[0].node_name
    # two more members of 4 GPUs: only the other node has room for one; 1 running + 1 placed < 3
    result = sched.schedule_gang(with_bound(gang("job", [pod("w1", gpus=4), pod("w2", gpus=4)], min_member=3),
                                            first.placed))
    assert result.code == Code.UNSCHEDULABLE
    assert result.message() == ("1/2 pods fit, minMember=3 (1 bound); "
                                "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    assert set(sched.state.assignments) == {"default/w0"}
    # 1 running + 1 placed >= 2; a 2-GPU member goes next to the running one
    result = sched.schedule_gang(with_bound(gang("job", [pod("w3", gpus=2)], min_member=2), first.placed))
    assert result.ok and result.placed[0].node_name == home
    result = sched.schedule_gang(with_bound(gang("job", [pod("w4")], min_member=3), first.placed))
    assert result.status == Status.unresolvable(
        "PodGroup default/job: spec.minMember=3 but only 2 pod(s) of the group exist")


def test_a_member_beyond_min_member_of_a_running_gang_is_told_the_gang_runs() -> None:
    sched = scheduler([gpu_node("n0", gpus=4)], "binpack")
    first = sched.schedule_gang(gang("job", [pod(f"w{i}", gpus=1) for i in range(3)], min_member=2))
    assert first.ok and len(first.placed) == 3
    sched.state.assign("other", pod("o", gpus=1).demand, 0, (3,))
    result = sched.schedule_gang(with_bound(gang("job", [pod("w3", gpus=1)], min_member=2), first.placed))
    assert result.code == Code.UNSCHEDULABLE and result.placed == []
    assert result.message() == ("gang default/job runs with 3 of 4 pods (minMember=2); this pod waits for room: "
                                "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")


def test_a_gang_larger_than_every_admitting_node_together_is_unresolvable() -> None:
    sched = scheduler([gpu_node("n0", gpus=8), gpu_node("n1", gpus=8, labels={"zone": "b"})])
    job = gang("job", [pod(f"w{i}", gpus=8, node_selector=(("zone", "b"),)) for i in range(2)])
    assert sched.schedule_gang(job).code == Code.UNRESOLVABLE  # one node of zone b: 8 GPUs for 16
    job = gang("job", [pod(f"w{i}", gpus=8) for i in range(3)])
    assert sched.schedule_gang(job).code == Code.UNRESOLVABLE  # 24 GPUs on 16
    sched.state.assign("busy", pod("b", gpus=1).demand, 0, (0,))
    job = gang("job", [pod(f"w{i}", gpus=8) for i in range(2)])
    assert sched.schedule_gang(job).code == Code.UNSCHEDULABLE  # fits once "busy" goes


def test_min_resources_are_checked_before_any_member_is_placed() -> None:
    sched = scheduler([gpu_node("n0", gpus=8), gpu_node("n1", gpus=8)])
    sched.state.assign("busy", pod("b", gpus=6).demand, 0, tuple(range(6)))
    job = gang("job", [pod("w0", gpus=1)], min_member=1)
    job.group = PodGroup("job", 1, min_resources=(("nvidia.com/gpu", 11),))
    result = sched.schedule_gang(job)
    assert result.status == Status.unschedulable(
        "PodGroup default/job: spec.minResources nvidia.com/gpu=11 exceeds the 10 free")
    assert set(sched.state.assignments) == {"busy"}
    job.group = PodGroup("job", 1, min_resources=(("nvidia.com/gpu", 10),))
    assert sched.schedule_gang(job).ok


def test_gang_members_of_one_shape_share_a_diagnosis() -> None:
    sched = scheduler([gpu_node("n0", gpus=1)])
    result = sched.schedule_gang(gang("job", [pod(f"w{i}", gpus=1) for i in range(3)], min_member=1))
    assert result.ok and len(result.placed) == 1
    assert result.waiting["default/w1"] is result.waiting["default/w2"]


# ---- gang locality -------------------------------------------------------------------------------------------------
def racks(n_racks: int = 4, per_rack: int = 2) -> list:
    return [gpu_node(f"r{r}-n{k}", labels={RACK: f"r{r}"}) for r in range(n_racks) for k in range(per_rack)]


@pytest.mark.parametrize("seed", range(5))
def test_gang_locality_keeps_a_gang_on_fewest_nodes_and_one_rack(seed: int) -> None:
    doc = {"scores": [{"name": "least-allocated", "weight": 1}, {"name": "gang-locality", "weight": 1}]}
    sched = Scheduler(ClusterState(racks()), parse_profile(doc), seed=seed)
    result = sched.schedule_gang(gang("job", [pod(f"w{i}", cpu=8000, gpus=4) for i in range(4)]))
    nodes = {a.node_name for a in result.placed}
    assert result.ok and len(nodes) == 2  # 16 GPUs on two 8-GPU nodes
    assert len({name.split("-")[0] for name in nodes}) == 1  # one rack
    check_invariants(sched.state, sched.state.nodes)


def test_without_gang_locality_spreading_scatters_the_gang() -> None:
    sched = Scheduler(ClusterState(racks()), parse_profile({"scores": ["least-allocated"]}), seed=0)
    result = sched.schedule_gang(gang("job", [pod(f"w{i}", cpu=8000, gpus=4) for i in range(4)]))
    assert result.ok and len({a.node_name for a in result.placed}) == 4  # the control: locality is what packs


# ---- device pickers ------------------------------------------------------------------------------------------------
NVLINK_2X4 = [0, 0, 0, 0, 1, 1, 1, 1]


def pick(picker, node, taken: tuple[int, ...], gpus: int, gpu_milli: int = 1000) -> tuple[int, ...]:
    sched = scheduler([node])
    if taken:
        sched.state.assign("busy", pod("b", gpus=len(taken)).demand, 0, taken)
    return picker(sched.ctx, pod("p", gpus=gpus, gpu_milli=gpu_milli).demand, 0)


@pytest.mark.parametrize(("taken", "gpus", "expected"), [
    ((), 4, (0, 1, 2, 3)),  # both islands free: the first
    ((0,), 4, (4, 5, 6, 7)),  # island 0 has 3 free: the whole pod goes to island 1 (best would take 1, 2, 3, 4)
    ((5,), 4, (0, 1, 2, 3)),
    ((0,), 2, (1, 2)),  # the tightest island that holds the pod, keeping island 1 whole for a 4-GPU pod
    ((0, 5), 4, (1, 2, 3, 4)),  # no island holds 4: as few islands as possible (two)
    ((0, 1, 2, 5), 4, (4, 6, 7, 3)),  # the largest island first, then the next
])
def test_topology_picker_keeps_a_pod_within_one_nvlink_island(taken, gpus: int, expected) -> None:
    node = gpu_node("n", groups=NVLINK_2X4)
    got = pick(TopologyDevice(), node, taken, gpus)
    assert got == expected
    assert len({NVLINK_2X4[d] for d in got}) == len({NVLINK_2X4[d] for d in expected})


def test_best_picker_ignores_islands_and_packs_shared_devices() -> None:
    node = gpu_node("n", groups=NVLINK_2X4)
    assert pick(BestDevice(), node, (0,), 4) == (1, 2, 3, 4)
    sched = scheduler([gpu_node("n", gpus=3)])
    sched.state.assign("a", pod("a", gpus=1, gpu_milli=300).demand, 0, (0,))
    sched.state.assign("b", pod("b", gpus=1, gpu_milli=600).demand, 0, (2,))
    # free [700, 1000, 400]: a 300-milli pod goes to the fullest device that fits (2), a 500-milli one to 0
    assert BestDevice()(sched.ctx, pod("p", gpus=1, gpu_milli=300).demand, 0) == (2,)
    assert BestDevice()(sched.ctx, pod("p", gpus=1, gpu_milli=500).demand, 0) == (0,)


@pytest.mark.parametrize("profile", ["binpack", "default"])
def test_scheduler_places_a_4_gpu_pod_inside_one_island(profile: str) -> None:
    sched = scheduler([gpu_node("n", groups=NVLINK_2X4)], profile, pods=[pod("p", gpus=4)])
    sched.state.assign("busy", pod("b", gpus=1).demand, 0, (2,))
    result = sched.schedule_gang(gang("job", [pod("p", gpus=4)]))
    assert result.ok and result.placed[0].devices == (4, 5, 6, 7)


# ---- tie-breaks and tolerations through the whole cycle ------------------------------------------------------------
def test_tie_break_first_is_deterministic_and_random_is_seeded() -> None:
    nodes = [gpu_node(f"n{i}") for i in range(6)]
    first = scheduler(nodes, "spread", tie_break="first")
    assert first.schedule_gang(gang("a", [pod("p")])).placed[0].node_name == "n0"
    chosen = {scheduler(nodes, "spread", seed=s).schedule_gang(gang("a", [pod("p")])).placed[0].node_name
              for s in range(12)}
    assert len(chosen) > 1  # ties broken at random
    same = [scheduler(nodes, "spread", seed=3).schedule_gang(gang("a", [pod("p")])).placed[0].node_name
            for _ in range(2)]
    assert same[0] == same[1]


def test_pod_with_tolerations_reaches_tainted_nodes() -> None:
    nodes = [gpu_node("tainted", taints=[Taint("nvidia.com/gpu", "", TaintEffect.NO_SCHEDULE)])]
    sched = scheduler(nodes)
    assert not sched.schedule_gang(gang("a", [pod("p", gpus=1)])).ok
    tol = (Toleration("nvidia.com/gpu", "Exists", effect=TaintEffect.NO_SCHEDULE),)
    assert sched.schedule_gang(gang("b", [pod("q", gpus=1, tolerations=tol)])).ok
    assert np.count_nonzero(sched.state.gpu_free[0] < 1000) == 1
