"""The live scheduler's books and cycle with no API server: one test per defect of the live-scheduler issue,
each fed plain Kubernetes objects (see livekit)."""

from __future__ import annotations

import pytest
from livekit import T0, Live, node, pod, podgroup

from gangsched.live.kube import NOT_LEADER, ApiError
from gangsched.result import Code

REFUSED = ApiError(422, "Invalid", "pod has scheduling gates")


def half_bound(live: Live) -> dict:
    """A gang of 2 on one node: a's binding succeeds, b's is refused. Returns its PodGroup."""
    live.put("nodes", node("n0", gpus=4))
    pg = live.put("podgroups", podgroup("g", 2))
    live.put("pods", pod("a", group="g"))
    live.put("pods", pod("b", group="g"))
    live.cycle()
    reqs = {r.name: r for r in live.binds.take()}
    live.answer([reqs["a"]])
    live.answer([reqs["b"]], error=REFUSED)
    return pg


def gpus_in_use(live: Live, node_name: str) -> list[int]:
    return sorted(d for a in live.state.assignments.values() if a.node_name == node_name for d in a.devices)


# ---- 1. a pod that holds a node is always accounted ---------------------------------------------------------------
def test_a_foreign_pod_asking_ephemeral_storage_and_hugepages_is_accounted() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=2, ephemeral_storage="100Gi", hugepages_2Mi="1Gi"))
    live.put("pods", pod("foreign", gpus=2, scheduler="default-scheduler", node_name="n0", phase="Running",
                         requests={"ephemeral-storage": "10Gi", "hugepages-2Mi": "512Mi"}))
    live.put("pods", pod("ours", gpus=1))
    live.cycle()
    assert live.held()["default/foreign"] == ("n0", (0, 1))
    assert "default/ours" not in live.state.assignments and live.binds.queued == []
    assert "Insufficient nvidia.com/gpu" in live.events.of("ours", "FailedScheduling")[0]


def test_a_foreign_pod_with_gt_affinity_is_accounted() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=1))
    gt = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]}]}]}}}
    live.put("pods", pod("foreign", scheduler="other", node_name="n0", phase="Running", affinity=gt))
    live.put("pods", pod("ours"))
    live.cycle()
    assert set(live.held()) == {"default/foreign"} and live.binds.queued == []


def test_after_a_relist_the_annotated_pod_keeps_its_gpu_and_the_guess_moves() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=2))
    foreign = pod("a-foreign", scheduler="other", node_name="n0", phase="Running")  # names no device
    ours = pod("b-ours", node_name="n0", devices="0", phase="Running")
    live.objects[("pods", "default/a-foreign")] = foreign
    live.objects[("pods", "default/b-ours")] = ours
    live.relist("pods")  # as at a restart: one list holding both, seen before the nodes are in the state
    live.cycle()
    assert live.held() == {"default/b-ours": ("n0", (0,)), "default/a-foreign": ("n0", (1,))}
    assert live.cache.stats["inexact"] == 0


def test_an_annotated_pod_seen_after_a_guess_displaces_it() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=2))
    live.cycle()
    live.put("pods", pod("foreign", scheduler="other", node_name="n0", phase="Running"))
    assert live.held()["default/foreign"] == ("n0", (0,))  # a guess
    live.put("pods", pod("ours", node_name="n0", devices="0", phase="Running"))
    assert live.held() == {"default/ours": ("n0", (0,)), "default/foreign": ("n0", (1,))}
    live.put("pods", pod("new", gpus=1))
    live.cycle()
    assert live.binds.queued == []  # both GPUs are held: nothing is booked twice


def test_a_node_that_shrinks_keeps_its_pods_and_offers_nothing_more() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=2, cpu="32"))
    live.put("pods", pod("big", gpus=0, cpu="24", scheduler="other", node_name="n0", phase="Running"))
    live.put("nodes", node("n0", gpus=2, cpu="16"))  # a device plugin restart, a kubelet reserving more
    live.put("pods", pod("ours", gpus=1, cpu="1"))
    live.cycle()
    assert "default/big" in live.state.assignments and live.binds.queued == []
    assert live.state.overcommitted(0)


def test_a_bound_pod_with_a_resource_no_node_offers_is_accounted_with_a_metric() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=1))
    live.cycle()
    live.put("pods", pod("odd", gpus=1, scheduler="other", node_name="n0", phase="Running",
                         requests={"example.com/fpga": "1"}))
    assert live.held()["default/odd"] == ("n0", (0,)) and live.cache.stats["inexact"] == 1


