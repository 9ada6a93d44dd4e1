"""Kubernetes' own PodGroups (scheduling.k8s.io/v1beta1, the Workload API of 1.37) on the dev cluster's real API
server: gangs of pods naming them in spec.schedulingGroup.podGroupName, scheduled by `gangsched run` whole or not
at all, with the PodGroupInitiallyScheduled condition written; bad input told in Events; and kube-scheduler's own
gang scheduling (the native peer) on the same objects."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gangsched.live.translate import POD_GROUP_LABEL
from tests.integration.live import Cluster, wait_for

pytestmark = pytest.mark.integration

API = "/apis/scheduling.k8s.io/v1beta1/namespaces/{ns}/podgroups"


@pytest.fixture(autouse=True)
def _needs_workload_api(devcluster) -> None:
    if not devcluster.workload_api:
        pytest.skip(f"the control plane ({devcluster.binaries.k8s_version}) does not serve the Workload API: "
                    "it needs Kubernetes >= 1.37 (deploy/k8sbin, or $GANGSCHED_K8SBIN)")


def native_group(cluster: Cluster, name: str, min_count: int, **spec: Any) -> dict:
    body = {"apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup",
            "metadata": {"name": name, "namespace": cluster.ns},
            "spec": {"schedulingPolicy": {"gang": {"minCount": min_count}}, **spec}}
    return cluster.c.request("POST", API.format(ns=cluster.ns), body)


def native_pod(cluster: Cluster, name: str, group: str, gpus: int = 1, scheduler: str = "gangsched",
               label: str | None = None, priority_class: str | None = None) -> dict:
    limits = {"nvidia.com/gpu": str(gpus)}
    meta: dict[str, Any] = {"name": name, "namespace": cluster.ns, "labels": {POD_GROUP_LABEL: label} if label else {}}
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
        "schedulerName": scheduler, "nodeSelector": {"gangsched.test/ns": cluster.ns},
        "terminationGracePeriodSeconds": 0, "schedulingGroup": {"podGroupName": group},
        "containers": [{"name": "main", "image": "busybox",
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi", **limits}, "limits": limits}}]}}
    if priority_class:
        body["spec"]["priorityClassName"] = priority_class
    pod = cluster.c.request("POST", f"/api/v1/namespaces/{cluster.ns}/pods", body)
    assert pod["spec"]["schedulingGroup"] == {"podGroupName": group}, "the API server dropped spec.schedulingGroup"
    return pod


def scheduled_condition(cluster: Cluster, name: str, kind: str = "PodGroupInitiallyScheduled") -> dict | None:
    pg = cluster.c.request("GET", f"{API.format(ns=cluster.ns)}/{name}")
    return next((c for c in (pg.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def test_a_native_gang_is_bound_whole_and_its_condition_written(cluster: Cluster, start_scheduler):
    cluster.add_nodes(2, gpus=4)
    pg = native_group(cluster, "job", 4)
    start_scheduler()
    for i in range(3):
        native_pod(cluster, f"job-{i}", "job", gpus=2)
    wait_for(lambda: cluster.events("job-0", "FailedScheduling"), what="the short gang told why it waits")
    assert "3 of minCount=4 pods exist" in cluster.events("job-0", "FailedScheduling")[-1]["message"]
    assert not cluster.bound(), "3 of minCount=4 pods must not be bound"
    native_pod(cluster, "job-3", "job", gpus=2)
    wait_for(lambda: len(cluster.bound()) == 4, what="all 4 bound")
    assert sorted(len(d) for d in cluster.gpu_use_ok().values()) == [4, 4]
    cond = wait_for(lambda: (c := scheduled_condition(cluster, "job")) and c["status"] == "True" and c,
                    what="PodGroupInitiallyScheduled True")
    # as kube-scheduler: the generation it saw (1.37's PodGroup strategy sets none, so 0, omitted)
    assert cond["reason"] == "Scheduled"
    assert cond.get("observedGeneration", 0) == pg["metadata"].get("generation", 0)


def test_a_native_gang_that_cannot_fit_binds_nothing_and_is_unschedulable(cluster: Cluster, start_scheduler):
    cluster.add_nodes(1, gpus=4)
    native_group(cluster, "big", 3)
    start_scheduler()
    for i in range(3):
        native_pod(cluster, f"big-{i}", "big", gpus=2)
    cond = wait_for(lambda: scheduled_condition(cluster, "big"), what="the condition written")
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    events = wait_for(lambda: cluster.events("big", "FailedScheduling"), what="an Event on the PodGroup")
    assert events[0]["involvedObject"]["apiVersion"] == "scheduling.k8s.io/v1beta1"
    assert events[0]["involvedObject"]["kind"] == "PodGroup"
    assert not cluster.bound()


def test_a_native_gang_preempted_whole_gets_disruption_target(cluster: Cluster, start_scheduler, priorities):
    cluster.add_nodes(1, gpus=4, kwok=False)  # nobody's node: an evicted pod stays terminating until deleted
    start_scheduler()
    native_group(cluster, "low", 4)
    for i in range(4):
        native_pod(cluster, f"low-{i}", "low", priority_class=priorities["low"])
    wait_for(lambda: len(cluster.bound("low-")) == 4, 30, what="the low gang bound")
    wait_for(lambda: (c := scheduled_condition(cluster, "low")) and c["status"] == "True", what="low scheduled")
    native_group(cluster, "high", 4)
    for i in range(4):
        native_pod(cluster, f"high-{i}", "high", priority_class=priorities["high"])
    cond = wait_for(lambda: scheduled_condition(cluster, "low", "DisruptionTarget"), 30,
                    what="DisruptionTarget on the evicted PodGroup")
    assert (cond["status"], cond["reason"]) == ("True", "PreemptionByScheduler")
    assert "preempted by gang" in cond["message"] and "priority 10000" in cond["message"], cond["message"]
    assert scheduled_condition(cluster, "low")["status"] == "True", "the scheduled condition was overwritten"
    assert scheduled_condition(cluster, "high", "DisruptionTarget") is None
    for p in cluster.pods("low-"):
        assert p["metadata"].get("deletionTimestamp"), "the whole gang is evicted"
        cluster.force_delete(p["metadata"]["name"])
    wait_for(lambda: len(cluster.bound("high-")) == 4, 30, what="the high gang bound whole")
    time.sleep(1)  # later status writes (the high gang's) keep the evicted group's condition too
    assert scheduled_condition(cluster, "low", "DisruptionTarget") is not None


def test_bad_input_is_told_naming_the_field(cluster: Cluster, start_scheduler):
    cluster.add_nodes(1, gpus=4)
    cluster.podgroup("plugins", 1)
    native_group(cluster, "native", 1)
    start_scheduler()
    native_pod(cluster, "both", "native", label="plugins")
    native_pod(cluster, "orphan", "nowhere")
    both = wait_for(lambda: cluster.events("both", "FailedScheduling"), what="the conflict told")
    assert f"spec.schedulingGroup.podGroupName='native' and label {POD_GROUP_LABEL}='plugins'" in \
        both[0]["message"]
    orphan = wait_for(lambda: cluster.events("orphan", "FailedScheduling"), what="the missing PodGroup told")
    assert orphan[0]["message"] == (f"PodGroup {cluster.ns}/nowhere (scheduling.k8s.io/v1beta1, named in "
                                    "spec.schedulingGroup.podGroupName) not found; the pod waits for it")
    native_group(cluster, "nowhere", 1)  # the PodGroup arrives: the pod is scheduled
    wait_for(lambda: [p["metadata"]["name"] for p in cluster.bound()] == ["orphan"], what="orphan bound")
    time.sleep(1)
    assert [p["metadata"]["name"] for p in cluster.bound()] == ["orphan"], "the conflicting pod was bound"


def test_kube_schedulers_own_gang_scheduling_binds_whole_gangs_only(cluster: Cluster, devcluster):
    """The native peer of the benchmarks: kube-scheduler 1.37 with GenericWorkload on (GangScheduling plugin)."""
    cluster.add_nodes(2, gpus=4)
    sched = devcluster.start_kube_scheduler(f"native-{cluster.ns}", gangs=True)
    try:
        native_group(cluster, "fits", 4)
        native_group(cluster, "short", 3)
        for i in range(4):
            native_pod(cluster, f"fits-{i}", "fits", gpus=1, scheduler=f"native-{cluster.ns}")
        for i in range(2):
            native_pod(cluster, f"short-{i}", "short", gpus=1, scheduler=f"native-{cluster.ns}")
        wait_for(lambda: len(cluster.bound("fits-")) == 4, 60, what="the whole gang bound by kube-scheduler")
        time.sleep(2)
        assert not cluster.bound("short-"), "2 of minCount=3 pods bound by kube-scheduler"
    finally:
        sched.stop()
