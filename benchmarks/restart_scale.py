"""Restart at scale: how soon `gangsched run` schedules again on a large cluster, and what memory it takes.

    .venv/bin/python benchmarks/restart_scale.py                                   # 5,000 nodes, 100,000 pods
    .venv/bin/python benchmarks/restart_scale.py --nodes 500 --bound 10000 --pending 200   # a quick look

The cluster (a DevCluster in a temporary state dir; KWOK stopped once the nodes are Ready, so nothing but the
scheduler loads the API server): `--nodes` fake nodes of 8 GPUs, 64 cpu, 512Gi; `--bound` pods already bound
in PodGroups of 8, spread round-robin over the nodes (per node up to 6 one-GPU pods naming their device in
`gangsched.io/gpu-devices`, as gangsched binds them, the rest one-cpu pods), created with `spec.nodeName`; then
`--pending` one-GPU pods in PodGroups of 8 waiting for gangsched.

Cold start: the process is started and timed to its "informers synced" log line, to the first pending pod
bound, and to all of them bound; its peak RSS (VmHWM) is read before it stops. `--rounds` cold starts, each on
a fresh pending set, interleaved with those of `--baseline` (another checkout) if given; medians reported.
Handover: replica A (`--leader-elect`) leads, replica B waits as a standby with its informers synced; A gets
SIGTERM (it hands the lease over), then a fresh `--pending` set is created: the time from SIGTERM to B leading,
and from the first pod created to B's first and last binding. (A killed with -9 instead adds the lease's
15 s duration, after which B takes over the same way.)
Prints a table, writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import gangsched  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from live_throughput import PG_API, BindWatcher, add_nodes, node_name, parallel, podgroup_manifest, wait_nodes_ready  # noqa: E402
from scale_objects import GPU_PODS_PER_NODE, bound_pods, pending_pods  # noqa: E402

from gangsched.devcluster import DevCluster  # noqa: E402
from gangsched.devcluster.cluster import tmp_state_dir  # noqa: E402
from gangsched.live.kube import KubeClient  # noqa: E402
from gangsched.live.translate import POD_GROUP_LABEL  # noqa: E402
from gangsched.sim.report import cpus, load_average, table  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "restart_scale.json"
SPY_SECONDS = 40  # a cold start here binds its last pod within ~30 s


def namespace(client: KubeClient, name: str) -> str:
    client.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": name}}, limit=False)
    return name


def create(client: KubeClient, ns: str, pods: list[dict[str, Any]], workers: int = 32) -> float:
    t0 = time.monotonic()
    groups = sorted({p["metadata"]["labels"][POD_GROUP_LABEL] for p in pods})
    parallel(lambda g: client.request("POST", f"{PG_API}/namespaces/{ns}/podgroups", podgroup_manifest(g),
                                      limit=False), groups, workers)
    parallel(lambda p: client.request("POST", f"/api/v1/namespaces/{ns}/pods", p, limit=False), pods, workers)
    return time.monotonic() - t0



class Replica:
    def __init__(self, kubeconfig: Path, log: Path, *extra: str, src: Path = ROOT):
        self.log = log
        self.started = time.time()
        env = {**os.environ, "PYTHONPATH": str(src)} if src != ROOT else None  # its gangsched, not the installed one
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gangsched.cli", "run", "--kubeconfig", str(kubeconfig), "--no-events",
                 *extra], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=src, env=env)

    def logged_at(self, pattern: str) -> float | None:
        """Wall-clock time of the first log line matching `pattern` (its asctime), or None."""
        for line in self.log.read_text(errors="replace").splitlines():
            if re.search(pattern, line):
                stamp = line[:23]
                with contextlib.suppress(ValueError):
                    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return None

    def wait_logged(self, pattern: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.logged_at(pattern)
            if t is not None:
                return t
            if self.proc.poll() is not None:
                raise RuntimeError(f"gangsched exited {self.proc.returncode}; see {self.log}")
            time.sleep(0.1)
        raise RuntimeError(f"no {pattern!r} in {self.log} after {timeout:.0f} s")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def stream_floor(client: KubeClient) -> float:
    """Seconds for the API server to send every pod as a watch-list stream (the informer's list) to a reader that
    only looks for the stream's end, decoding nothing: what the API server alone takes of "synced"."""
    query = {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
             "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
    t0 = time.monotonic()
    resp = client.pool.request("GET", client.url("/api/v1/pods", query), headers=client._headers(),
                               preload_content=False, retries=False)
    try:
        tail = b""
        for chunk in resp.stream(amt=None, decode_content=False):
            if b"initial-events-end" in tail + chunk[:64] or b"initial-events-end" in chunk:
                return time.monotonic() - t0
            tail = chunk[-64:]
    finally:
        resp.release_conn()
    raise RuntimeError("the pod stream ended before its initial events did")


def wait_bound(w: BindWatcher, timeout: float) -> None:
    if not w.done.wait(timeout):
        raise RuntimeError(f"only {len(w.bound)} of {w.expected} pods bound after {timeout:.0f} s")


def cold_start(client: KubeClient, kubeconfig: Path, logs: Path, ns: str, pending: int,
               timeout: float, src: Path, tag: str, spy: Path | None = None) -> dict[str, Any]:
    """`spy`: sample the process with py-spy (every thread, only while it holds the GIL) for its first
    SPY_SECONDS, as collapsed stacks into that file."""
    watcher = BindWatcher(client, ns, pending).start()  # listed before the scheduler starts
    t0_mono = time.monotonic()
    r = Replica(kubeconfig, logs / f"cold-{tag}.log", src=src)
    sampler = None
    if spy is not None:
        spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")  # in the venv's bin
        sampler = subprocess.Popen([spy_bin, "record", "--pid", str(r.proc.pid),
                                    "--duration", str(SPY_SECONDS), "--rate", "100", "--format", "raw", "--gil",
                                    "--threads", "--nonblocking", "--output", str(spy)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        synced = r.wait_logged("informers synced", timeout) - r.started
        wait_bound(watcher, timeout)
        rss = r.peak_rss_mb()
        if sampler is not None:
            sampler.wait(SPY_SECONDS + 30)
    finally:
        watcher.stop.set()
        r.stop()
    binds = sorted(watcher.bound.values())
    return {"synced_s": round(synced, 2), "first_bind_s": round(binds[0] - t0_mono, 2),
            "all_bound_s": round(binds[-1] - t0_mono, 2), "peak_rss_mb": round(rss)}


def handover(client: KubeClient, kubeconfig: Path, logs: Path, ns: str, pending: int, timeout: float,
             lease_ns: str) -> dict[str, Any]:
    args = ("--leader-elect", "--lease-namespace", lease_ns, "--lease-name", f"restart-{uuid.uuid4().hex[:6]}")
    a = Replica(kubeconfig, logs / "replica-a.log", *args)
    b: Replica | None = None
    try:
        a.wait_logged("leading: scheduling", timeout)
        b = Replica(kubeconfig, logs / "replica-b.log", *args)
        b.wait_logged("informers synced", timeout)
        watcher = BindWatcher(client, ns, pending)
        t_term = time.time()
        a.stop()
        leading = b.wait_logged("leading: scheduling", timeout) - t_term
        watcher.start()
        t_create = time.monotonic()
        create(client, ns, pending_pods("h", pending))
        try:
            wait_bound(watcher, timeout)
        finally:
            watcher.stop.set()
        binds = sorted(watcher.bound.values())
        rss = b.peak_rss_mb()
    finally:
        a.stop()
        if b is not None:
            b.stop()
    return {"sigterm_to_leading_s": round(leading, 2), "first_bind_after_create_s": round(binds[0] - t_create, 2),
            "all_bound_after_create_s": round(binds[-1] - t_create, 2), "standby_peak_rss_mb": round(rss)}


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--bound", type=int, default=100_000, help="pods already bound, in PodGroups of 8")
    p.add_argument("--pending", type=int, default=1000, help="pods waiting, in PodGroups of 8")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--rounds", type=int, default=3, help="cold starts per checkout (median kept)")
    p.add_argument("--baseline", type=Path, help="another gangsched checkout, cold-started in the same rounds")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--py-spy", type=Path, metavar="STACKS", help="one more cold start, sampled by py-spy "
                   "(pip install py-spy), its collapsed stacks written here")
    args = p.parse_args(argv)
    # pending sets: one per cold start (and the sampled one), one for the handover
    sets = args.rounds * (2 if args.baseline else 1) + 1 + bool(args.py_spy)
    if args.bound > args.nodes * 20 or args.pending * sets > args.nodes * (8 - GPU_PODS_PER_NODE):
        print(f"restart_scale: error: at most 20 --bound pods per node, and {8 - GPU_PODS_PER_NODE} free GPUs per "
              f"node for the {sets} sets of --pending pods", file=sys.stderr)
        return 2
    run = uuid.uuid4().hex[:6]
    logs = Path(tempfile.mkdtemp(prefix="restart-scale-logs-"))
    load_before = load_average()
    cluster = DevCluster(tmp_state_dir("restart-scale-")).up()
    try:
        client = KubeClient.load(str(cluster.kubeconfig), qps=0, burst=1, pool_size=40)
        print(f"run {run}: logs in {logs}", flush=True)
        t = time.monotonic()
        add_nodes(client, run, 0, args.nodes)
        wait_nodes_ready(client, run, args.nodes)
        cluster.processes["kwok"].stop()  # nodes stay Ready; KWOK would run every bound pod: load we do not measure
        setup = {"nodes_s": round(time.monotonic() - t, 1)}
        print(f"{args.nodes} nodes Ready in {setup['nodes_s']} s", flush=True)
        setup["bound_pods_s"] = round(create(client, namespace(client, f"bound-{run}"),
                                             bound_pods([node_name(run, i) for i in range(args.nodes)], args.bound)), 1)
        print(f"{args.bound} bound pods created in {setup['bound_pods_s']} s", flush=True)
        checkouts = {"gangsched": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
        tries: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
        floors: list[float] = []
        for k in range(args.rounds):  # interleaved, the order flipped each round: drifts hit each alike
            for name, src in list(checkouts.items())[::(-1) ** k]:
                ns = namespace(client, f"pending-{run}-{name}-{k}")
                create(client, ns, pending_pods("p", args.pending))
                tries[name].append(cold_start(client, cluster.kubeconfig, logs, ns, args.pending, args.timeout,
                                              src, f"{name}-{k}"))
                print(f"cold start {name} #{k}: {tries[name][-1]}", flush=True)
            # after the round's cold starts: the API server takes seconds to settle after a stream this size
            floors.append(round(stream_floor(client), 2))
            print(f"the API server streams every pod in {floors[-1]} s", flush=True)
            time.sleep(5)
        if args.py_spy:  # one more cold start of this checkout, sampled: not in the figures
            ns = namespace(client, f"pending-{run}-spy")
            create(client, ns, pending_pods("p", args.pending))
            spied = cold_start(client, cluster.kubeconfig, logs, ns, args.pending, args.timeout, ROOT, "spy",
                               spy=args.py_spy)
            print(f"cold start under py-spy (stacks in {args.py_spy}): {spied}", flush=True)
        colds = {name: _median(rows) for name, rows in tries.items()}
        hand = handover(client, cluster.kubeconfig, logs, namespace(client, f"handover-{run}"), args.pending,
                        args.timeout, "default")
        print(f"handover: {hand}", flush=True)
    finally:
        cluster.down()
    rows = [{"checkout": name, "nodes": args.nodes, "bound_pods": args.bound, "pending_pods": args.pending, **c,
             "rounds": tries[name], **(hand if name == "gangsched" else {})} for name, c in colds.items()]
    print(table(["checkout", "nodes", "bound pods", "pending", "synced s", "1st bind s", "all bound s",
                 "peak RSS MB", "handover s", "1st bind after s"],
                [[r["checkout"], args.nodes, args.bound, args.pending, r["synced_s"], r["first_bind_s"],
                  r["all_bound_s"], r["peak_rss_mb"], r.get("sigterm_to_leading_s", ""),
                  r.get("first_bind_after_create_s", "")] for r in rows],
                title=f"gangsched restart at scale (median of {args.rounds} cold starts, seconds from process "
                      "start; handover: SIGTERM to the standby leading, then a fresh set created)"))
    print(f"the API server alone streams every pod in {statistics.median(floors)} s (median; "
          f"{min(floors)}-{max(floors)})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpus": cpus(), "load_before": load_before, "load_after": load_average(), "setup": setup,
            "api_server_stream_s": {"median": statistics.median(floors), "rounds": floors},
            "baseline": str(args.baseline) if args.baseline else None}
    args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