# ---- 2. our pods may ask for ephemeral-storage and hugepages ---------------------------------------------------------
def test_our_pod_asking_ephemeral_storage_is_scheduled() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=1, ephemeral_storage="100Gi", hugepages_1Gi="4Gi"))
    live.put("pods", pod("p", requests={"ephemeral-storage": "20Gi", "hugepages-1Gi": "2Gi"}))
    assert live.place() == {"default/p": "n0"}


# ---- 3. cpu/memory drift ---------------------------------------------------------------------------------------------
def test_an_in_place_resize_of_a_bound_pod_is_accounted() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=0, cpu="32"))
    live.cycle()
    p = pod("p", gpus=0, cpu="4", scheduler="other", node_name="n0", phase="Running")
    live.put("pods", p)
    resized = {**p, "spec": {**p["spec"], "containers": [{"name": "c", "resources": {"requests": {"cpu": "30"}}}]}}
    live.put("pods", resized)
    assert live.state.assignments["default/p"].vector[0] == 30_000
    live.put("pods", pod("ours", gpus=0, cpu="4"))
    live.cycle()
    assert live.binds.queued == []


def test_sidecar_init_containers_are_added() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=0, cpu="16"))
    spec = {"initContainers": [{"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "8"}}}]}
    live.put("pods", pod("p", gpus=0, cpu="10", **spec))  # 10 + 8 > 16
    live.cycle()
    assert live.binds.queued == []
    assert "pod requests more cpu than any node has (18000)" in live.events.of("p", "FailedScheduling")[0]


# ---- 4. finished while its binding is in flight ----------------------------------------------------------------------
def test_a_pod_seen_finished_while_binding_is_released() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=1))
    p = live.put("pods", pod("p"))
    live.cycle()
    [req] = live.binds.take()
    live.put("pods", {**p, "status": {"phase": "Succeeded"}})  # a relist shows it done, never bound by us
    live.answer([req], watch=False)  # then the binding's answer arrives
    assert live.state.assignments == {} and live.cache.assumed == {}
    live.put("pods", pod("next"))
    assert live.place() == {"default/next": "n0"}


# ---- 5. scheduling gates --------------------------------------------------------------------------------------------
def test_a_gated_member_holds_its_gang_back_until_the_gate_goes() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=4))
    live.put("podgroups", podgroup("g", 2))
    live.put("pods", pod("a", group="g"))
    gated = live.put("pods", pod("b", group="g", schedulingGates=[{"name": "example.com/quota"}]))
    live.cycle(3, advance=1.0)
    assert live.binds.queued == [] and live.state.assignments == {}
    assert live.events.of("a", "FailedScheduling") == [
        "gang default/g: 1 of minMember=2 pods exist, 1 more wait for spec.schedulingGates to be removed"]
    live.put("pods", {**gated, "spec": {k: v for k, v in gated["spec"].items() if k != "schedulingGates"}})
    assert live.place() == {"default/a": "n0", "default/b": "n0"}


def test_a_member_whose_binding_keeps_being_refused_does_not_reset_the_gang_timer() -> None:
    live = Live(gang_timeout=30)
    half_bound(live)
    in_flight: list = []
    for _ in range(40):  # b is placed again after each backoff, and refused a cycle later
        live.cycle(advance=1.0)
        live.answer(in_flight, error=REFUSED)
        in_flight = live.binds.take()
        if live.deleted:
            break
    assert live.deleted == ["default/a"]
    assert 30 <= live.now - T0 <= 33
    assert "GangIncomplete" in {r for _, _, r, _ in live.events.items}


def test_give_back_looks_at_changed_and_timed_gangs_only_and_sweeps_the_rest_now_and_then() -> None:
    live = Live(gang_timeout=20)
    live.put("nodes", node("n1", gpus=8))
    for g in range(4):  # complete gangs, bound and running: nothing to give back
        live.put("podgroups", podgroup(f"ok{g}", 2))
        for i in range(2):
            live.put("pods", pod(f"ok{g}-{i}", group=f"ok{g}", node_name="n1", phase="Running"))
    half_bound(live)
    giveback, looked = live.giveback, []
    real = live.cache.bound_members
    live.cache.bound_members = lambda gkey: looked.append(gkey.name) or real(gkey)  # type: ignore[method-assign]
    live.cycle(advance=1.0)
    assert looked == ["g"], "a cycle looks at the gangs that changed and the ones being timed, not every gang"
    giveback.since.clear()  # as if the gang had become incomplete with no change marked
    looked.clear()
    for _ in range(int(giveback.sweep_every) + 21):
        live.cycle(advance=1.0)
        live.binds.take()  # b's placements: never answered, so b never binds and g stays incomplete
    assert set(looked) >= {"ok0", "ok1", "ok2", "ok3", "g"}, "the periodic sweep looks at every gang"
    assert live.deleted == ["default/a"], "the unmarked incomplete gang is given back after a sweep and its timeout"


