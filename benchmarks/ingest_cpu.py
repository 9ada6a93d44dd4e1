"""What the live books cost to fill after a restart, in CPU seconds, beside another checkout: decoding a list of
100,000 pods, applying it (with the nodes and PodGroups) to the cache, and the first scheduling cycle, which
accounts every bound pod on the new node state and places the pending gangs.

    .venv/bin/python benchmarks/ingest_cpu.py                               # this checkout
    .venv/bin/python benchmarks/ingest_cpu.py --baseline /tmp/base --rounds 3

The objects are those of benchmarks/restart_scale.py (5,000 nodes of 8 GPUs; 100,000 bound pods in PodGroups
of 8, 30,000 of them naming their GPU; 1,000 pending pods in 125 gangs), built in memory: no API server, so the
figures are the scheduler's own work. Each checkout runs in its own process (its code on PYTHONPATH), rounds
interleaved; CPU time (process_time), which other load on the machine disturbs less than wall time. The
decode is timed with the stdlib json and with orjson in the same process. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ingest_cpu.json"
STAGES = ("decode_json_s", "decode_orjson_s", "apply_s", "first_cycle_s")


def measure(nodes: int, bound: int, pending: int) -> dict[str, float]:
    """One round in this process, with whatever gangsched is first on sys.path."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "tests"))
    import orjson
    from livekit import Live
    from scale_objects import bound_pods, pending_pods

    from gangsched.devcluster.nodes import gpu_node_manifest
    from gangsched.live.translate import POD_GROUP_LABEL

    names = [f"n{i:05d}" for i in range(nodes)]
    node_objs = [gpu_node_manifest(name, gpus=8, cpu="64", memory="512Gi", rack=f"rack-{i // 40}")
                 for i, name in enumerate(names)]
    for n in node_objs:
        n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    pods = bound_pods(names, bound) + pending_pods("p", pending)
    for i, p in enumerate(pods):
        p["metadata"].update(namespace="ns", uid=f"u{i}", creationTimestamp="2026-12-01T00:00:00Z",
                             resourceVersion=str(i), managedFields=[{"manager": "bench", "operation": "Update",
                                                                     "fieldsV1": {"f:spec": {}}}])
        p["status"] = {"phase": "Pending"}
    groups = sorted({p["metadata"]["labels"][POD_GROUP_LABEL] for p in pods})
    pgs = [{"metadata": {"name": g, "namespace": "ns", "uid": g, "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": {"minMember": 8}} for g in groups]
    blob = orjson.dumps({"items": pods})
    try:  # the collector's pace `gangsched run` sets, where the checkout has one
        from gangsched.live import collector
        collector.pace()
    except ImportError:
        pass
    out: dict[str, float] = {}
    t = time.process_time()
    json.loads(blob)
    out["decode_json_s"] = time.process_time() - t
    t = time.process_time()
    items = orjson.loads(blob)["items"]
    out["decode_orjson_s"] = time.process_time() - t
    for o in items:  # as the informers hand them over (both checkouts alike)
        o["metadata"].pop("managedFields", None)
    live = Live()
    t = time.process_time()
    live.sched.handle("nodes", "SYNC", node_objs)
    live.sched.handle("podgroups", "SYNC", pgs)
    live.sched.handle("pods", "SYNC", items)
    out["apply_s"] = time.process_time() - t
    t = time.process_time()
    live.cycle()
    out["first_cycle_s"] = time.process_time() - t
    if len(live.binds.queued) != pending:
        raise SystemExit(f"the first cycle bound {len(live.binds.queued)} of {pending} pending pods")
    return out


def run_checkout(src: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--one", "--nodes", str(args.nodes), "--bound", str(args.bound),
           "--pending", str(args.pending)]
    done = subprocess.run(cmd, env=env, cwd=src, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{src}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--bound", type=int, default=100_000)
    p.add_argument("--pending", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another gangsched checkout, measured in the same rounds")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one round, JSON on stdout
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.nodes, args.bound, args.pending)))
        return 0
    sys.path.insert(0, str(ROOT))
    from gangsched.sim.report import cpus, load_average, table

    checkouts = {"gangsched": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    tries: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    load_before = load_average()
    for k in range(args.rounds):
        for name, src in checkouts.items():
            tries[name].append(run_checkout(src, args))
            print(f"{name} #{k}: " + ", ".join(f"{s} {v:.2f}" for s, v in tries[name][-1].items()), flush=True)
    med = {name: {s: statistics.median(r[s] for r in rows) for s in STAGES} for name, rows in tries.items()}
    rows = [[name, *(round(m[s], 2) for s in STAGES), round(m["apply_s"] + m["first_cycle_s"], 2)]
            for name, m in med.items()]
    print(table(["checkout", "decode json s", "decode orjson s", "apply s", "first cycle s", "apply+cycle s"], rows,
                title=f"Filling the books: {args.bound:,} bound + {args.pending:,} pending pods, {args.nodes:,} nodes "
                      f"(CPU seconds, median of {args.rounds})"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": {"cpus": cpus(), "load_before": load_before, "load_after": load_average(),
                                             "baseline": str(args.baseline) if args.baseline else None,
                                             "nodes": args.nodes, "bound": args.bound, "pending": args.pending},
                                    "median": med, "rounds": tries}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
