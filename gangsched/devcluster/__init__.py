"""A real local Kubernetes control plane (etcd, kube-apiserver, KWOK) for integration tests, benchmarks and demos."""

from gangsched.devcluster.binaries import Binaries, BinariesError, ensure_binaries
from gangsched.devcluster.cluster import DevCluster, DevClusterError, ProcessHandle, default_state_dir
from gangsched.devcluster.nodes import create_gpu_nodes, delete_nodes, gpu_node_manifest

__all__ = [
    "Binaries",
    "BinariesError",
    "DevCluster",
    "DevClusterError",
    "ProcessHandle",
    "create_gpu_nodes",
    "default_state_dir",
    "delete_nodes",
    "ensure_binaries",
    "gpu_node_manifest",
]