# ---- 6. a half-bound gang whose PodGroup goes ------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "invalid"])
def test_a_half_bound_gang_whose_podgroup_goes_is_given_back(how: str) -> None:
    live = Live(gang_timeout=20)
    pg = half_bound(live)
    if how == "deleted":
        live.remove("podgroups", pg)
    else:
        live.put("podgroups", {**pg, "spec": {"minMember": 0}})
    live.cycle(25, advance=1.0)
    assert live.deleted == ["default/a"] and live.state.assignments == {}


def test_a_whole_gang_whose_podgroup_is_deleted_keeps_running() -> None:
    live = Live(gang_timeout=20)
    live.put("nodes", node("n0", gpus=4))
    pg = live.put("podgroups", podgroup("g", 2))
    live.put("pods", pod("a", group="g"))
    live.put("pods", pod("b", group="g"))
    live.place()
    live.remove("podgroups", pg)
    live.cycle(25, advance=1.0)
    assert live.deleted == [] and set(live.state.assignments) == {"default/a", "default/b"}


# ---- 7. starvation protection ----------------------------------------------------------------------------------------
STARVING = {"queueSort": "priority-fifo", "starvationSeconds": 10}


def test_a_starving_gang_in_backoff_still_holds_the_line() -> None:
    live = Live(STARVING)
    live.put("nodes", node("n0", gpus=4))
    live.put("pods", pod("running", gpus=2, scheduler="other", node_name="n0", phase="Running"))
    live.put("podgroups", podgroup("big", 1))
    live.put("pods", pod("big", gpus=4, group="big", created=T0 - 60))  # starving: waited 60 s > 10 s
    live.cycle()
    assert live.binds.queued == []
    live.put("pods", pod("small", gpus=1, created=T0 - 1))  # would fit beside "running"
    for _ in range(5):
        live.cycle(advance=0.1)  # "big" waits out its backoff: it is not tried, but still blocks
    assert live.binds.queued == []
    live.remove("pods", live.objects[("pods", "default/running")])
    assert live.place() == {"default/big": "n0"}


def test_backfill_false_also_blocks_while_the_head_backs_off() -> None:
    live = Live({"queueSort": "fifo", "backfill": False})
    live.put("nodes", node("n0", gpus=4))
    live.put("pods", pod("running", gpus=2, scheduler="other", node_name="n0", phase="Running"))
    live.put("pods", pod("head", gpus=4, created=T0 - 30))
    live.cycle()
    live.put("pods", pod("tail", gpus=1, created=T0 - 1))
    live.cycle(5, advance=0.1)
    assert live.binds.queued == []


def test_a_starving_gang_that_can_never_fit_gives_way_with_an_event() -> None:
    live = Live(STARVING)
    live.put("nodes", node("n0", gpus=4))
    live.put("pods", pod("typo", gpus=1, created=T0 - 60, nodeSelector={"zone": "eu-wset"}))
    live.put("pods", pod("small", gpus=1, created=T0 - 1))
    assert live.place() == {"default/small": "n0"}
    [msg] = live.events.of("typo", "FailedScheduling")
    assert "does not hold back the gangs behind it" in msg and "didn't match Pod's node affinity/selector" in msg


# ---- 8. huge quantities ---------------------------------------------------------------------------------------------
def test_a_huge_quantity_is_an_event_naming_the_field_not_a_crash() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=2))
    live.put("pods", pod("huge", gpus=10_000_000_000))
    live.put("pods", pod("cpu", gpus=0, cpu="1e16"))
    live.put("pods", pod("ok"))
    assert live.place() == {"default/ok": "n0"}
    assert "requests[nvidia.com/gpu]" in live.events.of("huge", "FailedScheduling")[0]
    assert "requests[cpu]" in live.events.of("cpu", "FailedScheduling")[0]
    assert live.sched.stats["event_errors"] == 0


