"""The live scheduler's books on the real API server: pods it did not place share nodes with its own, gated
members, a PodGroup deleted under a half-bound gang, and a restart with named and guessed GPUs on one node."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gangsched.live.translate import GPU_DEVICES_ANNOTATION
from tests.integration.live import Cluster, wait_for

pytestmark = pytest.mark.integration


def foreign_pod(cluster: Cluster, name: str, node: str, gpus: int, devices: str | None = None,
                **spec: Any) -> dict:
    """A pod nobody schedules, created bound (`spec.nodeName`), as a DaemonSet's or a static pod would be."""
    reqs: dict[str, str] = {"cpu": "1", "memory": "1Gi", **spec.pop("requests", {})}
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    limits.update({r: q for r, q in reqs.items() if r.startswith("hugepages-")})  # the API wants limits = requests
    meta: dict[str, Any] = {"name": name, "namespace": cluster.ns}
    if devices is not None:
        meta["annotations"] = {GPU_DEVICES_ANNOTATION: devices}
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
        "nodeName": node, "schedulerName": spec.pop("scheduler", "nobody"), "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": "busybox",
                        "resources": {"requests": {**reqs, **limits}, "limits": limits}}], **spec}}
    return cluster.c.request("POST", f"/api/v1/namespaces/{cluster.ns}/pods", body)


def test_foreign_pods_the_model_cannot_express_still_hold_their_gpus(cluster: Cluster, start_scheduler):
    [n0, n1] = cluster.add_nodes(2, gpus=4, extra={"ephemeral-storage": "100Gi", "hugepages-2Mi": "2Gi"})
    gt = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["2"]}]}]}}}
    sidecar = [{"name": "proxy", "image": "busybox", "restartPolicy": "Always",
                "resources": {"requests": {"cpu": "20"}}}]
    foreign_pod(cluster, "scratch", n0, 2, requests={"ephemeral-storage": "10Gi", "hugepages-2Mi": "1Gi"})
    foreign_pod(cluster, "gt", n0, 2, affinity=gt)
    foreign_pod(cluster, "meshed", n1, 3, initContainers=sidecar)  # 1 + 20 cpu of n1's 32
    start_scheduler()
    # 1 GPU left (on n1); a 2-GPU gang of 2 would need two more
    cluster.podgroup("job", 2)
    cluster.pod("job-0", gpus=1, group="job", cpu="4")
    cluster.pod("job-1", gpus=1, group="job", cpu="4")
    wait_for(lambda: [e for e in cluster.events("job-0", "FailedScheduling")
                      if "Insufficient nvidia.com/gpu" in e["message"]], what="FailedScheduling for the GPUs")
    # cpu: the sidecar is added (21 of 32 used), so a 12-cpu pod no longer fits on n1
    cluster.pod("wide", gpus=1, cpu="12")
    ev = wait_for(lambda: cluster.events("wide", "FailedScheduling"), what="FailedScheduling for wide")
    assert "Insufficient cpu" in ev[-1]["message"], ev[-1]["message"]
    cluster.pod("narrow", gpus=1, cpu="8")
    wait_for(lambda: cluster.bound("narrow"), what="the last GPU used")
    assert cluster.bound("narrow")[0]["spec"]["nodeName"] == n1
    time.sleep(1)
    assert not cluster.bound("job-") and not cluster.bound("wide")


def test_a_gated_member_holds_back_its_gang_until_the_gate_goes(cluster: Cluster, start_scheduler):
    cluster.add_nodes(1, gpus=4)
    cluster.podgroup("job", 2)
    cluster.pod("job-0", gpus=1, group="job")
    body = cluster.pod("job-1", gpus=1, group="job", gates=["example.com/quota"])
    start_scheduler()
    ev = wait_for(lambda: cluster.events("job-0", "FailedScheduling"), what="the gang told it waits")
    assert "spec.schedulingGates" in ev[-1]["message"], ev[-1]["message"]
    assert not cluster.bound()
    patch = {"spec": {"schedulingGates": None}}
    cluster.c.request("PATCH", f"/api/v1/namespaces/{cluster.ns}/pods/{body['metadata']['name']}", patch,
                      content_type="application/strategic-merge-patch+json")
    wait_for(lambda: len(cluster.bound("job-")) == 2, what="the gang bound once the gate is removed")


def test_a_half_bound_gang_whose_podgroup_is_deleted_is_given_back(cluster: Cluster, start_scheduler):
    cluster.add_nodes(2, gpus=4)
    cluster.podgroup("job", 8)
    for i in range(8):
        cluster.pod(f"job-{i}", gpus=1, group="job")
    sched = start_scheduler("--qps", "3", "--burst", "1", "--bind-workers", "1")  # slow: killed mid-gang
    wait_for(lambda: len(cluster.bound()) >= 2, interval=0.05, what="binding under way")
    sched.kill()
    half = len(cluster.bound())
    assert 0 < half < 8
    cluster.c.request("DELETE", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{cluster.ns}/podgroups/job")
    start_scheduler("--gang-timeout", "3")
    wait_for(lambda: not cluster.bound("job-"), 30, what="the half-bound gang given back")
    assert len(cluster.pods("job-")) == 8 - half  # the bound ones were deleted, the waiting ones stay


def test_a_restart_accounts_named_gpus_before_guessed_ones(cluster: Cluster, start_scheduler):
    [n0] = cluster.add_nodes(1, gpus=2)
    # listed in name order: the pod naming no GPU comes first, and a guess would take device 0
    foreign_pod(cluster, "a-foreign", n0, 1)
    foreign_pod(cluster, "b-ours", n0, 1, devices="0", scheduler="gangsched")
    start_scheduler()
    cluster.pod("c-new", gpus=1)
    ev = wait_for(lambda: cluster.events("c-new", "FailedScheduling"), what="no GPU left")
    assert "Insufficient nvidia.com/gpu" in ev[-1]["message"], ev[-1]["message"]
    assert not cluster.bound("c-")
