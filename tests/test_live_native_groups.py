"""Kubernetes' own PodGroups (scheduling.k8s.io/v1beta1, the Workload API) in the live scheduler, with no API
server: pods naming theirs in spec.schedulingGroup.podGroupName form a gang of its minCount, beside
scheduler-plugins' label; bad or conflicting input gets an Event naming the field; the PodGroupInitiallyScheduled
condition is written as kube-scheduler writes it."""

from __future__ import annotations

from typing import Any

import pytest
from livekit import T0, Live, node, pod, podgroup, stamp

from gangsched.live.podgroups import NATIVE_API, native_status
from gangsched.live.translate import POD_GROUP_LABEL, native_podgroup_from
from gangsched.model import ModelError, PodGroup

KIND = "nativepodgroups"


def native_group(name: str, min_count: int | None, ns: str = "default", generation: int = 1,
                 **spec: Any) -> dict:
    """A native PodGroup as the API server lists it (no apiVersion on list items)."""
    policy = {"gang": {"minCount": min_count}} if min_count is not None else {"basic": {}}
    return {"metadata": {"name": name, "namespace": ns, "uid": f"npg-{name}", "generation": generation,
                         "creationTimestamp": stamp(T0 - 200)},
            "spec": {"schedulingPolicy": policy, **spec}}


def native_pod(name: str, pod_group: str, **kw: Any) -> dict:
    return pod(name, schedulingGroup={"podGroupName": pod_group}, **kw)


def condition(live: Live, key: str = "default/g") -> dict:
    assert live.statuses.apis[key] == NATIVE_API
    (cond,) = [c for c in live.statuses.written[key]["conditions"] if c["type"] == "PodGroupInitiallyScheduled"]
    return cond


def test_a_native_gang_is_placed_whole_and_its_condition_says_scheduled() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=2))
    live.put("nodes", node("n1", gpus=2))
    live.put(KIND, native_group("g", 3, generation=4))
    for i in range(3):
        live.put("pods", native_pod(f"p{i}", "g", gpus=1))
    bound = live.place()
    assert sorted(bound) == ["default/p0", "default/p1", "default/p2"]
    cond = condition(live)
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("True", "Scheduled", 4)


def test_a_native_gang_short_of_min_count_places_nothing_and_says_so() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=8))
    live.put(KIND, native_group("g", 3))
    live.put("pods", native_pod("p0", "g"))
    live.put("pods", native_pod("p1", "g"))
    live.cycle()
    live.cycle(advance=3.0)  # past the gathering grace
    assert live.binds.queued == [] and live.state.assignments == {}
    assert "2 of minCount=3 pods exist" in live.events.of("p0", "FailedScheduling")[0]
    live.put("pods", native_pod("p2", "g"))
    assert len(live.place()) == 3


def test_a_gang_that_cannot_fit_is_unschedulable_with_the_reason_and_never_half_placed() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=4))
    live.put(KIND, native_group("g", 2))
    live.put("pods", native_pod("p0", "g", gpus=3))
    live.put("pods", native_pod("p1", "g", gpus=3))
    live.cycle()
    assert live.binds.queued == [] and live.state.assignments == {}
    cond = condition(live)
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert cond["message"] == live.events.of("g", "FailedScheduling")[-1]  # the PodGroup's Event says the same


def test_once_scheduled_the_condition_stays_true() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=2))
    pg = live.put(KIND, native_group("g", 2))
    live.put("pods", native_pod("a", "g"))
    live.put("pods", native_pod("b", "g"))
    live.place()
    written = condition(live)
    assert written["status"] == "True"
    # the API server now shows the condition; a member goes and comes back, unschedulable
    live.put(KIND, {**pg, "apiVersion": NATIVE_API, "status": {"conditions": [written]}})
    live.remove("pods", live.objects[("pods", "default/a")])
    live.statuses.written.clear()
    live.put("pods", native_pod("a2", "g", gpus=5))
    live.cycle(3, advance=3.0)
    assert "default/g" not in live.statuses.written


def test_a_missing_native_podgroup_is_an_event_naming_the_field() -> None:
    live = Live()
    live.put("nodes", node("n0"))
    live.put("podgroups", podgroup("g", 1))  # a scheduler-plugins PodGroup of that name is not the one meant
    live.put("pods", native_pod("p0", "g"))
    live.cycle()
    (msg,) = live.events.of("p0", "FailedScheduling")
    assert msg == ("PodGroup default/g (scheduling.k8s.io/v1beta1, named in spec.schedulingGroup.podGroupName) "
                   "not found; the pod waits for it")
    assert live.binds.queued == []
    live.put(KIND, native_group("g", 1))
    live.remove("podgroups", podgroup("g", 1))
    assert list(live.place()) == ["default/p0"]