def test_a_bound_pod_with_a_huge_quantity_is_accounted() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=2))
    live.cycle()
    live.put("pods", pod("huge", gpus=0, cpu="1e16", scheduler="other", node_name="n0", phase="Running"))
    assert "default/huge" in live.state.assignments and live.cache.stats["inexact"] == 1
    live.put("pods", pod("ours"))
    live.cycle()
    assert live.binds.queued == []


# ---- 9. relabelled into another gang -------------------------------------------------------------------------------
def test_a_pending_pod_relabelled_into_another_gang_leaves_the_old_one() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=4))
    live.put("podgroups", podgroup("old", 2))
    live.put("podgroups", podgroup("new", 1))
    p = live.put("pods", pod("p", group="old"))
    live.put("pods", pod("q", group="old"))
    live.put("pods", {**p, "metadata": {**p["metadata"], "labels": {"scheduling.x-k8s.io/pod-group": "new"}}})
    bound = live.place(3)
    assert bound == {"default/p": "n0"}  # "old" now has one pod of minMember 2
    assert live.sched.stats["event_errors"] == 0 and len(live.state.assignments) == 1


# ---- 10. a gang with an invalid member -------------------------------------------------------------------------------
def test_a_gang_with_an_invalid_member_is_scheduled_once() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=4))
    live.put("podgroups", podgroup("g", 2))
    live.put("pods", pod("a", group="g"))
    live.put("pods", pod("b", group="g"))
    live.put("pods", pod("bad", group="g", cpu="lots"))
    live.place(10)
    assert live.sched.stats["gangs_scheduled"] == 1 and live.sched.stats["attempts_success"] == 1
    assert sum(v for k, v in live.sched.stats.items() if k.startswith("attempts_")) == 1
    assert "is not a Kubernetes quantity" in live.events.of("bad", "FailedScheduling")[0]


# ---- 11. after the lease is lost nothing more is done ----------------------------------------------------------------
def test_a_binding_refused_for_not_leading_is_not_retried_nor_forgotten() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=1))
    live.put("pods", pod("p"))
    live.cycle()
    live.answer(error=ApiError(0, NOT_LEADER, "lease lost"))
    live.cycle()
    assert live.binds.queued == [] and live.sched.stats["bind_errors"] == 0
    assert live.events.of("p", "FailedBinding") == []


# ---- 12. queue-sort sees real gangs, and their age -------------------------------------------------------------------
def test_smallest_first_sees_the_gangs_real_size() -> None:
    live = Live({"queueSort": "smallest-first"})
    live.put("nodes", node("n0", gpus=4))
    live.put("pods", pod("running", gpus=1, scheduler="other", node_name="n0", phase="Running"))
    live.put("podgroups", podgroup("big", 1))
    live.put("pods", pod("big", gpus=4, group="big", created=T0 - 50))
    live.put("pods", pod("small", gpus=2, created=T0 - 10))
    live.remove("pods", live.objects[("pods", "default/running")])
    assert live.place() == {"default/small": "n0"}


def test_a_gang_keeps_its_age_across_a_restart() -> None:
    live = Live({"queueSort": "fifo"})
    live.put("nodes", node("n0", gpus=2))
    live.put("pods", pod("a-young", gpus=2, created=T0 - 5))  # seen first
    live.put("pods", pod("z-old", gpus=2, created=T0 - 500))  # created long before: a restart listed it late
    assert live.place() == {"default/z-old": "n0"}


# ---- 13. fields honoured or refused ---------------------------------------------------------------------------------
def test_min_resources_are_checked_before_placement() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=4))
    live.put("podgroups", podgroup("g", 1, minResources={"nvidia.com/gpu": "8"}))
    live.put("pods", pod("a", group="g"))
    live.cycle()
    assert live.binds.queued == []
    assert "spec.minResources nvidia.com/gpu=8 exceeds the 4 free" in live.events.of("a", "FailedScheduling")[0]


def test_match_fields_on_the_node_name_are_honoured() -> None:
    live = Live()
    for n in ("n0", "n1", "n2"):
        live.put("nodes", node(n, gpus=1))
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}
    live.put("pods", pod("p", affinity=aff))
    assert live.place() == {"default/p": "n1"}


