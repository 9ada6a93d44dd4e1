"""`gangsched run` against the real API server of the dev cluster (etcd + kube-apiserver + KWOK nodes).

Each test gets its own namespace and its own fake GPU nodes, which only its pods select, and its own
scheduler process.
"""

from __future__ import annotations

import itertools
import time

import pytest

from gangsched.live.kube import ApiError, KubeClient
from tests.integration.live import Cluster, wait_for

pytestmark = pytest.mark.integration


def names(pods: list[dict]) -> set[str]:
    return {p["metadata"]["name"] for p in pods}


def test_gang_is_bound_whole(cluster: Cluster, start_scheduler):
    cluster.add_nodes(2, gpus=4)
    cluster.podgroup("job", 4)
    start_scheduler()
    for i in range(3):
        cluster.pod(f"job-{i}", gpus=2, group="job")
    time.sleep(2)
    assert not cluster.bound(), "3 of minMember=4 pods must not be bound"
    cluster.pod("job-3", gpus=2, group="job")
    wait_for(lambda: len(cluster.bound()) == 4, what="all 4 bound")
    use = cluster.gpu_use_ok()
    assert sorted(len(d) for d in use.values()) == [4, 4]
    wait_for(lambda: cluster.group_status("job").get("phase") == "Running", what="PodGroup Running")
    status = cluster.group_status("job")
    assert status["running"] == 4 and status.get("scheduleStartTime")


def test_competing_gangs_one_whole_then_the_other(cluster: Cluster, start_scheduler):
    cluster.add_nodes(2, gpus=4)  # 8 GPUs; each gang wants 8
    for g in ("a", "b"):
        cluster.podgroup(g, 4)
        for i in range(4):
            cluster.pod(f"{g}-{i}", gpus=2, group=g)
    start_scheduler()
    wait_for(lambda: len(cluster.bound()) == 4, what="one gang bound")
    time.sleep(1.5)
    bound = cluster.bound()
    assert len(bound) == 4 and len({n[0] for n in names(bound)}) == 1, f"not one whole gang: {names(bound)}"
    winner = next(iter(names(bound)))[0]
    loser = "b" if winner == "a" else "a"
    wait_for(lambda: cluster.events(f"{loser}-0", "FailedScheduling"), what="FailedScheduling on the waiting gang")
    cluster.delete_pods(f"{winner}-")
    wait_for(lambda: len(cluster.bound(f"{loser}-")) == 4, what="the waiting gang bound after the first left")
    cluster.gpu_use_ok()


def test_interleaved_creation(cluster: Cluster, start_scheduler):
    cluster.add_nodes(3, gpus=2)  # 6 GPUs; two 4-GPU gangs
    start_scheduler()
    cluster.podgroup("x", 4)
    cluster.podgroup("y", 4)
    for i in range(4):
        cluster.pod(f"x-{i}", gpus=1, group="x")
        cluster.pod(f"y-{i}", gpus=1, group="y")
    wait_for(lambda: len(cluster.bound()) >= 4, what="a gang bound")
    time.sleep(2)
    bound = names(cluster.bound())
    assert bound in ({f"x-{i}" for i in range(4)}, {f"y-{i}" for i in range(4)}), bound
    cluster.gpu_use_ok()


def test_pod_without_group_and_volcano_annotation(cluster: Cluster, start_scheduler):
    cluster.add_nodes(1, gpus=8)
    start_scheduler()
    cluster.pod("lone", gpus=1)
    cluster.podgroup("vc", 2)
    cluster.pod("vc-0", gpus=2, group="vc", volcano=True)
    cluster.pod("vc-1", gpus=2, group="vc", volcano=True)
    wait_for(lambda: len(cluster.bound()) == 3, what="lone pod and Volcano-annotated gang bound")
    cluster.gpu_use_ok()
    wait_for(lambda: cluster.pods("lone")[0]["status"].get("phase") == "Running", what="KWOK runs the pod")


def test_other_schedulers_pods_are_left_alone(cluster: Cluster, start_scheduler):
    cluster.add_nodes(1, gpus=8)
    start_scheduler()
    cluster.pod("theirs", gpus=1, scheduler="someone-else")
    cluster.pod("ours", gpus=1)
    wait_for(lambda: cluster.bound("ours"), what="our pod bound")
    time.sleep(1)
    assert not cluster.bound("theirs")


