"""The devcluster is a real control plane: apiserver, CRDs, KWOK-managed GPU nodes, pods and schedulers."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from gangsched.devcluster import DevCluster, create_gpu_nodes, delete_nodes
from gangsched.devcluster.nodes import GPU_RESOURCE
from tests.integration.live import wait_for

pytestmark = pytest.mark.integration

PG = {"group": "scheduling.x-k8s.io", "version": "v1alpha1", "plural": "podgroups"}


def node_ready(core: client.CoreV1Api, name: str) -> bool:
    conds = core.read_node(name).status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conds)


@pytest.fixture
def gpu_nodes(kube: Any) -> Iterator[list[str]]:
    """Three fake GPU nodes of this test only, labelled so that only this test's pods select them."""
    owner = f"dc-{uuid.uuid4().hex[:6]}"
    names = create_gpu_nodes(kube, 3, prefix=f"{owner}-", gpus=8, gpu_model="H100", labels={"test-owner": owner})
    yield names
    delete_nodes(kube, names)


def pod(name: str, scheduler: str, owner: str | None = None, gpus: int = 1,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [{"name": "main", "image": "registry.invalid/fake:1",
                        "resources": {"limits": {GPU_RESOURCE: str(gpus)}, "requests": {"cpu": "1"}}}],
    }
    if owner:
        spec["nodeSelector"] = {"test-owner": owner}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def pod_phase(core: client.CoreV1Api, ns: str, name: str) -> str | None:
    try:
        return core.read_namespaced_pod(name, ns).status.phase
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def test_apiserver_ready(devcluster: DevCluster, kube: Any) -> None:
    st = devcluster.status()
    assert st["ready"], st
    assert all(p["alive"] for p in st["processes"].values()), st
    assert st["server"].startswith("https://127.0.0.1:")
    version = client.VersionApi(kube).get_code()
    assert version.git_version == devcluster.binaries.k8s_version, version.git_version  # the pinned release
    assert devcluster.binaries.k8s_version.startswith("v1.37."), "the dev cluster runs Kubernetes 1.37"
    # The admin client cert is accepted and the CA verifies the serving cert (same context Go clients use).
    with urllib.request.urlopen(f"{devcluster.server}/readyz", context=devcluster._ssl_context()) as r:
        assert r.read() == b"ok"


def test_up_again_is_a_noop(devcluster: DevCluster) -> None:
    pids = {n: p["pid"] for n, p in devcluster.status()["processes"].items()}
    DevCluster(devcluster.state_dir).up(progress=lambda m: None)
    assert {n: p["pid"] for n, p in devcluster.status()["processes"].items()} == pids


def test_podgroup_crd_established_and_usable(kube: Any, namespace: str) -> None:
    crd = client.ApiextensionsV1Api(kube).read_custom_resource_definition("podgroups.scheduling.x-k8s.io")
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
    objs = client.CustomObjectsApi(kube)
    body = {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": "pg"},
            "spec": {"minMember": 4, "minResources": {GPU_RESOURCE: "32"}, "scheduleTimeoutSeconds": 60}}
    objs.create_namespaced_custom_object(namespace=namespace, body=body, **PG)
    got = objs.get_namespaced_custom_object(namespace=namespace, name="pg", **PG)
    assert got["spec"]["minMember"] == 4 and got["spec"]["minResources"][GPU_RESOURCE] == "32"
    # The schema is enforced (structural CRD): a string minMember is rejected.
    bad = dict(body, metadata={"name": "bad"}, spec={"minMember": "four"})
    with pytest.raises(ApiException) as e:
        objs.create_namespaced_custom_object(namespace=namespace, body=bad, **PG)
    assert e.value.status == 422


def test_fake_gpu_nodes_ready_with_gpus(kube: Any, gpu_nodes: list[str]) -> None:
    core = client.CoreV1Api(kube)
    for name in gpu_nodes:
        wait_for(lambda n=name: node_ready(core, n), what=f"node {name} Ready")
        node = core.read_node(name)
        assert node.status.allocatable[GPU_RESOURCE] == "8"
        assert node.metadata.labels["nvidia.com/gpu.product"] == "H100"
        assert not node.spec.taints


def test_kwok_leaves_unannotated_nodes_alone(kube: Any) -> None:
    core = client.CoreV1Api(kube)
    name = f"real-{uuid.uuid4().hex[:6]}"
    core.create_node({"metadata": {"name": name}, "status": {"allocatable": {"cpu": "4"}}})
    try:
        time.sleep(3)
        assert not (core.read_node(name).status.conditions or [])
    finally:
        delete_nodes(kube, [name])


def test_bound_pod_runs_and_deleted_pod_disappears(kube: Any, namespace: str, gpu_nodes: list[str]) -> None:
    core = client.CoreV1Api(kube)
    wait_for(lambda: node_ready(core, gpu_nodes[0]), what="node Ready")
    core.create_namespaced_pod(namespace, pod("p", scheduler="nobody"))  # no scheduler picks it up
    assert pod_phase(core, namespace, "p") == "Pending"
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": gpu_nodes[0]}}
    # The response is a Status, which the generated client cannot parse as a V1Binding.
    core.create_namespaced_pod_binding("p", namespace, binding, _preload_content=False)
    wait_for(lambda: pod_phase(core, namespace, "p") == "Running", what="pod Running")
    assert core.read_namespaced_pod("p", namespace).spec.node_name == gpu_nodes[0]
    core.delete_namespaced_pod("p", namespace)  # graceful: only KWOK (the "kubelet") can finish it
    wait_for(lambda: pod_phase(core, namespace, "p") is None, what="pod deletion")


def test_kube_scheduler_binds(devcluster: DevCluster, kube: Any, namespace: str, gpu_nodes: list[str]) -> None:
    core = client.CoreV1Api(kube)
    owner = core.read_node(gpu_nodes[0]).metadata.labels["test-owner"]
    sched = devcluster.start_kube_scheduler(name="stock-test", qps=100, burst=200)
    try:
        core.create_namespaced_pod(namespace, pod("s", scheduler="stock-test", owner=owner, gpus=2))
        wait_for(lambda: pod_phase(core, namespace, "s") == "Running", what="pod scheduled and Running")
    finally:
        sched.stop()
    assert not sched.alive()


def test_coscheduler_binds_whole_gang(devcluster: DevCluster, kube: Any, namespace: str,
                                      gpu_nodes: list[str]) -> None:
    core = client.CoreV1Api(kube)
    owner = core.read_node(gpu_nodes[0]).metadata.labels["test-owner"]
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        namespace=namespace, body={"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
                                   "metadata": {"name": "gang"}, "spec": {"minMember": 3}}, **PG)
    sched = devcluster.start_coscheduler(name="cosched-test")
    try:
        label = {"scheduling.x-k8s.io/pod-group": "gang"}
        for i in range(2):
            core.create_namespaced_pod(namespace, pod(f"g{i}", "cosched-test", owner=owner, gpus=8, labels=label))
        time.sleep(3)  # an incomplete gang is held back as a whole
        assert all(core.read_namespaced_pod(f"g{i}", namespace).spec.node_name is None for i in range(2))
        core.create_namespaced_pod(namespace, pod("g2", "cosched-test", owner=owner, gpus=8, labels=label))
        wait_for(lambda: all(pod_phase(core, namespace, f"g{i}") == "Running" for i in range(3)), timeout=60,
                 what="the whole gang Running")
        nodes = {core.read_namespaced_pod(f"g{i}", namespace).spec.node_name for i in range(3)}
        assert nodes == set(gpu_nodes)  # 8 GPUs each: one pod per node
    finally:
        sched.stop()
