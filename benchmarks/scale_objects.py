"""The objects of the restart benchmarks (restart_scale.py, ingest_cpu.py): bound pods spread over the nodes as
gangsched binds them, and pending gangs. Depends on nothing newer than the gangsched it measures."""

from __future__ import annotations

from typing import Any

from gangsched.devcluster.nodes import GPU_RESOURCE
from gangsched.live.translate import GPU_DEVICES_ANNOTATION, POD_GROUP_LABEL

GANG = 8
GPU_PODS_PER_NODE = 6


def pod(name: str, group: str, gpus: int, node: str | None = None, device: int | None = None) -> dict[str, Any]:
    res: dict[str, str] = {"cpu": "1", "memory": "1Gi"}
    if gpus:
        res[GPU_RESOURCE] = str(gpus)
    meta: dict[str, Any] = {"name": name, "labels": {POD_GROUP_LABEL: group}}
    if device is not None:
        meta["annotations"] = {GPU_DEVICES_ANNOTATION: str(device)}
    spec: dict[str, Any] = {"schedulerName": "gangsched", "terminationGracePeriodSeconds": 0,
                            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                            "resources": {"requests": res, "limits": res}}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def bound_pods(nodes: list[str], count: int) -> list[dict[str, Any]]:
    """In PodGroups of 8, round-robin over `nodes` (slot k of every node before slot k+1 of any): the first
    GPU_PODS_PER_NODE on a node take one GPU each and name it, the rest take one cpu."""
    out = []
    for i in range(count):
        n, slot = i % len(nodes), i // len(nodes)
        gpu = slot < GPU_PODS_PER_NODE
        out.append(pod(f"b{i:06d}", f"bg{i // GANG:05d}", 1 if gpu else 0, nodes[n], slot if gpu else None))
    return out


def pending_pods(prefix: str, count: int) -> list[dict[str, Any]]:
    return [pod(f"{prefix}{i:05d}", f"{prefix}g{i // GANG:04d}", 1) for i in range(count)]