def test_unsatisfiable_gang_explains_and_binds_nothing(cluster: Cluster, start_scheduler):
    cluster.add_nodes(2, gpus=4)
    cluster.podgroup("big", 2)
    cluster.pod("big-0", gpus=4, group="big")
    cluster.pod("big-1", gpus=16, group="big")
    start_scheduler()
    ev = wait_for(lambda: cluster.events("big-1", "FailedScheduling"), what="FailedScheduling event")
    assert "16" in ev[0]["message"] and "nvidia.com/gpu" in ev[0]["message"], ev[0]["message"]
    assert ev[0]["type"] == "Warning" and ev[0]["source"]["component"] == "gangsched"
    wait_for(lambda: cluster.events("big", "FailedScheduling"), what="event on the PodGroup")
    assert not cluster.bound()
    cluster.pod("fits", gpus=4)  # the cluster is not blocked by it
    wait_for(lambda: cluster.bound("fits"), what="an ordinary pod still bound")


def test_insufficient_gpus_message_counts_reasons(cluster: Cluster, start_scheduler):
    cluster.add_nodes(2, gpus=2)
    cluster.podgroup("g", 2)
    cluster.pod("g-0", gpus=2, group="g")
    cluster.pod("g-1", gpus=2, group="g")
    cluster.pod("g-2", gpus=2, group="g")
    cluster.podgroup("h", 2)
    cluster.pod("h-0", gpus=2, group="h")
    cluster.pod("h-1", gpus=2, group="h")
    start_scheduler()
    wait_for(lambda: len(cluster.bound()) == 2, what="one gang bound")
    loser = "h" if cluster.bound("g-") else "g"
    ev = wait_for(lambda: cluster.events(f"{loser}-0", "FailedScheduling"), what="event")
    assert "Insufficient nvidia.com/gpu" in ev[0]["message"], ev[0]["message"]


def test_bad_podgroups_and_pods(cluster: Cluster, start_scheduler):
    cluster.add_nodes(1, gpus=8)
    for bad in (0, -1):  # the CRD's schema (minimum: 1) makes the API server itself refuse these
        with pytest.raises(ApiError) as err:
            cluster.podgroup(f"bad{bad}", bad)
        assert err.value.status == 422 and "spec.minMember" in err.value.message
    start_scheduler()
    cluster.podgroup("short", 3)  # minMember larger than the pods that exist
    cluster.pod("short-0", gpus=1, group="short")
    cluster.pod("short-1", gpus=1, group="short")
    cluster.pod("orphan-0", gpus=1, group="nosuchgroup")  # labelled, but its PodGroup is missing
    cluster.pod("huge", gpus=64)  # more GPUs than any node has
    ev = wait_for(lambda: cluster.events("orphan-0", "FailedScheduling"), what="missing PodGroup event")
    assert "PodGroup" in ev[0]["message"] and "nosuchgroup" in ev[0]["message"] and "not found" in ev[0]["message"]
    ev = wait_for(lambda: cluster.events("short-0", "FailedScheduling"), what="minMember event")
    assert "minMember=3" in ev[0]["message"], ev[0]["message"]
    ev = wait_for(lambda: cluster.events("huge", "FailedScheduling"), what="too-big pod event")
    assert "64" in ev[0]["message"], ev[0]["message"]
    assert not cluster.bound()
    cluster.podgroup("nosuchgroup", 1)  # the missing group appears: its pod is scheduled
    wait_for(lambda: cluster.bound("orphan-0"), what="pod bound once its PodGroup exists")
    cluster.pod("short-2", gpus=1, group="short")  # the third member arrives: the gang goes
    wait_for(lambda: len(cluster.bound("short-")) == 3, what="gang bound once minMember pods exist")
    assert not cluster.bound("huge")


