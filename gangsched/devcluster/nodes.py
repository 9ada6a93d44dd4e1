"""Fake GPU nodes for the devcluster: Node objects that KWOK keeps Ready and whose pods it "runs"."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gangsched.devcluster.cluster import KWOK_ANNOTATION, KWOK_ANNOTATION_VALUE

RACK_LABEL = "gangsched.io/rack"
GPU_RESOURCE = "nvidia.com/gpu"
FAKE_NODE_SELECTOR = "type=kwok"  # label on every fake node, to list or delete them as a set


def gpu_node_manifest(name: str, gpus: int = 8, gpu_model: str = "A100", cpu: str = "96", memory: str = "768Gi",
                      zone: str = "zone-a", rack: str = "rack-0", pods: int = 110,
                      labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Node for KWOK: capacity and allocatable cpu/memory/pods/nvidia.com/gpu, topology and GPU labels."""
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods), GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.product": gpu_model,
                "nvidia.com/gpu.count": str(gpus),
                "topology.kubernetes.io/zone": zone,
                RACK_LABEL: rack,
                **(labels or {}),
            },
        },
        # No taint: the schedulers under test must place pods here without tolerations.
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),  # KWOK's node-initialize stage fills nodeInfo, addresses, conditions
        },
    }


def _core(api: Any) -> Any:
    from kubernetes import client

    return api if isinstance(api, client.CoreV1Api) else client.CoreV1Api(api)


def _parallel(fn: Callable[[Any], None], items: Iterable[Any], workers: int) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, items):  # re-raises the first failure
            pass


def create_gpu_nodes(api: Any, count: int, prefix: str = "gpu-node-", gpus: int = 8, gpu_model: str = "A100",
                     cpu: str = "96", memory: str = "768Gi", zones: int = 1, racks_per_zone: int = 1,
                     nodes_per_rack: int | None = None, start: int = 0, labels: dict[str, str] | None = None,
                     workers: int = 32) -> list[str]:
    """Create `count` fake GPU nodes in parallel; returns their names.

    `nodes_per_rack` consecutive nodes share a rack (default: spread evenly over zones*racks_per_zone racks),
    racks fill zones in order; `labels` are added to every node. `api` is an ApiClient or a CoreV1Api; give its
    configuration a connection pool of at least `workers` (DevCluster.api_client does).
    """
    core = _core(api)
    racks = max(1, zones * racks_per_zone)
    per_rack = nodes_per_rack or max(1, -(-count // racks))
    names = [f"{prefix}{i}" for i in range(start, start + count)]

    def create(idx_name: tuple[int, str]) -> None:
        i, name = idx_name
        rack = i // per_rack
        body = gpu_node_manifest(name, gpus=gpus, gpu_model=gpu_model, cpu=cpu, memory=memory,
                                 zone=f"zone-{rack // racks_per_zone % max(1, zones)}", rack=f"rack-{rack}",
                                 labels=labels)
        # Not deserialising the response roughly halves the client-side cost per node.
        core.create_node(body, _preload_content=False)

    _parallel(create, enumerate(names), workers)
    return names


def delete_nodes(api: Any, names: Iterable[str] | None = None, label_selector: str = FAKE_NODE_SELECTOR,
                 workers: int = 32) -> int:
    """Delete the given nodes (or all nodes matching `label_selector`); returns how many were deleted."""
    from kubernetes.client.rest import ApiException

    core = _core(api)
    if names is None:
        names = [n.metadata.name for n in core.list_node(label_selector=label_selector).items]
    names = list(names)

    def delete(name: str) -> None:
        try:
            core.delete_node(name, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise

    _parallel(delete, names, workers)
    return len(names)