def test_a_pod_naming_both_a_native_podgroup_and_the_label_is_not_scheduled_and_told_why() -> None:
    live = Live()
    live.put("nodes", node("n0"))
    live.put(KIND, native_group("g", 1))
    live.put("podgroups", podgroup("h", 1))
    both = native_pod("p0", "g", group="h")
    live.put("pods", both)
    live.cycle(2, advance=3.0)
    assert live.binds.queued == []
    msgs = live.events.of("p0", "FailedScheduling")
    assert msgs and msgs[0] == ("pod default/p0: spec.schedulingGroup.podGroupName='g' and label "
                                f"{POD_GROUP_LABEL}='h' both name a PodGroup; keep one")
    # the label removed: the same pod is now a plain member of the native gang
    fixed = {**both, "metadata": {**both["metadata"], "labels": {}}}
    live.put("pods", fixed)
    assert list(live.place()) == ["default/p0"]


def test_a_name_taken_in_both_apis_is_a_conflict_until_one_goes() -> None:
    live = Live()
    live.put("nodes", node("n0"))
    live.put(KIND, native_group("g", 1))
    plugins = live.put("podgroups", podgroup("g", 1))
    live.put("pods", native_pod("p0", "g"))
    live.cycle()
    (msg,) = live.events.of("p0", "FailedScheduling")
    assert "exists as both scheduling.k8s.io/v1beta1 and scheduling.x-k8s.io/v1alpha1; delete one" in msg
    live.remove("podgroups", plugins)
    assert list(live.place()) == ["default/p0"]


def test_a_relist_of_one_api_keeps_the_other_apis_podgroups() -> None:
    live = Live()
    live.put("nodes", node("n0"))
    live.put("podgroups", podgroup("old", 1))
    live.put(KIND, native_group("new", 1))
    live.relist(KIND)
    live.relist("podgroups")
    assert set(live.cache.groups) == {"default/old", "default/new"}
    live.objects.pop((KIND, "default/new"))
    live.relist(KIND)
    assert set(live.cache.groups) == {"default/old"}


@pytest.mark.parametrize(("spec", "field"), [
    ({"schedulingPolicy": {"gang": {"minCount": 0}}}, "spec.schedulingPolicy.gang.minCount=0"),
    ({"schedulingPolicy": {"gang": {"minCount": "2"}}}, "spec.schedulingPolicy.gang.minCount=2"),
    ({"schedulingPolicy": {}}, "spec.schedulingPolicy needs exactly one of basic, gang"),
    ({"schedulingPolicy": {"basic": {}, "gang": {"minCount": 2}}}, "needs exactly one of basic, gang"),
    ({"schedulingPolicy": {"basic": {}}, "priority": "high"}, "spec.priority='high'"),
    ({"schedulingPolicy": {"basic": {}}, "preemptionPolicy": "Sometimes"}, "spec.preemptionPolicy='Sometimes'"),
    ({"schedulingPolicy": {"gang": {"minCount": 2}}, "parentCompositePodGroupName": "job"},
     "spec.parentCompositePodGroupName='job': CompositePodGroups (alpha, scheduling.k8s.io/v1alpha3) are not "
     "supported"),
])
def test_an_invalid_native_podgroup_is_an_event_naming_the_field(spec: dict, field: str) -> None:
    obj = {"metadata": {"name": "g", "namespace": "default"}, "spec": spec}
    with pytest.raises(ModelError, match=r"PodGroup default/g \(scheduling\.k8s\.io/v1beta1\)"):
        native_podgroup_from(obj)
    live = Live()
    live.put("nodes", node("n0"))
    live.put(KIND, obj)
    live.put("pods", native_pod("p0", "g"))
    live.cycle()
    assert live.binds.queued == []
    (msg,) = live.events.of("p0", "FailedScheduling")
    assert field in msg and msg.endswith("none of its pods is scheduled")


def test_basic_policy_priority_disruption_and_preemption_policy_are_read() -> None:
    group, policy = native_podgroup_from(native_group("g", None, priority=1000, disruptionMode={"all": {}},
                                                      preemptionPolicy="Never"))
    assert (group.min_member, group.priority, policy.whole, policy.never_preempts) == (1, 1000, True, True)
    group, policy = native_podgroup_from(native_group("g", 4))
    assert (group.min_member, group.priority, policy.whole, policy.never_preempts) == (4, 0, False, False)


