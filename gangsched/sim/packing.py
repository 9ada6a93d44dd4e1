"""Packing mode: FGD's published experiment (ATC'23), reproduced through gangsched's own core.

Protocol (see ../shared/data/README.md and hkust-adsl/kubernetes-scheduler-simulator): the GPU nodes of the
Alibaba 2023 trace; the trace's pods shuffled with the seed, then pods drawn uniformly with replacement and
appended until arrived GPU demand would pass 130 % of capacity; nobody leaves; a pod that fits nowhere is
dropped. After every pod, allocated / fragmented / idle GPU milli are recorded against the arrived GPU
milli, then averaged per 1 % step of arrived load exactly as their analysis scripts do.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from gangsched.core import Scheduler
from gangsched.frag import Workload, node_fragmentation
from gangsched.framework import Diagnosis
from gangsched.model import MILLI_PER_GPU, Node, Pod
from gangsched.profile import load_profile
from gangsched.sim import data_dir
from gangsched.sim.alibaba import load_nodes, load_pods
from gangsched.sim.cliargs import names, positive, seeds
from gangsched.sim.progress import progress
from gangsched.sim.report import table, write_csv, write_json
from gangsched.state import ClusterState

PUBLISHED_POLICIES = {"paper-random": "01-Random", "paper-dotprod": "02-DotProd",
                      "paper-gpu-clustering": "03-GpuClustering", "paper-gpu-packing": "04-GpuPacking",
                      "paper-bestfit": "05-BestFit", "paper-fgd": "06-FGD"}
DEFAULT_POLICIES = [*PUBLISHED_POLICIES, "default"]
VARIANTS = ["default", "cpu050", "cpu100", "cpu200", "cpu250", "gpushare40", "gpushare60", "gpushare80",
            "gpushare100", "multigpu20", "multigpu30", "multigpu40"]
REPORT_LOADS = (90, 95, 100, 110, 130)
STEPS = np.arange(131)


@dataclass
class Curves:
    """Per 1 % step of arrived load (index 0..130): the paper's three metrics, NaN where never reached."""

    allocation: np.ndarray  # allocated GPU milli, % of capacity
    frag_amount: np.ndarray  # fragmented GPU milli, % of capacity
    frag_ratio: np.ndarray  # fragmented GPU milli, % of idle GPU milli
    placed: int
    failed: int

    @property
    def unallocated(self) -> np.ndarray:
        return 100.0 - self.allocation


def tuned_stream(pods: list[Pod], seed: int, tune: float, capacity_milli: int) -> list[Pod]:
    """The trace shuffled, then resampled up (or trimmed down) to `tune` x capacity of GPU demand.

    Like FGD's `tuneUpPods`, the stop test compares the demand plus the drawn pod's *per-device* milli, so a
    multi-GPU draw can overshoot by a little; the first draw that would pass the target ends the stream."""
    rng = np.random.default_rng(seed)
    stream = [pods[i] for i in rng.permutation(len(pods))]
    demand = sum(p.demand.gpu_total_milli for p in stream)
    target = tune * capacity_milli
    if demand > target:
        while demand > target:
            demand -= stream.pop(int(rng.integers(len(stream)))).demand.gpu_total_milli
        return stream
    while True:
        pod = pods[int(rng.integers(len(pods)))]
        per_device = pod.demand.gpu_milli if pod.demand.gpu_count else 0
        if demand + per_device > target:
            return stream
        demand += pod.demand.gpu_total_milli
        stream.append(Pod(f"{pod.name}-tuned-{len(stream)}", pod.demand))


def replay(nodes: list[Node], stream: list[Pod], workload: Workload, policy: str, seed: int
           ) -> tuple[np.ndarray, int]:
    """Place every pod in order; returns per pod [arrived, allocated, fragmented] GPU milli after it, and
    how many pods fit nowhere (dropped, as in the paper).

    Nodes are put in a seeded random order first: their simulator prefixes node names with a random
    number, and its tie-break keeps the first top-scoring node in that order."""
    order = np.random.default_rng(seed).permutation(len(nodes))
    state = ClusterState([nodes[i] for i in order])
    sched = Scheduler(state, load_profile(policy), seed=seed, workload=workload)
    frag = node_fragmentation(state, workload)
    frag_total = float(frag.sum())
    out = np.zeros((len(stream), 3))
    arrived = allocated = failed = 0
    for i, pod in enumerate(stream):
        arrived += pod.demand.gpu_total_milli
        placed = sched.place_pod(pod)
        if isinstance(placed, Diagnosis):
            failed += 1
        else:
            allocated += pod.demand.gpu_total_milli
            n = np.array([placed.node])
            new = node_fragmentation(state, workload, n)[0]
            frag_total += new - frag[n[0]]
            frag[n[0]] = new
        out[i] = arrived, allocated, frag_total
    return out, failed