def test_sigkill_mid_gang_then_restart(cluster: Cluster, start_scheduler):
    cluster.add_nodes(4, gpus=8)  # 32 GPUs
    cluster.podgroup("big", 24)
    for i in range(24):
        cluster.pod(f"big-{i:02d}", gpus=1, group="big")
    sched = start_scheduler("--qps", "4", "--burst", "1", "--bind-workers", "2")  # slow binding: a wide window
    wait_for(lambda: len(cluster.bound()) >= 3, interval=0.05, what="binding under way")
    sched.kill()
    partial = len(cluster.bound())
    assert 0 < partial < 24, f"{partial} bound when killed"
    # Another gang arrives while nobody schedules; it must not take the GPUs the first gang still needs.
    cluster.podgroup("other", 2)
    for i in range(2):
        cluster.pod(f"other-{i}", gpus=8, group="other")
    start_scheduler()
    wait_for(lambda: len(cluster.bound("big-")) == 24, 60, what="the interrupted gang completed")
    time.sleep(1)
    assert not cluster.bound("other-"), "the second gang needs 16 GPUs; only 8 are left"
    cluster.gpu_use_ok()


def test_gang_that_cannot_complete_gives_back_its_gpus(cluster: Cluster, start_scheduler):
    cluster.add_nodes(2, gpus=4)
    cluster.podgroup("job", 6, timeout=3)
    for i in range(6):
        cluster.pod(f"job-{i}", gpus=1, group="job")
    sched = start_scheduler("--qps", "3", "--burst", "1", "--bind-workers", "1")
    wait_for(lambda: len(cluster.bound()) >= 2, interval=0.05, what="binding under way")
    sched.kill()
    unbound = sorted(names(cluster.pods()) - names(cluster.bound()))
    assert unbound, "all bound before the kill"
    cluster.delete_pods(unbound[0])  # a member vanishes, and nobody replaces it
    cluster.pod("waiting", gpus=4)
    start_scheduler()
    # The rest gets bound (the gang has 5 pods for minMember=6: it can never complete) ...
    ev = wait_for(lambda: cluster.events("job", "GangIncomplete"), 30, what="GangIncomplete event")
    assert "minMember=6" in ev[0]["message"]
    wait_for(lambda: not cluster.bound("job-"), 30, what="bound members evicted")
    wait_for(lambda: cluster.bound("waiting"), 30, what="the freed GPUs used by the waiting pod")
    cluster.gpu_use_ok()


def test_leader_election_one_active_replica(cluster: Cluster, start_scheduler, devcluster):
    cluster.add_nodes(1, gpus=8)
    lease = f"gangsched-{cluster.ns}"
    args = ("--leader-elect", "--lease-namespace", cluster.ns, "--lease-name", lease)
    first = start_scheduler(*args)
    holder = wait_for(lambda: _lease_holder(cluster, lease), 20, what="a leader")
    second = start_scheduler(*args)
    cluster.pod("p0", gpus=1)
    wait_for(lambda: cluster.bound("p0"), what="pod bound by the leader")
    time.sleep(1)
    assert _lease_holder(cluster, lease) == holder
    assert "became leader" not in second.output()
    # a standby keeps its books (informers synced) without scheduling, so it takes over at once
    wait_for(lambda: "informers synced" in second.output(), 20, what="the standby's informers synced")
    first.stop()  # a clean stop hands the lease over at once
    wait_for(lambda: "became leader" in second.output(), 20, what="the second replica to lead")
    cluster.pod("p1", gpus=1)
    wait_for(lambda: cluster.bound("p1"), what="pod bound by the new leader")


def _lease_holder(cluster: Cluster, name: str) -> str | None:
    try:
        lease = cluster.c.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{cluster.ns}/leases/{name}")
    except ApiError:
        return None
    return (lease.get("spec") or {}).get("holderIdentity") or None


def test_watch_expiry_is_survived(cluster: Cluster, devcluster):
    """A watch that ends in 410 Gone (the server compacted past our resourceVersion) makes the informer relist
    and carry on. This API server's watch cache serves old resourceVersions from memory even after an etcd
    compaction, so the 410 itself is injected as the watch's first event; the list and watches are real."""
    import queue
    import threading

    from gangsched.live.informer import PODS, Informer

    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    cluster.pod("before", gpus=0)
    real_watch = client.watch
    expired = {"done": False}

    def watch(path: str, rv: str, timeout_seconds: int = 300, query=None, lean: bool = False):
        if rv and not expired["done"]:  # the first watch resumed from our resourceVersion
            expired["done"] = True
            yield {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                               "message": f"too old resource version: {rv}"}}
            return
        yield from real_watch(path, rv, timeout_seconds, query, lean)

    client.watch = watch  # type: ignore[method-assign]
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    informer = Informer(client, PODS, out, stop, watch_timeout=5)
    informer.start()
    try:
        wait_for(lambda: informer.relists >= 2, 20, what="a relist after 410")
        cluster.pod("later", gpus=0)
        seen: list[str] = []
        wait_for(lambda: _drain_names(out, seen) and {"before", "later"} <= set(seen), 20,
                 what="pods seen after the relist")
    finally:
        stop.set()


