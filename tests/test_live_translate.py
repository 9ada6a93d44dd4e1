"""Kubernetes JSON -> model translation (plain dicts; the API server itself is exercised in tests/integration)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import context

from gangsched.filters.node_affinity import NodeAffinity
from gangsched.framework import ALL
from gangsched.live.binder import BindRequest, binding_body
from gangsched.live.kube import RateLimiter
from gangsched.live.translate import (
    MAX_GPUS,
    MAX_NODE_GPUS,
    MAX_QUANTITY,
    demand_from,
    gpu_devices,
    group_name,
    held_demand,
    node_from,
    podgroup_from,
)
from gangsched.model import CPU, GIB, GPU, MEMORY, PODS, Demand, ModelError, Requirement
from gangsched.state import CapacityError, ClusterState


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


# ---- node resources kube-scheduler schedules on ----------------------------------------------------------------
def ready_node(name: str = "n1", **allocatable) -> dict:
    return {"metadata": {"name": name},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi", **allocatable},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def test_node_keeps_ephemeral_storage_and_hugepages():
    node = node_from(ready_node(**{"ephemeral-storage": "100Gi", "hugepages-2Mi": "1Gi"}))
    assert node.allocatable["ephemeral-storage"] == 100 * GIB and node.allocatable["hugepages-2Mi"] == GIB


def test_pods_requesting_ephemeral_storage_schedule_and_are_accounted():
    state = ClusterState([node_from(ready_node(**{"ephemeral-storage": "100Gi", "hugepages-2Mi": "1Gi"}))])
    big = demand_from(pod([{"requests": {"ephemeral-storage": "60Gi", "hugepages-2Mi": "512Mi"}}]))
    state.assign("ns/a", big, 0)  # before: ModelError "unknown resource 'ephemeral-storage': no node offers it"
    assert state.used[0, state.res_index["ephemeral-storage"]] == 60 * GIB
    with pytest.raises(CapacityError):
        state.assign("ns/b", big, 0)


# ---- effective requests: sidecars, resize ------------------------------------------------------------------------
def ctr(name: str, cpu: str | None = None, memory: str | None = None, always: bool = False) -> dict:
    reqs = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    return {"name": name, "resources": {"requests": reqs}, **({"restartPolicy": "Always"} if always else {})}


def pod_of(containers: list[dict], init: list[dict] = (), status: dict | None = None, **spec) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": containers, "initContainers": list(init), **spec}, "status": status or {}}


@pytest.mark.parametrize(("init", "cpu"), [
    # a regular init container runs alone: max(sum of containers, it)
    ([ctr("i0", "3")], 3000),
    # sidecars run next to the containers: added; 1 + 2 = 3
    ([ctr("s0", "2", always=True)], 3000),
    # a regular init container runs next to the sidecars started before it: 2 + 5 = 7 > 1 + 2 + 1
    ([ctr("s0", "2", always=True), ctr("i1", "5"), ctr("s1", "1", always=True), ctr("i2", "2")], 7000),
    # ... but not next to those started after it: max(4, 1 + 3 + 1) = 5
    ([ctr("i0", "4"), ctr("s0", "3", always=True), ctr("s1", "1", always=True)], 5000),
    # sidecars accumulate: an init container after two runs next to both, 2 + 3 + 1 = 6 > 1 + 3 + 1
    ([ctr("s0", "3", always=True), ctr("s1", "1", always=True), ctr("i0", "2")], 6000),
])
def test_requests_with_sidecars_as_kube_scheduler(init, cpu):
    assert demand_from(pod_of([ctr("c0", "1")], init)).request(CPU) == cpu


def test_requests_are_maxed_per_resource_and_overhead_added():
    d = demand_from(pod_of([ctr("c0", "1", "1Gi")], [ctr("s0", "1", "1Gi", always=True), ctr("i0", "4", "1Gi")],
                           overhead={"cpu": "250m", "memory": "64Mi"}))
    # cpu: max(1 + 1, 4 + 1) + overhead; memory: max(1 + 1, 1 + 1) + overhead
    assert d.request(CPU) == 5250 and d.request(MEMORY) == 2 * GIB + 64 * 2**20


def resized(spec_cpu: str, **status) -> dict:
    cs = {"name": "c1", **status}
    return pod_of([ctr("c0", "1"), ctr("c1", spec_cpu)], status={"containerStatuses": [cs, {"name": "c0"}]})


@pytest.mark.parametrize(("obj", "cpu"), [
    # spec shrunk to 1, kubelet still holds 3 for it: the larger counts until the resize is done
    (resized("1", allocatedResources={"cpu": "3"}, resources={"requests": {"cpu": "3"}}), 4000),
    (resized("1", allocatedResources={"cpu": "3"}), 4000),
    (resized("1", resources={"requests": {"cpu": "2"}}), 3000),
    # spec grown to 4, not yet allocated: also the larger
    (resized("4", allocatedResources={"cpu": "2"}, resources={"requests": {"cpu": "2"}}), 5000),
    # actuated and allocated differ (resize in progress): the largest of the three
    (resized("1", allocatedResources={"cpu": "2"}, resources={"requests": {"cpu": "3"}}), 4000),
])
def test_pending_resize_counts_the_larger_of_spec_and_status(obj, cpu):
    assert demand_from(obj).request(CPU) == cpu


@pytest.mark.parametrize("status", [{"resize": "Infeasible"},  # Kubernetes < 1.33
                                    {"conditions": [{"type": "PodResizePending", "status": "True",
                                                     "reason": "Infeasible"}]}])
def test_infeasible_resize_counts_what_the_kubelet_holds(status):
    obj = resized("4", allocatedResources={"cpu": "2"}, resources={"requests": {"cpu": "2"}})
    obj["status"].update(status)
    assert demand_from(obj).request(CPU) == 3000


def test_sidecar_resize_counts_its_init_container_status():
    obj = pod_of([ctr("c0", "1")], [ctr("s0", "1", always=True)],
                 status={"initContainerStatuses": [{"name": "s0", "allocatedResources": {"cpu": "2"}}]})
    assert demand_from(obj).request(CPU) == 3000


def test_pod_level_requests_replace_the_containers():
    obj = pod_of([ctr("c0", "1", "1Gi"), ctr("c1", "1")], resources={"requests": {"cpu": "3"}})
    d = demand_from(obj)
    assert d.request(CPU) == 3000 and d.request(MEMORY) == GIB


# ---- quantities too large or invalid -----------------------------------------------------------------------------
@pytest.mark.parametrize(("requests", "message"), [
    ({"nvidia.com/gpu": "10000000000"}, r"pod p spec.containers\[0\].resources.requests\[nvidia.com/gpu\]"
                                        r"='10000000000' is too large"),
    ({"cpu": "1e16"}, r"pod p spec.containers\[0\].resources.requests\[cpu\]='1e16' is too large"),
    ({"cpu": 1e16}, r"requests\[cpu\]=1e\+16 is too large"),
    ({"memory": "1e999999999"}, r"requests\[memory\]='1e999999999' is too large"),
    ({"memory": "-1Gi"}, r"requests\[memory\]='-1Gi' is negative"),
    ({"cpu": "Infinity"}, r"requests\[cpu\]='Infinity' is not a Kubernetes quantity"),
    ({"cpu": "NaN"}, r"requests\[cpu\]='NaN' is not a Kubernetes quantity"),
])
def test_bad_quantities_are_model_errors_naming_the_field(requests, message):
    with pytest.raises(ModelError, match=message):
        demand_from(pod([{"requests": requests}]))


def test_requests_summing_past_the_limit_name_the_resource():
    big = {"requests": {"memory": str(MAX_QUANTITY)}}
    with pytest.raises(ModelError, match=r"pod p requests\[memory\] summed over its containers .* is too large"):
        demand_from(pod([big, big, big]))


def test_huge_node_allocatable_is_clamped_and_the_node_usable():
    node = node_from(ready_node(cpu="1e16", memory="1e30", **{"nvidia.com/gpu": "10000000000"}))
    assert node.allocatable[CPU] == MAX_QUANTITY and node.allocatable[MEMORY] == MAX_QUANTITY
    assert len(node.gpus) == MAX_NODE_GPUS
    state = ClusterState([node])
    state.assign("ns/p", demand_from(pod([{"requests": {"cpu": "1e15", "memory": "1e18"}}])), 0)
    assert state.free[0, state.res_index[CPU]] == MAX_QUANTITY - 10**18


# ---- held_demand: what a bound pod holds, never an error ---------------------------------------------------------
def test_held_demand_is_only_requests_and_gpus():
    obj = pod([{"requests": {"cpu": "2", "nvidia.com/gpu": "1"}}], nodeSelector={"zone": "a"},
              tolerations=[{"key": "k", "operator": "Exists", "effect": "NoBogus"}],
              affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                  "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Bogus"}]}]}}})
    obj["metadata"]["annotations"] = {"gangsched.io/gpu-models": "A100"}
    d, notes = held_demand(obj)
    assert notes == []
    assert d == Demand(requests=((CPU, 2000), (MEMORY, 0), (PODS, 1)), gpu_count=1)


def test_held_demand_approximates_bad_quantities_and_says_so():
    obj = pod([{"requests": {"cpu": "lots", "memory": "1e30", "nvidia.com/gpu": "10000000000"}},
               {"requests": {"cpu": "1", "example.com/fpga": "-1"}}])
    d, notes = held_demand(obj)
    assert d.request(CPU) == 1000 and d.request(MEMORY) == MAX_QUANTITY and d.request("example.com/fpga") == 0
    assert d.gpu_count == MAX_GPUS
    assert len(notes) == 4
    assert any("spec.containers[0].resources.requests[cpu]='lots'" in n and "counted as 0" in n for n in notes)
    assert any("spec.containers[0].resources.requests[memory]='1e30'" in n and "clamped" in n for n in notes)
    assert any("requests[nvidia.com/gpu]" in n for n in notes)
    assert any("spec.containers[1].resources.requests[example.com/fpga]='-1'" in n for n in notes)
    with pytest.raises(ModelError, match=r"requests\[cpu\]='lots'"):
        demand_from(obj)


def test_held_demand_clamps_sums_and_survives_odd_objects():
    big = {"requests": {"memory": str(MAX_QUANTITY)}}
    d, notes = held_demand(pod([big, big, big]))
    assert d.request(MEMORY) == MAX_QUANTITY and len(notes) == 1 and "requests[memory]" in notes[0]
    assert held_demand({"metadata": {"name": "p"}}) == (Demand(requests=((CPU, 0), (MEMORY, 0), (PODS, 1))), [])
    odd = {"metadata": {"name": "p"}, "spec": {"containers": [None, {"resources": None}, {"resources": {
        "requests": "cpu=1"}}], "overhead": [1]}, "status": {"containerStatuses": "x"}}
    assert held_demand(odd)[0].request(CPU) == 0


def test_bad_toleration_effect_names_the_field():
    with pytest.raises(ModelError, match=r"pod p spec.tolerations\[0\].effect='NoBogus'"):
        demand_from(pod([{}], tolerations=[{"key": "k", "operator": "Exists", "effect": "NoBogus"}]))


# ---- node affinity: Gt, Lt and matchFields -----------------------------------------------------------------------
def required(*terms: dict) -> dict:
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": list(terms)}}}}


def test_gt_lt_and_match_fields_translate():
    d = demand_from(pod([{}], **required(
        {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]}],
         "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]})))
    (gt, name), = d.affinity
    assert gt == Requirement("gen", "Gt", ("3",))
    assert name == Requirement("metadata.name", "NotIn", ("n2",), field=True) and name != Requirement(
        "metadata.name", "NotIn", ("n2",))  # a label of the same key is not the node's name
    hash(d)


def test_match_fields_select_nodes_by_name():
    nodes = [node_from(ready_node("n1")), node_from(ready_node("n2")), node_from(ready_node("n3"))]
    state = ClusterState(nodes)

    def admitted(*terms: dict) -> list[str]:
        mask = NodeAffinity()(context(state), demand_from(pod([{}], **required(*terms))), ALL)
        return [state.names[i] for i in np.flatnonzero(mask)]

    name_in = {"key": "metadata.name", "operator": "In", "values": ["n2"]}
    assert admitted({"matchFields": [name_in]}) == ["n2"]
    assert admitted({"matchFields": [dict(name_in, operator="NotIn")]}) == ["n1", "n3"]
    assert admitted({"matchFields": [dict(name_in, values=["gone"])]}) == []
    assert admitted({"matchFields": [name_in]}, {"matchFields": [dict(name_in, values=["n3"])]}) == ["n2", "n3"]
    # within a term, fields and expressions are ANDed
    assert admitted({"matchFields": [name_in], "matchExpressions": [{"key": "zone", "operator": "Exists"}]}) == []


@pytest.mark.parametrize(("field", "message"), [
    ({"key": "spec.unschedulable", "operator": "In", "values": ["true"]}, "only metadata.name"),
    ({"key": "metadata.name", "operator": "Exists"}, "In or NotIn"),
    ({"key": "metadata.name", "operator": "In", "values": ["a", "b"]}, "exactly one value"),
    ({"operator": "In", "values": ["a"]}, "key"),
])
def test_bad_match_fields_name_the_field(field, message):
    with pytest.raises(ModelError, match=r"pod p spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuring"
                                         r"Execution.nodeSelectorTerms\[1\].matchFields\[0\]: .*" + message):
        demand_from(pod([{}], **required({"matchFields": []}, {"matchFields": [field]})))


@pytest.mark.parametrize("values", [[], ["1", "2"], ["x"], ["1.5"], [" 1"], [str(2**63)]])
def test_bad_gt_values_name_the_field(values):
    with pytest.raises(ModelError, match=r"nodeSelectorTerms\[0\].matchExpressions\[0\]: .*Gt.*one integer"):
        demand_from(pod([{}], **required({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": values}]})))
