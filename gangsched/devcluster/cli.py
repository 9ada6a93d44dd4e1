"""`gangsched devcluster up|down|status|build`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gangsched.devcluster.binaries import BinariesError, ensure_binaries
from gangsched.devcluster.cluster import DevCluster, DevClusterError, default_state_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", type=Path, default=None,
                       help=f"state directory (default {default_state_dir()}, under $XDG_CACHE_HOME)")
        return p

    up = with_dir(sub.add_parser("up", help="start etcd, kube-apiserver and KWOK on loopback (builds binaries once)"))
    up.add_argument("--nodes", type=int, default=0, help="fake GPU nodes to create (default 0)")
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--gpu-model", default="A100")
    up.add_argument("--racks", type=int, default=1, help="racks to spread the fake nodes over")
    up.add_argument("--kubelet-nodes", type=int, choices=(0, 1), default=0,
                    help="real kubelet nodes (containerd, runc, gangsched device-plugin with fake GPUs; root; one "
                         "per machine; pods need hostNetwork and the gangsched.io/kubelet-node toleration)")
    up.add_argument("--kubelet-gpus", type=int, default=8, help="fake GPUs of the kubelet node (default 8)")
    up.set_defaults(run=run_up)
    down = with_dir(sub.add_parser("down", help="stop the cluster and delete its state directory"))
    down.add_argument("--keep", action="store_true", help="keep the state directory (logs, etcd data)")
    down.set_defaults(run=run_down)
    with_dir(sub.add_parser("status", help="print the cluster's processes and readiness as JSON")).set_defaults(
        run=run_status)
    build = sub.add_parser("build", help="build (or find cached) kube-apiserver, kube-scheduler, coscheduler and "
                           "kwok")
    build.add_argument("--tools", action="store_true",
                       help="also Prometheus, promtool, helm, the prometheus-operator CRDs (metrics, chart tests) and "
                       "bind-ceiling (live_throughput.py)")
    build.add_argument("--kubelet", action="store_true", help="also the kubelet (devcluster up --kubelet-nodes)")
    build.set_defaults(run=run_build)


def _errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report our own failures as one message, not a traceback."""
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (BinariesError, DevClusterError) as e:
            print(f"gangsched devcluster: error: {e}", file=sys.stderr)
            return 1
    return wrapped


@_errors
def run_build(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    paths = dict(vars(ensure_binaries()))
    if getattr(args, "tools", False):
        from gangsched.devcluster.binaries import (
            ensure_bind_ceiling,
            ensure_helm,
            ensure_prometheus,
            ensure_prometheus_operator_crds,
        )

        paths |= vars(ensure_prometheus()) | {"helm": ensure_helm(), "operator CRDs": ensure_prometheus_operator_crds()}
        paths["bind-ceiling"] = ensure_bind_ceiling()  # live_throughput's ceiling-go (its integration test)
    if getattr(args, "kubelet", False):
        from gangsched.devcluster.kubeletnode import ensure_kubelet

        paths["kubelet"] = ensure_kubelet()
    for name, path in paths.items():
        print(f"{name:15s} {path}")
    print(f"ready in {time.monotonic() - t0:.1f} s")
    return 0


@_errors
def run_up(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.dir)
    was_running = cluster.running()
    cluster.up()
    if was_running:
        print(f"devcluster already running: {cluster.server}")
    if args.nodes:
        from gangsched.devcluster.nodes import create_gpu_nodes

        t0 = time.monotonic()
        with cluster.api_client() as api:
            create_gpu_nodes(api, args.nodes, gpus=args.gpus_per_node, gpu_model=args.gpu_model,
                             racks_per_zone=args.racks)
        print(f"created {args.nodes} fake GPU nodes ({args.gpus_per_node} x {args.gpu_model}) "
              f"in {time.monotonic() - t0:.1f} s")
    if args.kubelet_nodes:
        from gangsched.devcluster.kubeletnode import KubeletNode, ensure_kubelet

        node = KubeletNode(cluster.kubeconfig, ensure_kubelet(), gpus=args.kubelet_gpus)
        node.start(lock_timeout=0, detach=True)
        (cluster.state_dir / "kubelet-node").write_text(node.name)
        print(f"kubelet node {node.name} Ready with {args.kubelet_gpus} GPUs (logs in {node.base / 'logs'})")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


@_errors
def run_down(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.dir)
    marker = cluster.state_dir / "kubelet-node"
    if marker.exists():
        from gangsched.devcluster.kubeletnode import KubeletNode

        KubeletNode(cluster.kubeconfig, Path("kubelet"), name=marker.read_text().strip()).stop()
        marker.unlink()
    cluster.down(keep=args.keep)
    print(f"devcluster in {cluster.state_dir} stopped" + (" (state kept)" if args.keep else ""))
    return 0


@_errors
def run_status(args: argparse.Namespace) -> int:
    st = DevCluster(args.dir).status()
    print(json.dumps(st, indent=2))
    return 0 if st["ready"] else 3