def discretise(records: np.ndarray, n_gpus: int, failed: int = 0) -> Curves:
    """FGD's merge_*_discrete.py: rows grouped by arrived load rounded to an integer %, averaged; a step
    with no row takes the rows within +-1 %."""
    arrived, used, frag = records.T
    idle = n_gpus * MILLI_PER_GPU - used
    arrive_pct = np.round(arrived / n_gpus / 10)
    alloc_pct = np.round(used / n_gpus / 10, 2)
    frag_pct = 100 * frag / MILLI_PER_GPU / n_gpus
    ratio_pct = np.divide(100 * frag, idle, out=np.zeros_like(frag), where=idle > 0)
    curves = np.full((3, len(STEPS)), np.nan)
    for a in STEPS:
        sel = arrive_pct == a
        if not sel.any():
            sel = (arrive_pct >= a - 1) & (arrive_pct <= a + 1)
        if sel.any():
            curves[:, a] = alloc_pct[sel].mean(), frag_pct[sel].mean(), ratio_pct[sel].mean()
    return Curves(*curves, placed=len(records) - failed, failed=failed)


@dataclass(frozen=True)
class Trace:
    nodes: list[Node]
    pods: list[Pod]
    workload: Workload
    skipped: list[str]  # messages of the malformed rows left out (with skip_bad_rows)


def pod_list(data: Path, variant: str) -> Path:
    return data / "alibaba-gpu-v2023" / f"openb_pod_list_{variant}.csv"


@cache
def _trace(data: str, variant: str, skip_bad_rows: bool = False) -> Trace:
    root = Path(data) / "alibaba-gpu-v2023"
    nodes = load_nodes(root / "openb_node_list_gpu_node.csv", skip_bad_rows=skip_bad_rows)
    models = {d.model for n in nodes.items for d in n.gpus}
    pods = load_pods(pod_list(Path(data), variant), known_models=models, skip_bad_rows=skip_bad_rows)
    return Trace(nodes.items, pods.items, Workload.from_demands(p.demand for p in pods.items),
                 nodes.skipped + pods.skipped)


def run_one(data: str, variant: str, policy: str, seed: int, tune: float, skip_bad_rows: bool = False) -> Curves:
    trace = _trace(data, variant, skip_bad_rows)
    n_gpus = sum(len(n.gpus) for n in trace.nodes)
    stream = tuned_stream(trace.pods, seed, tune, n_gpus * MILLI_PER_GPU)
    records, failed = replay(trace.nodes, stream, trace.workload, policy, seed)
    return discretise(records, n_gpus, failed)


def published_path(data: Path) -> Path:
    return data / "fgd-published" / "analysis_allo_discrete.csv"


def published(data: Path, variant: str) -> dict[str, np.ndarray]:
    """Median over seeds of FGD's published unallocated GPU % per policy, per arrived-load step (none if the
    data folder does not carry FGD's results: a trace of one's own has no published figures)."""
    import csv

    out: dict[str, list[np.ndarray]] = {}
    if not published_path(data).is_file():
        return {}
    with published_path(data).open() as f:
        for row in csv.DictReader(f):
            if row["workload"] == f"openb_pod_list_{variant}":
                curve = np.array([float(row[str(a)]) if row.get(str(a)) else np.nan for a in STEPS])
                out.setdefault(row["sc_policy"], []).append(100.0 - curve)
    return {k: np.nanmedian(np.vstack(v), axis=0) for k, v in out.items()}


# ---- command line -------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("FGD's packing experiment: the trace's pods arrive one by one until 130 % of the GPU capacity "
                     "is asked (--tune), each placed by every policy; unallocated GPU % per arrived load, beside "
                     "FGD's published figures. Traces come from <data>/alibaba-gpu-v2023/.")
    p.add_argument("--workload", type=names, default=["default"],
                   help=f"trace variant(s), comma-separated, or 'all' ({', '.join(VARIANTS)}); any "
                        "<data>/alibaba-gpu-v2023/openb_pod_list_<name>.csv is workload <name>")
    p.add_argument("--policies", type=names, default=DEFAULT_POLICIES,
                   help="profiles (shipped names or YAML paths), comma-separated (default: "
                        f"{','.join(DEFAULT_POLICIES)})")
    p.add_argument("--seeds", type=seeds, default=seeds("42-51"),
                   help="seeds >= 0, e.g. 42-51 or 42,43 (default 42-51)")
    p.add_argument("--tune", type=positive(float), default=1.3,
                   help="arrived GPU demand as a multiple of capacity, > 0 (default 1.3)")
    p.add_argument("--jobs", type=positive(int), default=os.cpu_count() or 1,
                   help="parallel runs, >= 1 (default: the CPU count)")
    p.add_argument("--data", default=None,
                   help="trace directory (default $GANGSCHED_DATA, else ../shared/data); it must exist")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="leave out malformed trace rows (counted and reported) instead of stopping")
    p.add_argument("--out", default="results/packing", help="directory for JSON, CSV and PNG results")
    p.set_defaults(run=main)


def _task(args: tuple[str, str, str, int, float, bool]) -> tuple[str, str, int, Curves]:
    data, variant, policy, seed, tune, skip = args
    return variant, policy, seed, run_one(data, variant, policy, seed, tune, skip)