def test_the_global_default_priority_class_and_classes_synced_late() -> None:
    live = Live({"queueSort": "priority-fifo"})
    live.put("nodes", node("n0", gpus=1))
    live.put("pods", pod("named", created=T0 - 10, priorityClassName="high"))  # before the classes are synced
    live.put("pods", pod("plain", created=T0 - 50))
    live.sched.handle("priorityclasses", "SYNC", [
        {"metadata": {"name": "high"}, "value": 1000},
        {"metadata": {"name": "default"}, "value": 500, "globalDefault": True}])
    assert live.cache.priority(live.cache.pods["default/plain"]) == 500
    assert live.place() == {"default/named": "n0"}


# ---- 14. what users read ---------------------------------------------------------------------------------------------
def test_a_successful_binding_posts_scheduled() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=1))
    live.put("pods", pod("p"))
    live.place()
    assert live.events.of("p", "Scheduled") == ["Successfully assigned default/p to n0"]


def test_a_member_beyond_min_member_is_told_the_gang_runs() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=3))
    live.put("podgroups", podgroup("g", 2))
    for name in "abc":
        live.put("pods", pod(name, group="g"))
    live.place()
    live.put("pods", pod("d", group="g"))
    live.cycle()
    [msg] = live.events.of("d", "FailedScheduling")
    assert msg.startswith("gang default/g runs with 3 of 4 pods (minMember=2); this pod waits for room")
    assert live.sched.tracks[live.cache.pods["default/d"].gang].last.code == Code.UNSCHEDULABLE


# ---- the loop survives a bad object ---------------------------------------------------------------------------------
def test_a_malformed_object_does_not_stop_the_loop() -> None:
    live = Live()
    live.sched.handle("pods", "ADDED", {"metadata": {}})  # no name
    live.put("nodes", node("n0", gpus=1))
    live.put("pods", pod("p"))
    assert live.place() == {"default/p": "n0"} and live.sched.stats["event_errors"] == 1


def test_after_a_restart_mid_gang_the_gang_completes_before_a_newcomer() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=8))
    live.put("nodes", node("n1", gpus=8))
    live.put("podgroups", podgroup("big", 10))
    live.put("podgroups", podgroup("other", 1))
    for i in range(10):  # 4 of 10 members were bound when the last scheduler died
        live.objects[("pods", f"default/big-{i}")] = pod(f"big-{i}", group="big", created=T0 - 50,
                                                         **({"nodeName": "n0"} if i < 4 else {}))
    live.objects[("pods", "default/other")] = pod("other", gpus=8, group="other", created=T0 - 100)
    live.relist("pods")  # listed before the nodes are in the state
    bound = live.place()
    assert sorted(bound) == [f"default/big-{i}" for i in range(4, 10)]


# ---- found by the state machine (tests/test_live_state_machine.py) ---------------------------------------------------
def test_a_bound_pod_counted_on_fewer_gpus_than_it_asks_is_counted_again_when_its_node_grows() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=0))
    live.cycle()
    live.put("pods", pod("foreign", gpus=1, scheduler="other", node_name="n0", phase="Running"))
    assert live.held()["default/foreign"] == ("n0", ())  # the node has no GPU (yet): counted on none
    live.put("nodes", node("n0", gpus=1))  # its device plugin registers
    live.put("pods", pod("ours", gpus=1))
    live.cycle()
    assert live.held()["default/foreign"] == ("n0", (0,)) and live.binds.queued == []


@pytest.mark.parametrize("how", ["device plugin restart", "node re-registered"])
def test_a_pod_being_bound_keeps_its_gpu_when_its_node_comes_back(how: str) -> None:
    live = Live()
    n0 = live.put("nodes", node("n0", gpus=1))
    live.put("pods", pod("a"))
    live.cycle()
    [req] = live.binds.take()  # a's binding is in flight (the API server takes it whatever the node)
    if how == "device plugin restart":
        live.put("nodes", node("n0", gpus=0))
    else:
        live.remove("nodes", n0)
    live.cycle()
    live.put("nodes", node("n0", gpus=1))  # the node and its GPU are back
    live.put("pods", pod("b"))
    live.cycle()
    assert live.held() == {"default/a": ("n0", (0,))} and live.binds.queued == []  # b does not get GPU 0 too
    live.answer([req])
    assert live.held() == {"default/a": ("n0", (0,))} and live.state.gpu_free.tolist() == [[0]]


