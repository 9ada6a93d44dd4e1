"""Does the node give containers the GPUs gangsched picked? The device-plugin tests' sequence (eight 1-GPU pods,
then 1-, 2- and 4-GPU pods arriving and leaving on an 8-GPU node with two NVLink islands) on the dev cluster's real
kubelet node, `--rounds` times with the plugin's preference and as many without it (the kubelet's own choice),
interleaved. Per mode: pods whose devices differ from gangsched's pick, how often the 4-GPU pod got a whole
NVLink island, and the plugin's GetPreferredAllocation time (its Prometheus histogram).

    sudo .venv/bin/python benchmarks/device_plugin_packing.py --rounds 5     # root: containerd, runc

Writes benchmarks/results/device_plugin_packing.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gangsched.devcluster import DevCluster, ensure_binaries  # noqa: E402
from gangsched.devcluster.cluster import free_ports  # noqa: E402
from gangsched.devcluster.kubeletnode import KubeletNode, ensure_kubelet  # noqa: E402
from gangsched.live.kube import KubeClient  # noqa: E402
from tests.integration.live import SchedulerProcess, wait_for  # noqa: E402
from tests.integration.test_device_plugin import ISLANDS, Pods, sequence  # noqa: E402

MODES = {"preferred": (), "kubelet-choice": ("--no-preferred-allocation",)}


def histogram(port: int) -> tuple[float, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:  # its port was taken meanwhile (the plugin serves on without metrics)
        return 0.0, 0.0

    def value(name: str) -> float:
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    name = "gangsched_deviceplugin_preferred_seconds"
    return value(f"{name}_sum"), value(f"{name}_count")


def one_round(node: KubeletNode, kubeconfig: Path, mode: str, work: Path) -> dict:
    port = free_ports(1)[0]
    before = node.log("device-plugin").read_text().count("registered nvidia.com/gpu")
    node.start_plugin(*MODES[mode], f"--metrics-port={port}")
    wait_for(lambda: node.log("device-plugin").read_text().count("registered nvidia.com/gpu") > before, 30,
             what="the device plugin registered")
    node.wait_ready(60)
    sched = SchedulerProcess(kubeconfig, work / f"gangsched-{mode}-{time.monotonic_ns()}.log")
    pods = Pods(KubeClient.load(str(kubeconfig), qps=0), node)
    try:
        runs = sequence(pods)
        seconds, calls = histogram(port)
    finally:
        pods.delete_all()
        sched.stop()
    return {"pods": len(runs), "diverged": sum(seen != picked for seen, picked in runs.values()),
            "four_gpu_one_island": any(set(runs["d4"][0]) == i for i in ISLANDS),
            "preferred_calls": int(calls), "preferred_ms_mean": 1000 * seconds / calls if calls else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "device_plugin_packing.json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    cluster = DevCluster(work / "devcluster", binaries=ensure_binaries()).up(progress=lambda m: None)
    node = KubeletNode(cluster.kubeconfig, ensure_kubelet())
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    try:
        node.start(lock_timeout=900)
        for r in range(args.rounds):
            for mode in MODES:
                results[mode].append(one_round(node, cluster.kubeconfig, mode, work))
                print(f"round {r + 1}/{args.rounds} {mode}: {results[mode][-1]}", flush=True)
    except BaseException:
        for name in ("device-plugin", "kubelet"):
            with contextlib.suppress(OSError):
                print(f"--- {name}.log\n" + "\n".join(node.log(name).read_text().splitlines()[-30:]), file=sys.stderr)
        raise
    finally:
        node.stop()
        cluster.down()
    print(f"\n{'mode':16s} {'rounds':>6s} {'pods diverged':>14s} {'4-GPU pod on one island':>24s} "
          f"{'GetPreferredAllocation':>23s}")
    summary = {}
    for mode, rows in results.items():
        div = sum(r["diverged"] for r in rows) / max(1, sum(r["pods"] for r in rows))
        island = sum(r["four_gpu_one_island"] for r in rows) / max(1, len(rows))
        ms = [r["preferred_ms_mean"] for r in rows if r["preferred_ms_mean"] is not None]
        summary[mode] = {"rounds": len(rows), "diverged_fraction": div, "four_gpu_one_island_fraction": island,
                         "preferred_ms_mean": sum(ms) / len(ms) if ms else None}
        ms_text = f"{summary[mode]['preferred_ms_mean']:.1f} ms" if ms else "not called"
        print(f"{mode:16s} {len(rows):6d} {div:13.0%} {island:23.0%} {ms_text:>23s}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": {"machine": platform.node(), "cpus": os.cpu_count(),
                                             "rounds": args.rounds, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime())},
                                    "summary": summary, "rounds": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