def _check_inputs(args: argparse.Namespace, data: Path, variants: list[str]) -> None:
    """Every workload, trace row and profile, before the first run: a typo must not wait for the runs before it."""
    root = data / "alibaba-gpu-v2023"
    for variant in variants:
        if not pod_list(data, variant).is_file():
            found = sorted(f.name[len("openb_pod_list_"):-4] for f in root.glob("openb_pod_list_*.csv"))
            raise FileNotFoundError(f"--workload {variant}: no {pod_list(data, variant)} (any "
                                    f"openb_pod_list_<name>.csv in {root} is a workload; found: "
                                    f"{', '.join(found) or 'none'})")
    for variant in variants:
        skipped = _trace(str(data), variant, args.skip_bad_rows).skipped
        if skipped:
            print(f"workload {variant}: skipped {len(skipped)} malformed row(s): " + "; ".join(skipped[:3])
                  + (f"; ... and {len(skipped) - 3} more" if len(skipped) > 3 else ""), file=sys.stderr)
    for policy in args.policies:
        load_profile(policy)
    if not published_path(data).is_file():
        print(f"no {published_path(data)}: the published columns stay empty", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    import matplotlib  # noqa: F401  (the sim extra, for the plots at the end: fail now, not after the runs)

    data = data_dir(args.data)
    print(f"trace data: {data}", flush=True)
    variants = VARIANTS if args.workload == ["all"] else args.workload
    _check_inputs(args, data, variants)
    policies, seed_list = args.policies, args.seeds
    tasks = [(str(data), v, p, s, args.tune, args.skip_bad_rows) for v in variants for p in policies for s in seed_list]
    runs: dict[tuple[str, str], list[Curves]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, progress(len(tasks), "packing runs", "run") as bar:
        for variant, policy, _, curves in pool.map(_task, tasks):
            runs.setdefault((variant, policy), []).append(curves)
            bar.update(1)
    out = Path(args.out)
    seeds_text = ",".join(map(str, seed_list)) if len(seed_list) < 4 else f"{seed_list[0]}..{seed_list[-1]}"
    summary = {}
    for variant in variants:
        paper = published(data, variant)
        rows, medians = [], {}
        for policy in policies:
            curves = runs[(variant, policy)]
            with warnings.catch_warnings():  # a load step no seed reached stays NaN, by design
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(np.vstack([c.unallocated for c in curves]), axis=0)
                frag = np.nanmedian(np.vstack([c.frag_amount for c in curves]), axis=0)
            medians[policy] = med
            ref = paper.get(PUBLISHED_POLICIES.get(policy, ""))
            fgd = paper.get("06-FGD")
            rows.append([policy, *med[list(REPORT_LOADS)], frag[100],
                         ref[100] if ref is not None else float("nan"),
                         med[100] - ref[100] if ref is not None else float("nan"),
                         fgd[100] if fgd is not None else float("nan"),
                         int(np.median([c.failed for c in curves]))])
            summary.setdefault(variant, {})[policy] = {
                "seeds": seed_list, "median_unallocated_pct": med.tolist(), "median_frag_amount_pct": frag.tolist(),
                "per_seed_unallocated_pct": [c.unallocated.tolist() for c in curves],
                "per_seed_failed_pods": [c.failed for c in curves],
                "published_median_unallocated_pct": ref.tolist() if ref is not None else None}
        headers = ["policy", *(f"unalloc@{a}%" for a in REPORT_LOADS), "frag@100%", "published@100%",
                   "diff@100%", "published FGD@100%", "failed pods"]
        print(table(headers, rows, title=f"\nworkload {variant}: median unallocated GPU % over seeds {seeds_text} "
                                         f"(ours), FGD's published median beside it"))
        write_csv(out / f"packing_{variant}.csv", ["arrived_load_pct", *policies],
                  [[a, *(medians[p][a] for p in policies)] for a in STEPS])
        _plot(out / f"packing_{variant}.png", variant, medians, paper)
    write_json(out / "packing.json", {"tune": args.tune, "data": str(data), "skip_bad_rows": args.skip_bad_rows,
                                      "skipped_bad_rows": {v: len(_trace(str(data), v, args.skip_bad_rows).skipped)
                                                           for v in variants},
                                      "workloads": summary})
    print(f"\nresults in {out}/ (packing.json, packing_<workload>.csv, packing_<workload>.png)")
    return 0


def _plot(path: Path, variant: str, ours: dict[str, np.ndarray], paper: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (policy, curve) in enumerate(ours.items()):
        color = f"C{i}"
        ax.plot(STEPS, 100 - curve, color=color, label=f"{policy} (gangsched)")
        ref = paper.get(PUBLISHED_POLICIES.get(policy, ""))
        if ref is not None:
            ax.plot(STEPS, 100 - ref, color=color, linestyle="--", alpha=0.6, label=f"{policy} (published)")
    ax.set(xlabel="arrived GPU load (% of capacity)", ylabel="allocated GPU (% of capacity)",
           title=f"GPU allocation vs arrived load, Alibaba 2023 '{variant}'", xlim=(60, 130), ylim=(60, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
