"""What the live scheduler's metrics cost: the gauge refresh the scheduling loop runs (at most every 2 s), a
Prometheus scrape of /metrics, and the per-attempt and per-binding hooks.

    .venv/bin/python benchmarks/metrics_overhead.py                  # 1,000 and 5,000 nodes
    .venv/bin/python benchmarks/metrics_overhead.py --nodes 200 --repeat 3

Books: N nodes of 8 GPUs (KWOK-style manifests, 4 node pools, 2 GPU models) fed to the live cache as one list,
with 2.5 pods per node bound (1, 2 or 4 GPUs, their devices annotated) and N/10 gangs of 4 pending pods in
5 queues and 3 priorities. `refresh` is `metrics.snapshot` (pending per queue/priority, GPUs per pool/model,
FGD fragmentation against the pods' shapes; node pools and the workload are memoised between refreshes, as
in the loop, so the first refresh is the slow one: `refresh max`); `scrape` is `generate_latest` over the
registry `/metrics` serves. The hooks are timed over 10,000 calls. Prints a table, writes
benchmarks/results/metrics_overhead.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
try:  # run from a checkout without installing the package
    import gangsched  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from prometheus_client import generate_latest  # noqa: E402

from gangsched.devcluster.nodes import gpu_node_manifest  # noqa: E402
from gangsched.live.cache import Cache, GangKey  # noqa: E402
from gangsched.live.informer import SYNC  # noqa: E402
from gangsched.live.metrics import LoopCollector, SchedulerMetrics, snapshot  # noqa: E402
from gangsched.live.translate import GPU_DEVICES_ANNOTATION, POD_GROUP_LABEL  # noqa: E402
from gangsched.result import Code  # noqa: E402
from gangsched.sim.report import cpus, load_average, table, write_json  # noqa: E402
from gangsched.state import ClusterState  # noqa: E402


def pod(name: str, gpus: int, node: str | None = None, devices: str | None = None, group: str | None = None,
        priority: int = 0) -> dict:
    meta: dict = {"name": name, "namespace": "bench", "uid": name, "labels": {}, "annotations": {},
                  "creationTimestamp": "2026-01-01T00:00:00Z"}
    if devices:
        meta["annotations"][GPU_DEVICES_ANNOTATION] = devices
    if group:
        meta["labels"][POD_GROUP_LABEL] = group
    spec: dict = {"schedulerName": "gangsched", "priority": priority, "containers": [{"name": "c", "resources": {
        "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)},
        "limits": {"nvidia.com/gpu": str(gpus)}}}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": {"phase": "Running" if node else "Pending"}}


def books(n_nodes: int) -> Cache:
    nodes, pods, groups = [], [], []
    for i in range(n_nodes):
        node = gpu_node_manifest(f"n{i}", gpus=8, gpu_model="A100" if i % 3 else "H100", cpu="64", memory="512Gi")
        node["metadata"]["labels"]["karpenter.sh/nodepool"] = f"pool-{i % 4}"
        nodes.append(node)
        used = 0
        for j, g in enumerate((4, 2, 1) if i % 2 else (2, 1)):
            pods.append(pod(f"b{i}-{j}", g, f"n{i}", ",".join(str(used + d) for d in range(g))))
            used += g
    for k in range(n_nodes // 10):
        groups.append({"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
                       "metadata": {"name": f"g{k}", "namespace": "bench", "uid": f"g{k}"},
                       "spec": {"minMember": 4, "queue": f"q{k % 5}"}})
        pods += [pod(f"g{k}-{m}", 2, group=f"g{k}", priority=100 * (k % 3)) for m in range(4)]
    cache = Cache(ClusterState([]))
    cache.apply("nodes", SYNC, nodes)
    cache.apply("podgroups", SYNC, groups)
    cache.apply("pods", SYNC, pods)
    cache.refresh_nodes()
    return cache


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def hooks_us(metrics: SchedulerMetrics, calls: int = 10_000) -> tuple[float, float]:
    t0 = time.perf_counter()
    for _ in range(calls):
        metrics.attempt_started()
        metrics.attempt_done(Code.UNSCHEDULABLE)
    attempt = (time.perf_counter() - t0) / calls * 1e6
    gkey = GangKey("bench", "g", True)
    t0 = time.perf_counter()
    for i in range(calls):
        metrics.gang_placed(gkey, [f"p{i}"], 0.0)
        metrics.binding_done(gkey, f"p{i}", ok=True)
    binding = (time.perf_counter() - t0) / calls * 1e6
    return attempt, binding


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1000,5000", help="node counts, comma-separated (default 1000,5000)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "metrics_overhead.json"))
    args = ap.parse_args()
    rows, results = [], []
    for n in (int(x) for x in args.nodes.split(",")):
        cache = books(n)
        metrics = SchedulerMetrics(profile="default", every=0)
        sched = SimpleNamespace(stats={"cycles": 1}, cache=cache, giveback=SimpleNamespace(evicted=0), preemptor=None,
                                binding={})
        metrics.registry.register(LoopCollector(sched, metrics))  # type: ignore[arg-type]
        memo: dict = {}  # as the loop keeps it: pools per node set, the workload per shape mix
        refresh = timed(lambda c=cache, m=metrics, k=memo: setattr(m, "snapshot", snapshot(c, None, memo=k)),
                        args.repeat)
        scrape = timed(lambda m=metrics: generate_latest(m.registry), args.repeat)
        size = len(generate_latest(metrics.registry))
        attempt_us, binding_us = hooks_us(metrics)
        r = {"nodes": n, "pods": len(cache.pods), "refresh_ms_median": 1e3 * statistics.median(refresh),
             "refresh_ms_max": 1e3 * max(refresh), "scrape_ms_median": 1e3 * statistics.median(scrape),
             "scrape_bytes": size, "attempt_hooks_us": attempt_us, "binding_hooks_us": binding_us}
        results.append(r)
        rows.append([n, r["pods"], r["refresh_ms_median"], r["refresh_ms_max"], r["scrape_ms_median"], size,
                     attempt_us, binding_us])
    print(table(["nodes", "pods", "refresh ms (median)", "refresh ms (max)", "scrape ms", "scrape bytes",
                 "attempt hooks us", "binding hooks us"], rows,
                title=f"metrics overhead, {args.repeat} repeats ({cpus()} CPUs, load {load_average()})"))
    write_json(Path(args.out), {"python": platform.python_version(), "cpus": cpus(), "load_average": load_average(),
                                "repeat": args.repeat, "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
