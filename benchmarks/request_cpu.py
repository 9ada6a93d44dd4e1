"""What one API request costs the scheduler's process in CPU: `KubeClient.request` (its own kept-alive
http.client connections) against the same request through urllib3's pool manager, as it was sent before,
on a real kube-apiserver.

    .venv/bin/python benchmarks/request_cpu.py                      # 500 bindings per try, 3 rounds
    .venv/bin/python benchmarks/request_cpu.py --kubeconfig <file>  # against a running cluster

The request is the binder's: a Binding POST of a pod (made beforehand, not timed) to a node, with a device
annotation, its reply decoded. One thread, one request at a time, so the CPU time (process_time) is the
client's own; wall time includes the API server's. Rounds interleave the two paths; medians with min-max.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gangsched.devcluster import DevCluster  # noqa: E402
from gangsched.devcluster.cluster import tmp_state_dir  # noqa: E402
from gangsched.live.binder import BindRequest, binding_body  # noqa: E402
from gangsched.live.kube import KubeClient  # noqa: E402
from gangsched.sim.report import load_average, table  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "request_cpu.json"


def via_client(client: KubeClient) -> Callable[[str, dict], None]:
    def send(path: str, body: dict) -> None:
        client.request("POST", path, body)
    return send


def one_try(client: KubeClient, ns: str, prefix: str, n: int, send: Callable[[str, dict], None]) -> dict:
    for i in range(n):
        client.request("POST", f"/api/v1/namespaces/{ns}/pods", {
            "metadata": {"name": f"{prefix}{i}"},
            "spec": {"schedulerName": "none", "containers": [{"name": "c", "image": "x"}]}})
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        req = BindRequest(ns, f"{prefix}{i}", "", "n0", (i % 8,), None)
        send(f"/api/v1/namespaces/{ns}/pods/{req.name}/binding", binding_body(req))
    return {"cpu_us": (time.process_time() - cpu) / n * 1e6, "wall_us": (time.perf_counter() - wall) / n * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=500, help="bindings per try")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kubeconfig", help="a running cluster (else a DevCluster of our own)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    cluster = None if args.kubeconfig else DevCluster(tmp_state_dir("request-cpu-")).up()
    try:
        client = KubeClient.load(args.kubeconfig or str(cluster.kubeconfig), qps=0)  # type: ignore[union-attr]
        if client.connections is None:
            raise SystemExit("this cluster's configuration needs urllib3 (a proxy or a TLS server name)")
        ns = f"request-cpu-{uuid.uuid4().hex[:6]}"
        client.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        legacy = KubeClient.load(args.kubeconfig or str(cluster.kubeconfig), qps=0)  # type: ignore[union-attr]
        legacy.connections = None  # the same client on its urllib3 path, as every request went before
        paths = {"KubeClient.request (http.client)": via_client(client), "urllib3 pool manager": via_client(legacy)}
        load_before = load_average()
        tries: dict[str, list[dict]] = {name: [] for name in paths}
        for k in range(args.rounds):
            for j, (name, send) in enumerate(paths.items()):
                tries[name].append(one_try(client, ns, f"r{k}p{j}-", args.requests, send))
                print(f"#{k} {name}: cpu {tries[name][-1]['cpu_us']:.0f} us, wall {tries[name][-1]['wall_us']:.0f} us",
                      flush=True)
        client.request("DELETE", f"/api/v1/namespaces/{ns}")
    finally:
        if cluster is not None:
            cluster.down()
    med = {name: {m: statistics.median(t[m] for t in rows) for m in ("cpu_us", "wall_us")}
           for name, rows in tries.items()}
    base = med["urllib3 pool manager"]["cpu_us"]
    rows = [[name, round(m["cpu_us"]), f"{min(t['cpu_us'] for t in tries[name]):.0f}-"
             f"{max(t['cpu_us'] for t in tries[name]):.0f}", round(m["wall_us"]), round(m["cpu_us"] / base, 2)]
            for name, m in med.items()]
    print(table(["path", "CPU us/request", "min-max", "wall us/request", "CPU vs urllib3"], rows,
                title=f"Binding POSTs, one thread, {args.requests} per try, {args.rounds} rounds, "
                      f"load average before {load_before}"))
    args.out.write_text(json.dumps({"meta": {"requests": args.requests, "rounds": args.rounds,
                                             "load_before": load_before, "date": time.strftime("%Y-%m-%d")},
                                    "median": med, "tries": tries}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
