"""Gang-aware preemption (`gangsched.preempt`): examples with the arithmetic in comments, and properties over
random clusters of running gangs with mixed priorities."""

from __future__ import annotations

from hypothesis import assume, given, note
from hypothesis import strategies as st

from gangsched.core import Scheduler
from gangsched.framework import GangInfo
from gangsched.model import Pod, PodGroup, demand
from gangsched.preempt import Running, find_victims
from gangsched.profile import load_profile
from gangsched.result import Code
from gangsched.state import ClusterState
from tests.conftest import gpu_node


def running_gang(sched: Scheduler, name: str, gpus: list[int], priority: int, started: float = 0.0,
                 min_member: int | None = None) -> Running:
    pods = [Pod(f"{name}-{i}", demand(cpu_milli=1000, gpus=g), priority=priority, group=name)
            for i, g in enumerate(gpus)]
    result = sched.schedule_gang(GangInfo(PodGroup(name, len(pods)), pods))
    assert result.ok, result.message()
    return Running(name, tuple(p.key for p in pods), priority, started, min_member)


def preemptor(name: str, n: int, gpus: int, priority: int, **kw) -> GangInfo:
    pods = [Pod(f"{name}-{i}", demand(cpu_milli=1000, gpus=gpus, **kw), priority=priority, group=name)
            for i in range(n)]
    return GangInfo(PodGroup(name, n, priority=priority), pods)


def scheduler(nodes: int = 3, gpus: int = 4) -> Scheduler:
    return Scheduler(ClusterState([gpu_node(f"n{i}", gpus=gpus) for i in range(nodes)]), load_profile("binpack"))


def test_a_whole_gang_goes_not_just_the_pods_needed() -> None:
    sched = scheduler(3, 4)  # 12 GPUs
    low = running_gang(sched, "low", [1] * 12, priority=0)
    result = find_victims(sched, preemptor("high", 8, 1, priority=10), [low])
    # 8 GPUs needed, but the 12-pod gang goes whole: 4 of its pods alone would be useless
    assert result.ok and sorted(result.victim_pods) == sorted(low.pods)
    assert len(result.placement) == 8
    assert set(sched.state.assignments) == set(low.pods)  # nothing evicted by the search itself


def test_the_cheapest_gang_goes_and_the_rest_are_reprieved() -> None:
    sched = scheduler(3, 4)
    a = running_gang(sched, "a", [4], priority=5, started=100)  # n0, higher priority
    b = running_gang(sched, "b", [4], priority=1, started=200)  # lowest priority
    c = running_gang(sched, "c", [4], priority=1, started=300)
    result = find_victims(sched, preemptor("high", 1, 4, priority=10), [a, b, c])
    # one 4-GPU gang must go: priority 1 before 5; among b and c, the one kept is the one running longer (b)
    assert result.ok and [u.gang.key for u in result.victims] == ["c"]


def test_members_above_min_member_go_one_by_one_first() -> None:
    sched = scheduler(2, 4)
    elastic = running_gang(sched, "el", [1] * 8, priority=0, min_member=4)  # 4 members above minMember
    result = find_victims(sched, preemptor("high", 2, 1, priority=10), [elastic])
    assert result.ok and len(result.victim_pods) == 2  # two extra members, not the gang
    assert all(u.extra for u in result.victims)


def test_no_futile_preemption() -> None:
    sched = scheduler(2, 4)
    low = running_gang(sched, "low", [4], priority=0)
    high = running_gang(sched, "high", [4], priority=20)
    result = find_victims(sched, preemptor("p", 2, 4, priority=10), [low, high])
    # 8 GPUs needed; only "low" (4) may go: it would not fit anyway
    assert result.code == Code.UNSCHEDULABLE and result.victims == []
    assert "would not fit even with every pod of priority below 10 gone" in result.status.message
    result = find_victims(sched, preemptor("q", 1, 1, priority=30, gpu_models=frozenset({"H100"})), [low])
    assert result.code == Code.UNRESOLVABLE and result.victims == []  # no H100 anywhere: preemption cannot help


def test_equal_priority_and_preemption_policy_never() -> None:
    sched = scheduler(1, 4)
    low = running_gang(sched, "low", [4], priority=10)
    assert find_victims(sched, preemptor("p", 1, 1, priority=10), [low]).victims == []
    result = find_victims(sched, preemptor("p", 1, 1, priority=50), [low], allowed=False)
    assert result.code == Code.UNRESOLVABLE and "preemptionPolicy: Never" in result.status.message


# ---- properties ----------------------------------------------------------------------------------------------------
@st.composite
def worlds(draw: st.DrawFn):
    n_nodes = draw(st.integers(1, 4), label="nodes")
    sched = Scheduler(ClusterState([gpu_node(f"n{i}", gpus=draw(st.integers(1, 8))) for i in range(n_nodes)]),
                      load_profile(draw(st.sampled_from(["binpack", "spread"]))))
    running = []
    for g in range(draw(st.integers(0, 6), label="running gangs")):
        size = draw(st.integers(1, 4))
        gpus = draw(st.integers(0, 2))
        prio = draw(st.integers(0, 3))
        elastic = draw(st.integers(1, size)) if size > 1 and draw(st.booleans()) else None
        pods = [Pod(f"r{g}-{i}", demand(cpu_milli=1000, gpus=gpus), priority=prio, group=f"r{g}")
                for i in range(size)]
        if sched.schedule_gang(GangInfo(PodGroup(f"r{g}", size), pods)).ok:
            running.append(Running(f"r{g}", tuple(p.key for p in pods), prio, float(draw(st.integers(0, 99))),
                                   elastic))
    gang = preemptor("p", draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    return sched, running, gang


@given(world=worlds())
def test_victims_are_lower_priority_whole_gangs_and_let_the_preemptor_fit(world) -> None:
    sched, running, gang = world
    state = sched.state
    with state.trial():
        assume(not sched.schedule_gang(gang).ok)  # a preemptor is a gang that does not fit as things are
    before = dict(state.assignments)
    result = find_victims(sched, gang, running)
    note(f"{result.status}; victims {[u.pods for u in result.victims]}")
    assert state.assignments == before  # the search leaves the state as it was
    by_key = {r.key: r for r in running}
    if not result.ok:
        assert result.victims == []
        with state.trial():  # futile: even with every lower-priority pod gone it would not fit
            for r in running:
                if r.priority < gang.priority:
                    for k in r.pods:
                        state.release(k)
            assert not sched.schedule_gang(gang).ok
        return
    victims = result.victim_pods
    assert victims and len(victims) == len(set(victims))
    for u in result.victims:
        assert u.gang.priority < gang.priority
    for key in {u.gang.key for u in result.victims}:  # whole gangs, or members above an elastic minMember
        r = by_key[key]
        gone = [k for k in r.pods if k in victims]
        assert len(gone) == len(r.pods) or (r.min_member is not None and len(r.pods) - len(gone) >= r.min_member)
    with state.trial():  # after the eviction the preemptor fits
        for k in victims:
            state.release(k)
        assert sched.schedule_gang(gang).ok
    for u in result.victims:  # no unnecessary victim: giving any one back, the preemptor no longer fits
        if u.extra and any(not v.extra and v.gang.key == u.gang.key for v in result.victims):
            continue  # an extra member of a gang whose core goes anyway
        with state.trial():
            for k in victims:
                if k not in u.pods:
                    state.release(k)
            assert not sched.schedule_gang(gang).ok, f"{u.pods} was not needed"