def test_the_native_podgroups_priority_orders_the_queue() -> None:
    live = Live()  # priority-fifo
    live.put("nodes", node("n0", gpus=2))
    live.put(KIND, native_group("early", 2))
    live.put(KIND, native_group("urgent", 2, priority=500))
    for g, created in (("early", T0 - 100), ("urgent", T0 - 10)):
        for i in range(2):
            live.put("pods", native_pod(f"{g}-{i}", g, created=created))
    assert sorted(live.place()) == ["default/urgent-0", "default/urgent-1"]


def test_disruption_mode_all_makes_a_running_gang_one_victim_and_never_shields_the_preemptor() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=8))
    live.put(KIND, native_group("whole", 1, disruptionMode={"all": {}}))
    live.put(KIND, native_group("single", 1))
    for g in ("whole", "single"):
        for i in range(2):
            live.put("pods", native_pod(f"{g}-{i}", g, node_name="n0", phase="Running"))
    live.cycle()
    running = {r.key: r for r in live.cache.running_below(10)}
    assert running["default/whole"].min_member is None and running["default/single"].min_member == 1
    live.put(KIND, native_group("calm", 1, preemptionPolicy="Never"))
    live.put("pods", native_pod("c0", "calm"))
    assert live.cache.pods["default/c0"].never_preempts
    live.put(KIND, native_group("calm", 1))  # the policy lifted (a re-created group): it may preempt again
    assert not live.cache.pods["default/c0"].never_preempts


def test_a_native_gang_preempted_whole_gets_disruption_target_and_a_trimmed_one_does_not() -> None:
    live = Live("binpack", preemption=True)
    live.put("nodes", node("n0", gpus=4))
    live.put(KIND, native_group("whole", 2))
    live.put(KIND, native_group("elastic", 1))  # 2 members: the one above minCount may go alone
    for g in ("whole", "elastic"):
        for i in range(2):
            live.put("pods", native_pod(f"{g}-{i}", g, node_name="n0", phase="Running", priority=0,
                                        created=T0 - 100 + (i if g == "elastic" else 50)))
    live.put(KIND, native_group("urgent", 3, priority=1000))
    for i in range(3):
        live.put("pods", native_pod(f"urgent-{i}", "urgent", priority=1000))
    live.cycle()
    evicted = sorted(live.evictions.evicted)
    assert len(evicted) == 3 and "default/elastic-0" not in evicted, evicted  # 3 GPUs: one gang, one extra
    assert set(live.evictions.disrupted) == {"whole"}, "only a PodGroup evicted whole is about to be terminated"
    assert "preempted by gang default/urgent (priority 1000)" in live.evictions.disrupted["whole"]


def test_native_status_keeps_other_conditions_and_its_transition_time() -> None:
    group = PodGroup("g", 2)
    members: list[Any] = []
    other = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
    obj = {"metadata": {"name": "g", "generation": 2}, "status": {"conditions": [other]}}
    first = native_status(obj, group, members, 0, "0/1 nodes are available")
    assert first is not None and first["conditions"][0] == other
    obj["status"] = first
    assert native_status(obj, group, members, 0, "0/1 nodes are available") is None  # nothing new
    again = native_status(obj, group, members, 0, "0/2 nodes are available")
    assert again is not None
    assert again["conditions"][1]["lastTransitionTime"] == first["conditions"][1]["lastTransitionTime"]
    done = native_status(obj, group, members, 2, "")
    assert done is not None and done["conditions"][1]["status"] == "True"


@pytest.mark.parametrize("status", [403, 404])
def test_a_native_podgroup_api_absent_or_forbidden_holds_nothing_up(status: int) -> None:
    """A cluster without the Workload API (404), or a deployment whose RBAC predates it (403): the informer says
    so and syncs empty, so the scheduler (which waits for every informer) still schedules."""
    import queue
    import threading

    from gangsched.live.informer import NATIVE_PODGROUPS, SYNC, Informer
    from gangsched.live.kube import ApiError

    class Refusing:
        def list_all(self, path: str) -> tuple[list, str]:
            raise ApiError(status, "Forbidden" if status == 403 else "NotFound", path)

        def watch(self, path: str, rv: str, timeout_seconds: int, query: dict | None = None,
                  lean: bool = False) -> Any:
            raise ApiError(status, "Forbidden" if status == 403 else "NotFound", path)

    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    informer = Informer(Refusing(), NATIVE_PODGROUPS, out, stop).start()  # type: ignore[arg-type]
    try:
        assert informer.synced.wait(5)
        assert out.get(timeout=5) == ("nativepodgroups", SYNC, [])
    finally:
        stop.set()
        informer.thread.join(10)