def test_pods_of_one_shape_are_translated_once_and_errors_name_their_own_pod() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=8))
    a = pod("a", gpus=2)
    b = pod("b", gpus=2)
    b["spec"]["containers"][0]["env"] = [{"name": "RANK", "value": "1"}]  # replicas differ in what no demand reads
    c = pod("c", gpus=3)
    for p in (a, b, c):
        live.put("pods", p)
    pods = live.cache.pods
    assert pods["default/a"].demand is pods["default/b"].demand  # one translation for the shape
    assert pods["default/c"].demand.gpu_count == 3
    for name in ("bad1", "bad2"):
        live.put("pods", pod(name, gpus=1, cpu="lots"))
    assert "bad1" in pods["default/bad1"].error and "bad2" in pods["default/bad2"].error


# ---- lists arrive in parts -------------------------------------------------------------------------------------------
class Streaming:
    """A client whose watch-list stream sends `items` as ADDED events, then the end bookmark (or is cut)."""

    def __init__(self, items: list[dict], cut: bool = False):
        self.items, self.cut = items, cut

    def watch(self, path: str, rv: str, timeout_seconds: int, query: dict | None = None, lean: bool = False):
        for i, o in enumerate(self.items):
            yield {"type": "ADDED", "object": {**o, "metadata": {**o["metadata"], "resourceVersion": str(i + 1)}}}
        if self.cut:
            raise ApiError(0, "ConnectionError", "connection reset by peer")
        yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9", "annotations": {
            "k8s.io/initial-events-end": "true"}}}}


@pytest.mark.parametrize("cut", [False, True])
def test_a_streamed_list_is_handed_over_in_parts_and_a_cut_one_is_called_off(cut: bool) -> None:
    import queue
    import threading

    from gangsched.live.informer import PART, PODS, SYNC, SYNC_ABORT, SYNC_PART, Informer

    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    client = Streaming([pod(f"p{i}") for i in range(2 * PART + 7)], cut=cut)
    informer = Informer(client, PODS, out, stop)  # type: ignore[arg-type]
    if cut:
        with pytest.raises(ApiError):
            informer._watch("")
    else:
        assert informer._watch("") == "9"
    got = [out.get_nowait() for _ in range(out.qsize())]
    assert [(t, len(o or ())) for _, t, o in got] == (
        [(SYNC_PART, PART), (SYNC_PART, PART), (SYNC_ABORT, 0)] if cut else
        [(SYNC_PART, PART), (SYNC_PART, PART), (SYNC, 7)])
    assert informer.synced.is_set() != cut


def test_pods_of_a_list_in_parts_are_accounted_as_they_come_and_the_end_drops_the_rest() -> None:
    from gangsched.live.informer import SYNC, SYNC_ABORT, SYNC_PART

    live = Live()
    live.put("nodes", node("n0", gpus=4))
    live.put("pods", pod("gone", gpus=1, node_name="n0", phase="Running"))  # deleted while we were not watching
    live.sched.handle("pods", SYNC_PART, [pod("a", gpus=1, node_name="n0", devices="0", phase="Running")])
    assert live.held()["default/a"] == ("n0", (0,))  # at once, not at the first cycle
    vanished = pod("vanished", gpus=1, node_name="n0", phase="Running")
    live.sched.handle("pods", SYNC_PART, [vanished, {"metadata": {}}])  # one unreadable object: skipped alone
    assert "default/vanished" in live.held() and live.cache.stats["objects_skipped"] == 1
    live.sched.handle("pods", SYNC_ABORT, None)  # the list was cut; the next one does not hold `vanished`
    live.sched.handle("pods", SYNC_PART, [pod("a", gpus=1, node_name="n0", devices="0", phase="Running")])
    live.sched.handle("pods", SYNC, [pod("b", gpus=1, node_name="n0", devices="1", phase="Running")])
    assert live.held() == {"default/a": ("n0", (0,)), "default/b": ("n0", (1,))}
    assert set(live.cache.pods) == {"default/a", "default/b"}


def test_small_kinds_listed_in_parts_are_applied_whole_at_the_end() -> None:
    from gangsched.live.informer import SYNC, SYNC_PART

    live = Live()
    live.put("nodes", node("old", gpus=1))
    live.sched.handle("nodes", SYNC_PART, [node("n0", gpus=1)])
    assert set(live.cache.nodes) == {"old"}  # not yet: the list might still hold `old`
    live.sched.handle("nodes", SYNC, [node("n1", gpus=1)])
    assert set(live.cache.nodes) == {"n0", "n1"}
