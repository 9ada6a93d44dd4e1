"""Live preemption with no API server (see livekit): whole gangs evicted, capacity held for the preemptor while
its victims terminate, nothing evicted in vain, and nominations that survive a restart."""

from __future__ import annotations

from livekit import T0, Live, node, pod, podgroup, stamp

HIGH = {"priority": 1000}


def fill_with_low_gang(live: Live, n: int = 12) -> list[str]:
    live.put("podgroups", podgroup("low", n))
    for i in range(n):
        live.put("pods", pod(f"low-{i:02d}", group="low", priority=0))
    bound = live.place()
    assert len(bound) == n
    return sorted(bound)


def test_a_high_priority_gang_evicts_a_low_gang_whole_and_is_bound_whole() -> None:
    live = Live("binpack", preemption=True)
    for i in range(3):
        live.put("nodes", node(f"n{i}", gpus=4))
    low = fill_with_low_gang(live)  # 12 pods on 12 GPUs
    live.put("podgroups", podgroup("high", 8))
    for i in range(8):
        live.put("pods", pod(f"high-{i}", group="high", **HIGH))
    live.cycle()
    assert sorted(live.evictions.evicted) == low  # all 12, not the 8 needed: the rest would be useless
    assert len(live.evictions.nominated) == 8 and live.binds.queued == []
    assert "preempting 12 pod(s) of gang default/low (lower priority)" in \
        live.events.of("high-0", "FailedScheduling")[-1]
    assert "preempted by gang default/high (priority 1000), which needs 8 x 1 nvidia.com/gpu" in \
        live.events.of("low-00", "Preempted")[0]
    live.terminate(low)
    bound = live.place()
    assert sorted(bound) == [f"default/high-{i}" for i in range(8)]


def test_no_eviction_when_the_gang_would_not_fit_anyway() -> None:
    live = Live("binpack", preemption=True)
    live.put("nodes", node("n0", gpus=4))
    live.put("nodes", node("n1", gpus=2))
    fill_with_low_gang(live, 4)
    live.put("pods", pod("vip", gpus=2, priority=5000, node_name="n1", phase="Running", scheduler="other"))
    live.put("podgroups", podgroup("big", 5))
    for i in range(5):
        live.put("pods", pod(f"big-{i}", group="big", **HIGH))
    live.cycle()
    # 5 GPUs needed; the low gang's 4 may go, the vip's 2 may not: evicting would be in vain
    assert live.evictions.evicted == []
    assert "preemption: it would not fit even with every pod of priority below 1000 gone" in \
        live.events.of("big-0", "FailedScheduling")[-1]


def test_what_victims_free_goes_to_the_preemptor_not_to_a_later_low_pod() -> None:
    live = Live("binpack", preemption=True)
    live.put("nodes", node("n0", gpus=4))
    low = fill_with_low_gang(live, 4)
    live.put("podgroups", podgroup("high", 4))
    for i in range(4):
        live.put("pods", pod(f"high-{i}", group="high", **HIGH))
    live.cycle()
    assert sorted(live.evictions.evicted) == low
    live.put("pods", pod("latecomer", priority=0, created=T0))  # a low-priority pod arrives meanwhile
    live.terminate(low[:1])  # one victim has gone: a GPU is free, but the preemptor needs four
    live.cycle(3, advance=1.0)
    assert live.binds.queued == []  # the latecomer does not take it
    live.terminate(low[1:])
    bound = live.place()
    assert sorted(bound) == [f"default/high-{i}" for i in range(4)]


def test_the_hold_ends_when_victims_do_not_go() -> None:
    live = Live("binpack", preemption=True, hold_seconds=30)
    live.put("nodes", node("n0", gpus=4))
    live.put("nodes", node("n1", gpus=1))
    low = fill_with_low_gang(live, 4)
    live.put("pods", pod("busy", priority=0, node_name="n1", scheduler="other", phase="Running"))
    live.put("podgroups", podgroup("high", 4))
    for i in range(4):
        live.put("pods", pod(f"high-{i}", group="high", **HIGH))
    live.cycle()
    assert sorted(live.evictions.evicted) == low
    live.remove("pods", live.objects[("pods", "default/busy")])  # n1 frees up; the victims hang
    live.put("pods", pod("small", priority=0))
    live.cycle(3, advance=1.0)
    assert live.binds.queued == []  # held for the preemptor ...
    live.cycle(2, advance=30.0)
    assert [r.name for r in live.binds.take()] == ["small"]  # ... until the hold runs out


def test_a_nomination_found_at_a_restart_holds_capacity() -> None:
    live = Live("binpack", preemption=True)
    live.put("nodes", node("n0", gpus=2))
    for v in ("v1", "v2"):  # evicted by the scheduler that died: terminating
        victim = pod(v, priority=0, node_name="n0", phase="Running")
        victim["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
        live.put("pods", victim)
    nominated = pod("high", gpus=2, **HIGH)
    nominated["status"]["nominatedNodeName"] = "n0"  # written by it too
    live.put("pods", nominated)
    live.cycle()
    assert live.evictions.evicted == []  # terminating pods are not evicted again
    live.put("pods", pod("low", gpus=1, priority=0))
    live.terminate(["default/v1"])
    live.cycle(2, advance=1.0)
    assert live.binds.queued == []  # the GPU v1 freed waits for "high"
    live.terminate(["default/v2"])
    assert live.place() == {"default/high": "n0"}


def test_preemption_policy_never_and_equal_priority_evict_nothing() -> None:
    live = Live("binpack", preemption=True)
    live.put("nodes", node("n0", gpus=1))
    live.put("pods", pod("running", priority=10, node_name="n0", phase="Running", scheduler="other"))
    live.put("pods", pod("equal", priority=10))
    live.put("pods", pod("never", priority=100, preemptionPolicy="Never"))
    live.cycle()
    assert live.evictions.evicted == []
    assert "preemptionPolicy: Never" in live.events.of("never", "FailedScheduling")[-1]


def test_victims_a_disruption_budget_protects_are_spared_when_others_will_do() -> None:
    live = Live("binpack", preemption=True)
    live.put("nodes", node("n0", gpus=4))
    live.put("nodes", node("n1", gpus=4))
    # the guarded pods started last: without the budget they would go first (the least work lost)
    for name, n, started in (("guarded", "n0", T0 - 10), ("plain", "n1", T0 - 50)):
        for i in range(4):
            p = pod(f"{name}-{i}", priority=0, node_name=n, scheduler="other", phase="Running")
            p["metadata"]["labels"]["app"] = name
            p["status"]["startTime"] = stamp(started)
            live.put("pods", p)
    live.put("pdbs", {"metadata": {"name": "guard", "namespace": "default"},
                      "spec": {"selector": {"matchLabels": {"app": "guarded"}}}, "status": {"disruptionsAllowed": 1}})
    live.put("podgroups", podgroup("high", 4))
    for i in range(4):
        live.put("pods", pod(f"high-{i}", group="high", **HIGH))
    live.cycle()
    evicted = sorted(live.evictions.evicted)
    assert len(evicted) == 4 and len([k for k in evicted if "guarded" in k]) == 1  # the budget allows one
