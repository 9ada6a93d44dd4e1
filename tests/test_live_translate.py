"""Kubernetes JSON -> model translation (plain dicts; the API server itself is exercised in tests/integration)."""

from __future__ import annotations

import pytest

from gangsched.live.binder import BindRequest, binding_body
from gangsched.live.kube import RateLimiter
from gangsched.live.translate import demand_from, gpu_devices, group_name, node_from, podgroup_from
from gangsched.model import CPU, GIB, GPU, MEMORY, PODS, ModelError


def pod(containers, init=(), **spec):
    return {"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(containers)],
                     "initContainers": [{"name": f"i{i}", "resources": r} for i, r in enumerate(init)], **spec}}


def test_requests_sum_containers_and_take_max_of_init():
    d = demand_from(pod([{"requests": {"cpu": "500m", "memory": "1Gi"}},
                         {"requests": {"cpu": "1.5", "nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}],
                        init=[{"requests": {"cpu": "4"}}], overhead={"memory": "128Mi"}))
    assert d.request(CPU) == 4000 and d.request(MEMORY) == GIB + 128 * 2**20 and d.request(PODS) == 1
    assert d.gpu_count == 2 and GPU not in dict(d.requests)


def test_limits_only_count_as_requests():
    assert demand_from(pod([{"limits": {"cpu": "2", "nvidia.com/gpu": 1}}])).request(CPU) == 2000


def test_bad_quantity_names_the_field():
    with pytest.raises(ModelError, match=r"spec.containers\[0\].resources.requests\[cpu\]='lots'"):
        demand_from(pod([{"requests": {"cpu": "lots"}}]))


def test_affinity_selector_tolerations():
    d = demand_from(pod([{}], nodeSelector={"zone": "a"}, tolerations=[{"key": "gpu", "operator": "Exists"}],
                        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [
                                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]}]}]}}}))
    assert d.node_selector == (("zone", "a"),)
    assert d.affinity[0][0].values == ("A100",)
    assert d.tolerations[0].operator == "Exists"


def test_node_ready_taints_and_gpus():
    obj = {"metadata": {"name": "n1", "labels": {"nvidia.com/gpu.product": "A100"}},
           "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
           "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8",
                                      "ephemeral-storage": "100Gi"},
                      "conditions": [{"type": "Ready", "status": "True"}]}}
    node = node_from(obj)
    assert node.allocatable[CPU] == 32000 and len(node.gpus) == 8 and node.gpus[0].model == "A100"
    assert not node.unschedulable and node.taints[0].key == "k"
    obj["status"]["conditions"][0]["status"] = "Unknown"
    assert node_from(obj).unschedulable


def test_group_label_then_volcano_annotation():
    assert group_name({"metadata": {"labels": {"scheduling.x-k8s.io/pod-group": "a"}}}) == "a"
    assert group_name({"metadata": {"annotations": {"scheduling.k8s.io/group-name": "b"}}}) == "b"
    assert group_name({"metadata": {}}) is None


@pytest.mark.parametrize("spec,field", [({"minMember": 0}, "spec.minMember"), ({"minMember": -2}, "spec.minMember"),
                                        ({"minMember": 2, "scheduleTimeoutSeconds": 0}, "scheduleTimeoutSeconds"),
                                        ({"minMember": 2, "minResources": {"cpu": "x"}}, "minResources")])
def test_bad_podgroup_names_the_field(spec, field):
    with pytest.raises(ModelError, match=field):
        podgroup_from({"metadata": {"name": "g", "namespace": "ns"}, "spec": spec})


def test_binding_carries_devices_and_uid():
    body = binding_body(BindRequest("ns", "p", "uid-1", "n1", (2, 3), "pg:ns/g"))
    assert body["target"] == {"kind": "Node", "name": "n1"}
    assert body["metadata"]["uid"] == "uid-1"
    assert gpu_devices(body) == (2, 3)


def test_rate_limiter_spaces_requests(monkeypatch):
    slept = []
    monkeypatch.setattr("gangsched.live.kube.time.sleep", slept.append)
    limiter = RateLimiter(qps=10, burst=2)
    for _ in range(4):
        limiter.acquire()
    assert len(slept) == 2 and slept[-1] == pytest.approx(0.2, abs=0.02)


def test_parse_time_reads_rfc3339_with_z():
    from gangsched.live.translate import parse_time

    assert parse_time("2026-11-22T10:00:00Z") == 1795341600.0
    assert parse_time("2026-11-22T10:00:00.5Z") == 1795341600.5
    assert parse_time(None) == 0.0 and parse_time("yesterday") == 0.0