def _drain_names(out, seen: list[str]) -> bool:
    while not out.empty():
        _kind, typ, obj = out.get_nowait()
        for o in listed(typ, obj):
            seen.append(o["metadata"]["name"])
    return True


def listed(typ: str, obj) -> list[dict]:
    """The objects an informer event carries: a list's parts carry several, its abort none."""
    from gangsched.live.informer import SYNC, SYNC_ABORT, SYNC_PART

    return obj if typ in (SYNC, SYNC_PART) else [] if typ == SYNC_ABORT else [obj]


def test_refused_bindings_are_retried_and_the_gang_ends_whole(cluster: Cluster, start_scheduler):
    """The API server refuses this namespace's bindings (a ValidatingAdmissionPolicy) for a while: nothing is
    lost, no GPU is double-booked, and once bindings are allowed again the gang is bound whole."""
    c, ns = cluster.c, cluster.ns
    admission = "/apis/admissionregistration.k8s.io/v1"
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": f"deny-bind-{ns}"},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                               "operations": ["CREATE"],
                                                               "resources": ["pods/binding"]}]},
                       "validations": [{"expression": "false", "message": "bindings are paused"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": f"deny-bind-{ns}"},
               "spec": {"policyName": f"deny-bind-{ns}", "validationActions": ["Deny"],
                        "matchResources": {"namespaceSelector": {"matchLabels": {
                            "kubernetes.io/metadata.name": ns}}}}}
    c.request("POST", f"{admission}/validatingadmissionpolicies", policy)
    c.request("POST", f"{admission}/validatingadmissionpolicybindings", binding)
    try:
        cluster.add_nodes(2, gpus=4)
        cluster.podgroup("job", 4)
        for i in range(4):
            cluster.pod(f"job-{i}", gpus=2, group="job")
        probes = itertools.count()
        wait_for(lambda: _binding_refused(cluster, f"probe-{next(probes)}"), 20, what="the policy to take effect")
        start_scheduler()
        wait_for(lambda: cluster.events("job-0", "FailedBinding"), 30, what="FailedBinding event")
        assert not cluster.bound("job-")  # (a probe bound before the policy took effect does not count)
    finally:
        c.request("DELETE", f"{admission}/validatingadmissionpolicybindings/deny-bind-{ns}")
        c.request("DELETE", f"{admission}/validatingadmissionpolicies/deny-bind-{ns}")
    wait_for(lambda: len(cluster.bound("job-")) == 4, 60, what="the gang bound whole once bindings are allowed")
    cluster.gpu_use_ok()


def _binding_refused(cluster: Cluster, name: str) -> bool:
    """Bind a fresh pod of nobody's to a node that does not exist: refused once the policy is in force."""
    cluster.pod(name, gpus=0, scheduler="nobody")
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"kind": "Node", "name": "no-such-node"}}
    try:
        cluster.c.request("POST", f"/api/v1/namespaces/{cluster.ns}/pods/{name}/binding", body)
    except ApiError as e:
        return "bindings are paused" in e.message
    return False


