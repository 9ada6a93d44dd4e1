"""The two gang cases that separate gang schedulers, per scheduler, on a real local control plane.

    .venv/bin/python benchmarks/gang_cases.py
    .venv/bin/python benchmarks/gang_cases.py --schedulers gangsched,kube-scheduler-gangs --settle 20

deadlock   6 GPUs (3 KWOK nodes x 2); two gangs of 4 one-GPU pods, created interleaved before the scheduler
           starts. Together they need 8: a scheduler that places pods one at a time can give each gang 3 and
           leave both stuck (scheduler-plugins#117). Whole = one gang has all 4, the other none.
hoarding   the same 6 GPUs; a gang of 8 one-GPU pods (it can never fit) is created first and the scheduler
           started; 3 s later 4 single one-GPU pods arrive. A scheduler that lets the gang's members hold GPUs
           while it waits starves the small pods (scheduler-plugins#713).
busy       the harder hoarding case: the same 6 GPUs, 3 of them taken by single pods bound first; then a gang of
           4 that fits the cluster but not its 3 free GPUs, and 3 s later 3 more single pods. A check of the
           gang against the cluster's capacity lets it through, and a scheduler whose gang members then hold
           GPUs while they wait for the rest starves the small pods (the coscheduler's Permit holds them
           `permitWaitingTimeSeconds`, 10 s in deploy/coscheduler-config.yaml). `small wait s`: from the small
           pods' creation until the last of them was bound.

Schedulers: gangsched (`gangsched run`, gangs by scheduler-plugins' label and PodGroup), kube-scheduler (stock,
the same objects: it does not know gangs), coscheduler (scheduler-plugins v0.34.7, Coscheduling, the same objects,
deploy/coscheduler-config.yaml), kube-scheduler-gangs (kube-scheduler >= 1.37 with the Workload API gates: the
gangs as native PodGroups, pods naming them in spec.schedulingGroup). Each run: a fresh namespace and nodes, the
scheduler started, then the pods watched until their bindings have not changed for `--settle` seconds (at most
`--timeout`). A pod counts as holding GPUs once bound (its node is KWOK's, so it "runs"; a coscheduler pod waiting
at Permit is not bound and holds only the scheduler's reservation, which the table cannot see). `last change s`:
when the bindings last changed, in seconds after the scheduler answered /healthz (0: all were made before the
first look); in the hoarding case the small pods come 3 s after that.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
try:  # run from a checkout without installing the package
    import gangsched  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from gangsched.devcluster import DevCluster, DevClusterError  # noqa: E402
from gangsched.devcluster.cluster import tmp_state_dir  # noqa: E402
from gangsched.devcluster.nodes import gpu_node_manifest  # noqa: E402
from gangsched.live.kube import ApiError, KubeClient  # noqa: E402
from gangsched.live.translate import POD_GROUP_LABEL  # noqa: E402
from gangsched.sim.report import load_average, table, write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from live_throughput import NATIVE_PG_API, PG_API, podgroup_manifest  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "gang_cases.json"
SCHEDULERS = ("gangsched", "kube-scheduler", "coscheduler", "kube-scheduler-gangs")
CASES = ("deadlock", "hoarding", "busy")
LABEL = "gangsched.io/case"


def pod(name: str, scheduler: str, ns: str, group: str | None, native: bool) -> dict[str, Any]:
    res = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {}},
        "spec": {"schedulerName": scheduler, "nodeSelector": {LABEL: ns}, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": res, "limits": res}}]}}
    if group and native:
        body["spec"]["schedulingGroup"] = {"podGroupName": group}
    elif group:
        body["metadata"]["labels"][POD_GROUP_LABEL] = group
    return body


class Run:
    """One (scheduler, case): its namespace, nodes and scheduler process."""

    def __init__(self, cluster: DevCluster, client: KubeClient, which: str, case: str, logs: Path):
        self.cluster, self.c, self.which, self.case = cluster, client, which, case
        self.ns = f"gc-{case}-{which}-{uuid.uuid4().hex[:5]}"[:63]
        self.native = which == "kube-scheduler-gangs"
        self.name = {"gangsched": "gangsched", "kube-scheduler": f"ks-{self.ns}", "coscheduler": "coscheduler",
                     "kube-scheduler-gangs": f"ksg-{self.ns}"}[which]
        self.logs = logs
        self.proc: Any = None
        self.nodes: list[str] = []
        self.seen: dict[str, float] = {}  # pod -> when first seen bound (monotonic), by settle

    def setup(self) -> None:
        self.c.request("POST", "/api/v1/namespaces", {"metadata": {"name": self.ns}})
        for i in range(3):
            node = gpu_node_manifest(f"{self.ns}-n{i}", gpus=2, cpu="32", memory="256Gi", labels={LABEL: self.ns})
            self.c.request("POST", "/api/v1/nodes", node)
            self.nodes.append(node["metadata"]["name"])
        deadline = time.monotonic() + 60
        while not all(self._ready(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise DevClusterError(f"{self.ns}: nodes not Ready after 60 s")
            time.sleep(0.2)

    def _ready(self, name: str) -> bool:
        conds = self.c.request("GET", f"/api/v1/nodes/{name}")["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def group(self, name: str, size: int) -> None:
        api = NATIVE_PG_API if self.native else PG_API
        self.c.request("POST", f"{api}/namespaces/{self.ns}/podgroups", podgroup_manifest(name, size, self.native))

    def pods(self, names: list[tuple[str, str | None]]) -> None:
        for name, group in names:
            self.c.request("POST", f"/api/v1/namespaces/{self.ns}/pods", pod(name, self.name, self.ns, group,
                                                                             self.native))

    def start(self) -> None:
        if self.which == "gangsched":
            log = (self.logs / f"{self.ns}.log").open("ab")
            self.proc = subprocess.Popen([sys.executable, "-m", "gangsched.cli", "run", "--kubeconfig",
                                          str(self.cluster.kubeconfig)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        elif self.which == "coscheduler":
            self.proc = self.cluster.start_coscheduler(
                name=self.ns, config=ROOT / "deploy" / "coscheduler-config.yaml", timeout=120)
        else:
            self.proc = self.cluster.start_kube_scheduler(self.name, timeout=120,
                                                          gangs=self.which == "kube-scheduler-gangs")

    def bound(self) -> dict[str, str]:
        items = self.c.request("GET", f"/api/v1/namespaces/{self.ns}/pods")["items"]
        return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in items if p["spec"].get("nodeName")}

    def settle(self, quiet: float, timeout: float) -> tuple[dict[str, str], float]:
        """The bindings once unchanged for `quiet` seconds; and when they last changed (seconds since start).
        `self.seen`: when each pod was first seen bound (monotonic)."""
        start = time.monotonic()
        last, changed = self.bound(), start
        self.seen = dict.fromkeys(last, start)
        while time.monotonic() - changed < quiet and time.monotonic() - start < timeout:
            time.sleep(0.5)
            now = self.bound()
            for name in now.keys() - self.seen.keys():
                self.seen[name] = time.monotonic()
            if now != last:
                last, changed = now, time.monotonic()
        return last, changed - start

    def stop(self) -> None:
        if self.proc is not None:
            if isinstance(self.proc, subprocess.Popen):
                self.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(20)
                if self.proc.poll() is None:
                    self.proc.kill()
            else:
                self.proc.stop()
        opts = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
        with contextlib.suppress(ApiError):
            self.c.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods", opts, query={"gracePeriodSeconds": 0})
        for n in self.nodes:
            with contextlib.suppress(ApiError):
                self.c.request("DELETE", f"/api/v1/nodes/{n}")


def deadlock(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    for g in ("a", "b"):
        run.group(g, 4)
    run.pods([(f"{g}-{i}", g) for i in range(4) for g in ("a", "b")])  # interleaved: a-0, b-0, a-1, ...
    run.start()
    bound, at = run.settle(args.settle, args.timeout)
    per = {g: sum(1 for p in bound if p.startswith(f"{g}-")) for g in ("a", "b")}
    whole = sorted(per.values()) == [0, 4]
    partial = [n for n in per.values() if 0 < n < 4]
    outcome = ("one gang whole, the other waits" if whole else "deadlock: both partial" if len(partial) == 2
               else f"one gang whole, the other partial: {partial[0]} GPUs held, unusable" if 4 in per.values()
               else f"other: {per}")
    return {"bound_a": per["a"], "bound_b": per["b"], "whole": whole, "outcome": outcome,
            "settled_s": round(at, 1)}


def hoarding(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    run.group("big", 8)
    run.pods([(f"big-{i}", "big") for i in range(8)])
    run.start()
    time.sleep(3.0)
    run.pods([(f"small-{i}", None) for i in range(4)])
    bound, at = run.settle(args.settle, args.timeout)
    big = sum(1 for p in bound if p.startswith("big-"))
    small = sum(1 for p in bound if p.startswith("small-"))
    outcome = ("small pods run, the gang holds nothing" if small == 4 and big == 0 else
               f"the gang holds {big} GPUs, {4 - small} small pods starve" if big else f"{small}/4 small bound")
    return {"big_bound": big, "small_bound": small, "outcome": outcome, "settled_s": round(at, 1)}


def busy(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    run.pods([(f"filler-{i}", None) for i in range(3)])
    run.start()
    deadline = time.monotonic() + args.timeout
    while len(run.bound()) < 3:
        if time.monotonic() > deadline:
            return {"outcome": "the 3 single pods taking half the GPUs were never bound"}
        time.sleep(0.2)
    run.group("big", 4)
    run.pods([(f"big-{i}", "big") for i in range(4)])
    time.sleep(3.0)
    small_at = time.monotonic()
    run.pods([(f"small-{i}", None) for i in range(3)])
    bound, at = run.settle(args.settle, args.timeout)
    big = sum(1 for p in bound if p.startswith("big-"))
    small = [p for p in bound if p.startswith("small-")]
    wait = round(max(run.seen[p] for p in small) - small_at, 1) if len(small) == 3 else None
    outcome = ("small pods run, the gang holds nothing" if len(small) == 3 and big == 0 else
               f"the gang holds {big} GPUs, {3 - len(small)} small pods starve" if big else
               f"{len(small)}/3 small bound")
    return {"big_bound": big, "small_bound": len(small), "small_wait_s": wait, "outcome": outcome,
            "settled_s": round(at, 1)}


CASE_RUNS = {"deadlock": deadlock, "hoarding": hoarding, "busy": busy}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schedulers", default=",".join(SCHEDULERS))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--settle", type=float, default=15.0, help="seconds without a binding change that end a run")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds at most per run")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    schedulers = [s for s in args.schedulers.split(",") if s]
    cases = [c for c in args.cases.split(",") if c]
    bad = [s for s in schedulers if s not in SCHEDULERS] + [c for c in cases if c not in CASES]
    if bad:
        print(f"gang_cases: unknown scheduler or case: {', '.join(bad)}", file=sys.stderr)
        return 2
    cluster = DevCluster(tmp_state_dir("gang-cases-")).up()
    logs = cluster.state_dir / "logs"
    client = KubeClient.load(str(cluster.kubeconfig), qps=0)
    rows, results = [], []
    try:
        for case in cases:
            for which in schedulers:
                run = Run(cluster, client, which, case, logs)
                try:
                    run.setup()
                    result = CASE_RUNS[case](run, args)
                except DevClusterError as e:
                    result = {"outcome": f"did not run: {str(e).splitlines()[0]}"}
                finally:
                    run.stop()
                result.update(case=case, scheduler=which, load_1m=(load_average() or [None])[0])
                results.append(result)
                detail = (f"a {result.get('bound_a')} / b {result.get('bound_b')}" if case == "deadlock"
                          else f"gang {result.get('big_bound')} / small {result.get('small_bound')}")
                rows.append([case, which, detail, result["outcome"], result.get("settled_s"),
                             result.get("small_wait_s", "")])
                print(f"{case:9s} {which:21s} {detail:18s} {result['outcome']}", flush=True)
        print()
        print(table(["case", "scheduler", "bound", "what it did", "last change s", "small wait s"], rows,
                    title=f"gang cases on Kubernetes {cluster.binaries.k8s_version} (6 GPUs; settle {args.settle} s)"))
        write_json(args.out, {"k8s": cluster.binaries.k8s_version, "settle_s": args.settle, "results": results})
        print(f"wrote {args.out}")
    finally:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
