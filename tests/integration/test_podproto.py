"""Pods read as protobuf (`live.podproto`) against the real API server: every value the translation yields is
the pod's JSON value at the same place, and the cache's books come out the same from either."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest

from gangsched.live.cache import Cache
from gangsched.live.informer import INITIAL_EVENTS_END
from gangsched.live.kube import ApiError, KubeClient
from gangsched.state import ClusterState
from tests.integration.live import Cluster

pytestmark = pytest.mark.integration

GPU_MODELS = "gangsched.io/gpu-models"


def _specs(ns: str, node: str) -> list[dict]:
    """Pods that use the fields the cache reads, in the shapes the API server writes them."""
    sel = {"gangsched.test/ns": ns}

    def pod(name: str, spec: dict, **meta: Any) -> dict:
        base = {"schedulerName": "gangsched", "nodeSelector": sel,
                "containers": [{"name": "main", "image": "busybox",
                                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, **meta},
                "spec": {**base, **spec}}

    gpu = {"name": "main", "image": "busybox", "resources": {"requests": {"cpu": "2", "nvidia.com/gpu": "2"},
                                                              "limits": {"nvidia.com/gpu": "2"}}}
    return [
        pod("plain", {}),
        pod("gang-member", {"containers": [gpu]}, labels={"scheduling.x-k8s.io/pod-group": "g1", "app": "x"},
            annotations={GPU_MODELS: "A100,H100"}),
        pod("volcano", {}, annotations={"scheduling.k8s.io/group-name": "vg"}),
        pod("bound", {"nodeName": node, "schedulerName": "default-scheduler", "containers": [gpu]}),
        pod("affinity", {"affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gangsched.test/ns", "operator": "In", "values": [ns]},
                                          {"key": "nvidia.com/gpu.product", "operator": "Exists"}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["x"]}]}]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 3, "preference": {"matchExpressions": [
                        {"key": "zone", "operator": "In", "values": ["a"]}]}}]},
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        pod("tolerations", {"tolerations": [
            {"operator": "Exists"},
            {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 30}]}),
        pod("sidecar", {"initContainers": [
            {"name": "init", "image": "busybox", "resources": {"requests": {"cpu": "3"}}},
            {"name": "proxy", "image": "busybox", "restartPolicy": "Always",
             "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}]}),
        pod("gated", {"schedulingGates": [{"name": "example.com/wait"}]}),
        pod("class", {"priorityClassName": "system-cluster-critical"}),
        pod("owned", {}, finalizers=["gangsched.test/keep"],
            ownerReferences=[{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "u-1",
                              "controller": True, "blockOwnerDeletion": False}]),
    ]


def _stream(client: KubeClient, path: str, protobuf: bool) -> list[dict]:
    query = {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}
    events = client.watch(path, "", 10, query=query, lean=True, pods_protobuf=protobuf)
    out = []
    try:
        for e in events:
            meta = e["object"].get("metadata") or {}
            if e["type"] == "BOOKMARK" and (meta.get("annotations") or {}).get(INITIAL_EVENTS_END) == "true":
                return out
            if e["type"] == "ADDED":
                out.append(e["object"])
    finally:
        events.close()
    raise AssertionError("the stream ended before its initial events did")


def _within(part: Any, whole: Any, where: str = "") -> None:
    """Every value of `part` is `whole`'s at the same place (dicts: a subset of keys; lists: the same length)."""
    if isinstance(part, dict):
        assert isinstance(whole, dict), where
        for k, v in part.items():
            assert k in whole, f"{where}.{k} not in the JSON"
            _within(v, whole[k], f"{where}.{k}")
    elif isinstance(part, list):
        assert isinstance(whole, list) and len(part) == len(whole), where
        for i, (a, b) in enumerate(zip(part, whole, strict=True)):
            _within(a, b, f"{where}[{i}]")
    else:
        assert part == whole, f"{where}: {part!r} != {whole!r}"


def test_pods_read_as_protobuf_are_their_json_and_fill_the_same_books(cluster: Cluster, devcluster):
    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    node = cluster.add_nodes(1, gpus=8, kwok=False)[0]
    path = f"/api/v1/namespaces/{cluster.ns}/pods"
    try:
        for body in _specs(cluster.ns, node):
            client.request("POST", path, body)
        client.request("DELETE", f"{path}/owned")  # held by its finalizer: deletionTimestamp set
        client.request("PATCH", f"{path}/plain/status", {"status": {"nominatedNodeName": node}},
                       content_type="application/merge-patch+json")

        as_json = {p["metadata"]["name"]: p for p in _stream(client, path, protobuf=False)}
        as_proto = {p["metadata"]["name"]: p for p in _stream(client, path, protobuf=True)}
        assert set(as_proto) == set(as_json) and len(as_json) == len(_specs(cluster.ns, node))
        assert as_proto["owned"]["metadata"]["deletionTimestamp"]
        assert as_proto["plain"]["status"]["nominatedNodeName"] == node
        for name, pod in as_proto.items():
            _within(pod, as_json[name], name)

        nodes = client.request("GET", f"/api/v1/nodes/{node}")
        books = []
        for pods in (as_json, as_proto):
            cache = Cache(ClusterState([]), "gangsched")
            cache.apply("nodes", "SYNC", [nodes])
            cache.apply("pods", "SYNC", list(pods.values()))
            books.append(cache)
        for key, info in books[0].pods.items():
            other = books[1].pods[key]
            assert {f.name: getattr(info, f.name) for f in dataclasses.fields(info) if f.name != "obj"} == \
                {f.name: getattr(other, f.name) for f in dataclasses.fields(other) if f.name != "obj"}, key
        assert books[0].pods[f"{cluster.ns}/bound"].node == node
        assert (books[0].state.used == books[1].state.used).all() and books[0].state.used.any()
        assert (books[0].state.gpu_free == books[1].state.gpu_free).all()
    finally:
        with contextlib.suppress(ApiError):
            client.request("PATCH", f"{path}/owned", {"metadata": {"finalizers": None}},
                           content_type="application/merge-patch+json")

