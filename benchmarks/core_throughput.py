"""Throughput and latency of the scheduling core (no API server), on synthetic GPU clusters.

    .venv/bin/python benchmarks/core_throughput.py                    # 1,000 / 5,000 / 10,000 nodes
    .venv/bin/python benchmarks/core_throughput.py --quick --nodes 200

Cluster: N nodes of 8 GPUs in 2 NVLink groups of 4, racks of 40 nodes, 3 zones, three GPU models (H100,
A100 and L40S racks, with their own cpu/memory sizes), a node pool label, ~1.5% of the nodes tainted
(maintenance, dedicated inference) and ~0.3% cordoned. Before measuring, about 45% of the GPUs are taken by
a background mix (empty, full and partly used nodes, including GPU-sharing pods), so scores see varied nodes.

Workloads (every pod selects `pool=training` and carries the two default NoExecute tolerations):
  single   gangs of one pod, 1 GPU each                 -> decisions/s (and per-decision latency)
  gang8    8 pods x 8 GPUs (whole nodes, 64 GPUs)       -> latency per gang
  gang64   64 pods x 1 GPU (64 GPUs spread over nodes)  -> latency per gang
Every decision is `Scheduler.schedule_gang` (trial, filter, score, pick node and devices, commit).

Profiles: `default` (FGD and gang-locality, as gangsched/profiles/default.yaml says; its typical pods come
from `Workload.from_demands` over a 20,000-pod sample of the mix below), `binpack` (most-allocated and
gang-locality) and `spread` (least-allocated, a baseline).

Regimes:
  identical  every pod has the same demand: the evaluator's per-demand cache does one full evaluation,
             then refreshes only the rows changed since (its own placements and the releases).
  distinct   demands cycle through 320 cpu/memory shapes (more than the cache's 128 entries), so every
             single pod, and the first member of every gang, is a full evaluation over all nodes.

Steady state: measured pods stay placed in a sliding window and the oldest are released (untimed) as new
ones land, so the cluster neither fills up nor empties; every decision in the table found a node, and any
that did not are counted in `failed`. A few warm-up decisions/gangs per case are not timed. With
`--repeat N` each case runs N times on a fresh state and the run with the lowest mean is reported (the one
least disturbed by other work on the machine); all N means are kept in the JSON.

Baselines, measured in the same run because absolute times on a small shared machine are noisy:
`numpy pass` is one plain vectorised filter+score+argmax over the node arrays for a 1-GPU pod (the floor
for any full evaluation), and the `spread` profile (LeastAllocated, no FGD, no gang locality) is measured
like the others. `x numpy` is the mean latency over the numpy pass; `cpu ms` is the process CPU time per
decision or gang, which other load on the machine disturbs less than the wall-clock columns.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:  # run from a checkout without installing the package
    import gangsched  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from gangsched.core import Scheduler  # noqa: E402
from gangsched.frag import Workload  # noqa: E402
from gangsched.framework import GangInfo  # noqa: E402
from gangsched.model import (  # noqa: E402
    CPU,
    GIB,
    GPU,
    MEMORY,
    PODS,
    Demand,
    GpuDevice,
    Node,
    Pod,
    PodGroup,
    Taint,
    TaintEffect,
    Toleration,
    demand,
)
from gangsched.profile import load_profile  # noqa: E402
from gangsched.sim.report import cpus, load_average, table, write_json  # noqa: E402
from gangsched.state import CapacityError, ClusterState  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "core_throughput.json"
PROFILES = ("default", "binpack", "spread")  # spread: baseline
RACK_SIZE = 40
N_SHAPES = 320  # distinct demands cycled through in the `distinct` regime (> Evaluator capacity of 128)

# (product, cpu milli, memory GiB) per node type; racks are homogeneous, in a 4:4:2 ratio
NODE_TYPES = (("NVIDIA-H100-80GB-HBM3", 192_000, 2048), ("NVIDIA-A100-SXM4-80GB", 128_000, 1024),
              ("NVIDIA-L40S", 96_000, 512))
RACK_TYPES = (0, 0, 0, 0, 1, 1, 1, 1, 2, 2)

DEFAULT_TOLERATIONS = (
    Toleration("node.kubernetes.io/not-ready", "Exists", effect=TaintEffect.NO_EXECUTE),
    Toleration("node.kubernetes.io/unreachable", "Exists", effect=TaintEffect.NO_EXECUTE),
)
POOL = (("gangsched.io/pool", "training"),)

# The workload's pod mix (cpu milli, memory GiB, gpus, gpu milli per device, models, weight): the background
# fill draws GPU pods from it and the `default` profile's FGD typical pods are built from a sample of it.
H100, A100, L40S = (t[0] for t in NODE_TYPES)
MIX = (
    (2_000, 8, 0, 1000, (), 0.04),
    (8_000, 32, 0, 1000, (), 0.04),
    (32_000, 128, 0, 1000, (), 0.02),
    (2_000, 8, 1, 250, (), 0.04),
    (4_000, 16, 1, 500, (), 0.07),
    (6_000, 24, 1, 500, (L40S,), 0.04),
    (8_000, 64, 1, 1000, (), 0.25),
    (12_000, 96, 1, 1000, (), 0.06),
    (8_000, 64, 1, 1000, (A100,), 0.04),
    (16_000, 128, 2, 1000, (), 0.08),
    (32_000, 256, 4, 1000, (), 0.08),
    (32_000, 256, 4, 1000, (H100,), 0.04),
    (64_000, 400, 8, 1000, (), 0.10),
    (88_000, 480, 8, 1000, (H100,), 0.06),
)


def mix_demand(cpu: int, mem_gib: int, gpus: int, milli: int, models: tuple[str, ...]) -> Demand:
    return demand(cpu_milli=cpu, memory=mem_gib * GIB, gpus=gpus, gpu_milli=milli, gpu_models=frozenset(models),
                  node_selector=POOL, tolerations=DEFAULT_TOLERATIONS)


# ---- cluster ------------------------------------------------------------------------------------------------
def build_nodes(n: int, seed: int = 0) -> list[Node]:
    rng = np.random.default_rng(seed)
    nodes = []
    for i in range(n):
        rack = i // RACK_SIZE
        product, cpu, mem = NODE_TYPES[RACK_TYPES[rack % len(RACK_TYPES)]]
        labels = {
            "kubernetes.io/hostname": f"gpu-{i:05d}",
            "kubernetes.io/os": "linux",
            "topology.kubernetes.io/region": "eu-west",
            "topology.kubernetes.io/zone": f"eu-west-{'abc'[rack % 3]}",
            "topology.kubernetes.io/rack": f"rack-{rack:03d}",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.count": "8",
            "gangsched.io/pool": "training",
        }
        taints: tuple[Taint, ...] = ()
        draw = rng.random()
        if draw < 0.01:
            taints = (Taint("nvidia.com/maintenance", "true", TaintEffect.NO_SCHEDULE),)
        elif draw < 0.015:
            labels["gangsched.io/pool"] = "inference"
            taints = (Taint("dedicated", "inference", TaintEffect.NO_SCHEDULE),)
        elif draw < 0.03:
            taints = (Taint("gangsched.io/preemptible", "true", TaintEffect.PREFER_NO_SCHEDULE),)
        gpus = tuple(GpuDevice(d, product, 81_920, group=d // 4) for d in range(8))
        nodes.append(Node(f"gpu-{i:05d}", {CPU: cpu, MEMORY: mem * GIB, PODS: 110, GPU: 8}, labels, taints,
                          unschedulable=bool(rng.random() < 0.003), gpus=gpus))
    return nodes


def prefill(state: ClusterState, seed: int = 1) -> int:
    """Background pods placed directly in the state: ~30% of nodes empty, ~15% full, the rest partly used."""
    rng = np.random.default_rng(seed)
    gpu_shapes = [m for m in MIX if m[2] > 0 and m[2] < 8]
    weights = np.array([m[5] for m in gpu_shapes])
    weights /= weights.sum()
    placed = 0
    for i, node in enumerate(state.nodes):
        level = rng.random()
        if level < 0.30:
            continue
        model = node.gpus[0].model
        target = 8 if level < 0.45 else int(rng.integers(1, 8))
        for j in range(24):
            busy = int((state.gpu_free[i] < 1000).sum())
            if busy >= target:
                break
            cpu, mem, gpus, milli, models, _ = gpu_shapes[rng.choice(len(gpu_shapes), p=weights)]
            if models and model not in models:
                continue
            d = mix_demand(cpu, mem, gpus, milli, models)
            free = state.gpu_free[i]
            if milli < 1000:  # fullest device that still fits
                ok = np.flatnonzero(free >= milli)
                devices = (int(ok[np.argmin(free[ok])]),) if ok.size else ()
            else:
                devices = tuple(int(x) for x in np.flatnonzero(free == 1000)[:gpus])
            if len(devices) < gpus:
                continue
            try:
                state.assign(f"bg/{i}-{j}", d, i, devices)
                placed += 1
            except CapacityError:
                break
    return placed


def workload_for_default(seed: int = 2, samples: int = 20_000) -> Workload:
    rng = np.random.default_rng(seed)
    weights = np.array([m[5] for m in MIX])
    picks = rng.choice(len(MIX), size=samples, p=weights / weights.sum())
    return Workload.from_demands(mix_demand(*MIX[k][:5]) for k in picks)


# ---- workloads ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    members: int
    gpus: int
    cpu: int  # base cpu milli of the identical shape
    mem_gib: int

    def shape(self, k: int | None) -> Demand:
        """The identical demand (k None) or distinct shape k: cpu and memory vary, the GPU ask does not."""
        if k is None:
            return mix_demand(self.cpu, self.mem_gib, self.gpus, 1000, ())
        k %= N_SHAPES
        cpu = self.cpu // 2 + 500 * (k % 16)
        return mix_demand(cpu, self.mem_gib // 2 + 4 * (k // 16), self.gpus, 1000, ())


CASES = (
    Case("single", 1, 1, 8_000, 64),
    Case("gang8", 8, 8, 64_000, 400),
    Case("gang64", 64, 1, 8_000, 64),
)


@dataclass
class Counts:
    single: int
    single_distinct: int
    gang8: int
    gang64: int
    warmup: int

    def rounds(self, case: str, regime: str) -> int:
        if case == "single":
            return self.single if regime == "identical" else self.single_distinct
        return getattr(self, case)


FULL = Counts(single=3000, single_distinct=400, gang8=120, gang64=60, warmup=3)
QUICK = Counts(single=60, single_distinct=30, gang8=4, gang64=3, warmup=1)


def stats(wall_ns: list[int], cpu_ns: list[int], members: int, failed: int) -> dict[str, Any]:
    """Wall-clock latency percentiles and throughput; `cpu_mean_ms` is the process's CPU time per round, which
    other load on the machine disturbs less than wall time (our own work is single-threaded)."""
    ms = np.asarray(wall_ns, dtype=np.float64) / 1e6
    nan = float("nan")
    total_s = ms.sum() / 1e3
    return {
        "count": len(ms),
        "pods_per_round": members,
        "failed": failed,
        "decisions_per_s": len(ms) * members / total_s if total_s > 0 else nan,
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else nan,
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else nan,
        "mean_ms": float(ms.mean()) if ms.size else nan,
        "cpu_mean_ms": float(np.mean(cpu_ns)) / 1e6 if cpu_ns else nan,
    }


def run_case(nodes: list[Node], profile_name: str, workload: Workload | None, case: Case, regime: str,
             counts: Counts) -> dict[str, Any]:
    """Time `rounds` gang decisions against a prefilled state; placed gangs sit in a window whose oldest
    entries are released (untimed) so the measured load stays bounded."""
    state = ClusterState(nodes)
    prefill(state)
    profile = load_profile(profile_name)
    sched = Scheduler(state, profile, seed=0, workload=workload if profile.needs_workload else None)
    gc.collect()  # the cluster just built is garbage-collector work that belongs to no decision
    free_gpus = int((state.gpu_free == 1000).sum())
    window_gpus = max(case.members * case.gpus * 2, int(0.03 * free_gpus))
    window: deque[list[str]] = deque()
    window_used = 0
    wall: list[int] = []
    cpu: list[int] = []
    failed = 0
    total = counts.warmup + counts.rounds(case.name, regime)
    for r in range(total):
        d = case.shape(None if regime == "identical" else r)
        group = PodGroup(f"{case.name}-{r}", case.members)
        gang = GangInfo(group, [Pod(f"{case.name}-{r}-{m}", d, group=group.name) for m in range(case.members)])
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        result = sched.schedule_gang(gang)
        elapsed, used = time.perf_counter_ns() - t0, time.process_time_ns() - c0
        if r >= counts.warmup:
            if result.ok:
                wall.append(elapsed)
                cpu.append(used)
            else:
                failed += 1
        if result.ok:
            window.append([a.pod_key for a in result.placed])
            window_used += case.members * case.gpus
        while window and window_used > window_gpus:
            for key in window.popleft():
                state.release(key)
            window_used -= case.members * case.gpus
    return stats(wall, cpu, case.members, failed)


def numpy_pass_ms(nodes: list[Node], repeat: int) -> float:
    """One vectorised filter + score + argmax over all nodes for a 1-GPU pod, in plain numpy."""
    state = ClusterState(nodes)
    prefill(state)
    vec = state.vector(CASES[0].shape(None))
    best = []
    t0 = time.perf_counter_ns()
    for _ in range(repeat):
        fit = np.all(state.used + vec <= state.allocatable, axis=1)
        fit &= (state.gpu_free >= 1000).sum(axis=1) >= 1
        fit &= ~state.unschedulable
        score = np.where(fit, state.gpu_free.sum(axis=1), np.iinfo(np.int32).max)
        best.append(int(np.argmin(score)))
    return (time.perf_counter_ns() - t0) / repeat / 1e6


# ---- driver ---------------------------------------------------------------------------------------------------
TARGETS = {
    "single_decisions_per_s": {"nodes": 5000, "case": "single", "metric": "decisions_per_s", "min": 5000.0},
    "gang64_latency_ms": {"nodes": 5000, "case": "gang64", "metric": "p50_ms", "max": 20.0},
}


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, t in TARGETS.items():
        key = str(t["nodes"])
        measured = {}
        if key in results:
            for profile, cases in results[key].items():
                for regime, s in cases[t["case"]].items():
                    v = s[t["metric"]]
                    met = v >= t["min"] if "min" in t else v < t["max"]
                    measured[f"{profile}/{regime}"] = {"value": v, "met": bool(met), "p99_ms": s["p99_ms"],
                                                      "cpu_mean_ms": s["cpu_mean_ms"]}
        out[name] = {**t, "measured": measured}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="1000,5000,10000", help="comma-separated cluster sizes")
    p.add_argument("--quick", action="store_true", help="few decisions per case: a smoke run, not a measurement")
    p.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated profiles")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each case this many times (fresh state each) and report the fastest run")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    counts = QUICK if args.quick else FULL
    workload = workload_for_default()
    results: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    rows = []
    started, load_before = time.time(), load_average()
    for n in sizes:
        nodes = build_nodes(n)
        base = numpy_pass_ms(nodes, 20 if args.quick else 300)
        baseline[str(n)] = {"numpy_pass_ms": base}
        per_size: dict[str, Any] = {}
        for profile in profiles:
            per_profile: dict[str, Any] = {}
            for case in CASES:
                per_profile[case.name] = {}
                for regime in ("identical", "distinct"):
                    runs = [run_case(nodes, profile, workload, case, regime, counts) for _ in range(args.repeat)]
                    s = min(runs, key=lambda r: r["mean_ms"])  # the run least disturbed by other load
                    s["repeats_mean_ms"] = [r["mean_ms"] for r in runs]
                    s["x_numpy_pass"] = s["mean_ms"] / base if base > 0 else float("nan")
                    per_profile[case.name][regime] = s
                    rows.append([n, profile, case.name, regime, s["count"], s["decisions_per_s"], s["p50_ms"],
                                 s["p99_ms"], s["mean_ms"], s["cpu_mean_ms"], s["x_numpy_pass"], s["failed"]])
                    print(f"{n:>6} {profile:<8} {case.name:<7} {regime:<9} pods/s {s['decisions_per_s']:9.1f}  "
                          f"p50 {s['p50_ms']:8.3f}  p99 {s['p99_ms']:8.3f}  mean {s['mean_ms']:8.3f}  "
                          f"cpu {s['cpu_mean_ms']:8.3f} ms", flush=True)
            per_size[profile] = per_profile
        results[str(n)] = per_size
    targets = evaluate_targets(results)
    headers = ["nodes", "profile", "case", "regime", "n", "pods/s", "p50 ms", "p99 ms", "mean ms", "cpu ms",
               "x numpy", "failed"]
    print()
    print(table(headers, rows, title="Scheduling core: per decision (single) or per gang (gang8, gang64)"))
    print()
    print(table(["nodes", "numpy pass ms"], [[k, v["numpy_pass_ms"]] for k, v in baseline.items()]))
    for name, t in targets.items():
        for where, m in t["measured"].items():
            bound = f">= {t['min']:g}" if "min" in t else f"< {t['max']:g}"
            print(f"target {name} ({t['nodes']} nodes, {where}): {t['metric']} {m['value']:.2f} {bound} -> "
                  f"{'met' if m['met'] else 'MISSED'}  (p99 {m['p99_ms']:.2f} ms, cpu {m['cpu_mean_ms']:.3f} ms)")
    doc = {
        "meta": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": cpus(),
            "quick": args.quick,
            "repeat": args.repeat,
            "seconds": round(time.time() - started, 1),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "counts": counts.__dict__,
            "cluster": "8 GPUs/node in 2 NVLink groups of 4; racks of 40; H100/A100/L40S racks 4:4:2; "
                       "~1.5% tainted, ~0.3% cordoned; ~45% of GPUs prefilled",
            "cases": {c.name: {"pods": c.members, "gpus_per_pod": c.gpus, "cpu_milli": c.cpu, "memory_gib":
                               c.mem_gib} for c in CASES},
            "distinct_shapes": N_SHAPES,
            "typical_pods": len(workload.typical),
        },
        "baseline": baseline,
        "results": results,
        "targets": targets,
    }
    write_json(args.out, doc)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

