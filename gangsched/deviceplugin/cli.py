"""`gangsched device-plugin`: run the GPU device plugin on this node (a DaemonSet, see deploy/device-plugin.yaml)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from gangsched.deviceplugin.inventory import FileSource, InventoryError, nvml_source
from gangsched.deviceplugin.plugin import DevicePlugin, Metrics, PodResources
from gangsched.deviceplugin.server import DEVICE_PLUGIN_DIR

log = logging.getLogger("gangsched.deviceplugin")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname().lower(),
                   help="this node's name (default: $NODE_NAME, else the host name)")
    p.add_argument("--devices", type=Path,
                   help="device list file (YAML/JSON: devices: [{uuid, model, memoryMiB, numa, island, healthy}]), "
                        "re-read on change; default: discover through NVML")
    p.add_argument("--resource-name", default="nvidia.com/gpu", help="extended resource served (default: %(default)s)")
    p.add_argument("--plugin-dir", type=Path, default=DEVICE_PLUGIN_DIR,
                   help="the kubelet's device-plugin directory, with kubelet.sock (default: %(default)s)")
    p.add_argument("--pod-resources-socket", type=Path,
                   default=Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
                   help="the kubelet's pod-resources API (default: %(default)s)")
    p.add_argument("--no-preferred-allocation", action="store_true",
                   help="do not answer GetPreferredAllocation: the kubelet picks devices itself (for comparison)")
    p.add_argument("--reconcile-seconds", type=float, default=2.0,
                   help="how often pods' annotations are checked against what the kubelet allocated")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: off)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from gangsched.live.events import EventRecorder
    from gangsched.live.kube import KubeClient

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.reconcile_seconds <= 0:
        return _fail(f"--reconcile-seconds={args.reconcile_seconds} must be positive")
    try:
        source = FileSource(args.devices) if args.devices else nvml_source()
    except InventoryError as e:
        return _fail(str(e))
    client = KubeClient.load(args.kubeconfig, qps=20, burst=40, field_manager="gangsched-device-plugin")
    metrics = Metrics()
    if args.metrics_port:
        try:
            start_http_server(args.metrics_port, registry=metrics.registry)
        except OSError as e:  # the devices matter more than their metrics: serve them all the same
            log.error("cannot serve /metrics on port %d: %s", args.metrics_port, e)
    recorder = EventRecorder(client).start()
    plugin = DevicePlugin(client, args.node_name, source, args.plugin_dir, args.resource_name,
                          PodResources(args.pod_resources_socket, args.resource_name), recorder, metrics,
                          preferred=not args.no_preferred_allocation, reconcile_seconds=args.reconcile_seconds)
    signal.signal(signal.SIGTERM, lambda *_: plugin.stop_event.set())
    log.info("device plugin for %s on node %s: %d devices from %s", args.resource_name, args.node_name,
             len(source.gpus), args.devices or "NVML")
    try:
        plugin.run()
    except KeyboardInterrupt:
        pass
    finally:
        plugin.shutdown()
    return 0


def _fail(message: str) -> int:
    print(f"gangsched device-plugin: error: {message}", file=sys.stderr)
    return 2