@pytest.mark.parametrize("server", ["streams", "refuses streams"])
def test_the_informer_lists_by_a_watch_list_stream_or_page_by_page(cluster: Cluster, devcluster, server: str):
    """The initial list is a watch-list stream (sendInitialEvents) from the API server's cache, its objects one
    SYNC, the same stream then the watch; a server refusing such streams (422, the WatchList feature off) is
    listed page by page instead, and nothing is missed either way."""
    import queue
    import threading

    from gangsched.live.informer import PODS, SYNC, SYNC_PART, Informer

    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    for i in range(3):
        cluster.pod(f"before-{i}", gpus=0)
    real_watch, streams = client.watch, []

    def watch(path: str, rv: str, timeout_seconds: int = 300, query=None, lean: bool = False):
        streams.append(dict(query or {}))
        if server == "refuses streams" and (query or {}).get("sendInitialEvents"):
            raise ApiError(422, "Invalid", "sendInitialEvents is forbidden for watch unless the WatchList "
                                           "feature gate is enabled")
        yield from real_watch(path, rv, timeout_seconds, query, lean)

    client.watch = watch  # type: ignore[method-assign]
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    informer = Informer(client, PODS, out, stop, watch_timeout=30).start()
    try:
        assert informer.synced.wait(20)
        items, typ = [], ""
        while typ != SYNC:  # the list's parts, then its end
            kind, typ, obj = out.get(timeout=5)
            assert kind == "pods" and typ in (SYNC_PART, SYNC)
            items += obj
        assert {f"before-{i}" for i in range(3)} <= {o["metadata"]["name"] for o in items}
        assert informer.watch_list == (server == "streams") and informer.relists == 1
        cluster.pod("after", gpus=0)
        events: list[tuple] = []

        def drain() -> bool:
            while not out.empty():
                events.append(out.get_nowait())
            return any(t not in (SYNC, SYNC_PART) and o["metadata"]["name"] == "after" for _, t, o in events)

        wait_for(drain, 20, what="a pod created after the sync, watched")
        assert all(t not in (SYNC, SYNC_PART) for _, t, _ in events), "no second list"
        if server == "streams":
            assert len(streams) == 1, "the stream went on as the watch"
    finally:
        stop.set()


def test_informers_drop_managed_fields(cluster: Cluster, devcluster):
    """The API server sends every object with its managedFields (about half a pod's JSON); nothing here reads
    them, so the informers drop them before the cache keeps the object."""
    import queue
    import threading

    from gangsched.live.informer import PODS, Informer

    cluster.pod("listed", gpus=0)
    assert cluster.pods("listed")[0]["metadata"].get("managedFields")
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    Informer(KubeClient.load(str(devcluster.kubeconfig), qps=0), PODS, out, stop, watch_timeout=5).start()
    try:
        seen: dict[str, dict] = {}

        def drain() -> bool:
            while not out.empty():
                _, typ, obj = out.get()
                for o in listed(typ, obj):
                    seen[o["metadata"]["name"]] = o
            return {"listed", "watched"} <= set(seen)

        wait_for(lambda: drain() or "listed" in seen, 20, what="the listed pod")
        cluster.pod("watched", gpus=0)
        wait_for(drain, 20, what="the watched pod")
        assert not any("managedFields" in seen[n]["metadata"] for n in ("listed", "watched"))
    finally:
        stop.set()


def test_managed_fields_cut_before_decoding_leave_the_rest_whole(cluster: Cluster, devcluster):
    """Pods and nodes as the API server writes them (owners, finalizers, and labels and annotations that spell
    the marks the cut looks for) decode the same with their managedFields cut from the text as decoded whole
    and stripped after."""
    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    cluster.pod("tricky", gpus=0, scheduler="nobody")
    meta = {"labels": {"managedFields": "x"},
            "annotations": {"managedFields": ',"managedFields":[ ]},"spec":{', "a": '"spec":[]'},
            "finalizers": ["gangsched.test/keep"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "u-1"}]}
    client.request("PATCH", f"/api/v1/namespaces/{cluster.ns}/pods/tricky", {"metadata": meta},
                   content_type="application/merge-patch+json")
    node = cluster.add_nodes(1, gpus=1, kwok=False)[0]  # nobody updates it between the two reads
    try:
        for path, name in ((f"/api/v1/namespaces/{cluster.ns}/pods", "tricky"), ("/api/v1/nodes", node)):
            query = {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
                     "fieldSelector": f"metadata.name={name}"}
            whole, lean = (_first_added(client.watch(path, "", 5, query=query, lean=cut)) for cut in (False, True))
            assert whole["metadata"].pop("managedFields") and "managedFields" not in lean["metadata"]
            assert lean == whole, path
    finally:
        client.request("PATCH", f"/api/v1/namespaces/{cluster.ns}/pods/tricky", {"metadata": {"finalizers": None}},
                       content_type="application/merge-patch+json")


def _first_added(events) -> dict:
    try:
        return next(e["object"] for e in events if e["type"] == "ADDED")
    finally:
        events.close()
