"""Churn soak: pods and gangs created and deleted continuously under `gangsched run`; every minute its books are
compared with a rebuild from the API server, and its RSS and the gang latency p99 recorded.

    .venv/bin/python benchmarks/churn_soak.py                          # 1,000 nodes, 10 minutes at 200 pods/s
    .venv/bin/python benchmarks/churn_soak.py --minutes 2 --nodes 200 --rate 50   # a quick look

Cluster: a DevCluster in a temporary state dir (or `--kubeconfig`), `--nodes` fake nodes of 8 GPUs, 64 cpu,
512Gi (KWOK stopped once they are Ready, as in live_throughput.py). gangsched runs as `gangsched run --qps Q
--burst B --bind-workers W --no-events --health-port P`.

Churn: units are created at `--rate` pods/s (half the pods in gangs of 8 with their PodGroup, half single
pods; each 1 GPU), by 24 threads (16 more delete). A unit lives `--lifetime` seconds after its last pod is seen
bound, then is deleted (pods with gracePeriodSeconds=0, then its PodGroup). Gang latency = from the unit's last
object created to its last pod seen bound (a watch on the namespace, local monotonic clock). `created` counts
pods whose creation completed, `backlog` the pods asked for but not yet created at the minute's end (the
driver falling behind the rate), `waiting` those created and not yet bound (gangsched falling behind).

Every minute of churn (after `--warmup` seconds, not counted, in which the population fills up to its steady
state of ~rate x lifetime pods): churn pauses, the pods waiting are let bind (`--check-timeout`), then the books
from /debug/books (pod -> node, devices, read on the scheduling thread) are compared with those of a fresh
gangsched.live.cache.Cache fed one list of nodes, PodGroups and pods (as tests/livekit.py `rebuilt()` does),
until equal or `--check-timeout`; then churn resumes (the pause is not part of the minute). Recorded per minute:
pods created and bound, gang and single-pod latency p50/p99, gangsched's RSS (VmRSS) and the load average; the
report compares the first and the last minute (target: RSS and gang p99 within 10 %).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:  # run from a checkout without installing the package
    import gangsched  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from live_throughput import (  # noqa: E402
    PG_API,
    BindWatcher,
    add_nodes,
    node_name,
    pod_manifest,
    podgroup_manifest,
    wait_nodes_ready,
)

from gangsched.devcluster import DevCluster, delete_nodes  # noqa: E402
from gangsched.devcluster.cluster import tmp_state_dir  # noqa: E402
from gangsched.live.cache import Cache  # noqa: E402
from gangsched.live.informer import SYNC  # noqa: E402
from gangsched.live.kube import ApiError, KubeClient  # noqa: E402
from gangsched.live.run import books  # noqa: E402
from gangsched.sim.report import cpus, load_average, table, write_json  # noqa: E402
from gangsched.state import ClusterState  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "churn_soak.json"
GANG = 8
DELETE = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}


@dataclass
class Unit:
    name: str
    pods: list[str]
    gang: bool
    created: float = 0.0  # when its last object was created (0: not yet)
    bound: float = 0.0  # when its last pod was seen bound
    delete_at: float = 0.0


# ---- the books ---------------------------------------------------------------------------------------------------
def rebuild_books(client: KubeClient, scheduler_name: str = "gangsched") -> dict[str, Any]:
    """The books a gangsched starting now would build: a fresh Cache fed one list of each kind."""
    cache = Cache(ClusterState([]), scheduler_name)
    cache.apply("nodes", SYNC, client.list_all("/api/v1/nodes")[0])
    with contextlib.suppress(ApiError):
        cache.apply("podgroups", SYNC, client.list_all(f"{PG_API}/podgroups")[0])
    cache.apply("pods", SYNC, client.list_all("/api/v1/pods")[0])
    cache.refresh_nodes()
    return json.loads(json.dumps(books(cache)))


def diff_books(live: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """What differs between two /debug/books snapshots (devices only where neither side guessed them)."""
    out = []
    if live["assumed"]:
        out.append(f"{len(live['assumed'])} bindings in flight, e.g. {live['assumed'][0]}")
    guessed = set(live["guessed"]) | set(fresh["guessed"])
    a, b = live["pods"], fresh["pods"]
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x is None or y is None or x[0] != y[0] or (key not in guessed and x[1] != y[1]):
            out.append(f"{key}: books {x}, API server {y}")
    return out


def get_json(url: str, timeout: float = 30.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def histograms(metrics_url: str, names: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    """Cumulative (le, count) buckets of each histogram `names` in gangsched's /metrics, summed over labels."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=30) as reply:
        text = reply.read().decode()
    out: dict[str, dict[float, float]] = {n: {} for n in names}
    for fam in text_string_to_metric_families(text):
        if fam.name in out:
            for sample in fam.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("result", "bound") == "bound":
                    le = float(sample.labels["le"])
                    out[fam.name][le] = out[fam.name].get(le, 0.0) + sample.value
    return {n: sorted(b.items()) for n, b in out.items()}


def quantile(now: list[tuple[float, float]], before: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of the observations between two scrapes, interpolated within a bucket (PromQL's
    histogram_quantile); NaN if none."""
    prev = dict(before)
    delta = [(le, c - prev.get(le, 0.0)) for le, c in now]
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return float("nan")
    rank, lo, below = q * total, 0.0, 0.0
    for le, count in delta:
        if count >= rank:
            return lo if le == float("inf") else lo + (le - lo) * (rank - below) / max(count - below, 1e-9)
        lo, below = le, count
    return lo


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- churn -------------------------------------------------------------------------------------------------------
class Churn:
    def __init__(self, client: KubeClient, ns: str, run: str, watcher: BindWatcher, rate: float, lifetime: float):
        self.client, self.ns, self.run, self.watcher = client, ns, run, watcher
        self.rate, self.lifetime = rate, lifetime
        # apart, so deletions never queue behind creations
        self.creators = ThreadPoolExecutor(max_workers=24, thread_name_prefix="create")
        self.deleters = ThreadPoolExecutor(max_workers=16, thread_name_prefix="delete")
        self.inflight: set[Future] = set()
        self.waiting: dict[str, Unit] = {}  # created (or being created), not all bound
        self.running: list[Unit] = []  # all bound, deleted at delete_at
        self.seq = 0
        self.created = self.bound = self.deleted = 0  # pods asked for, bound, deleted since the last reset
        self.made = 0  # pods whose creation completed (all of their unit's objects), since the last reset
        self.gang_lat: list[float] = []  # seconds from created to all bound, per unit settled
        self.single_lat: list[float] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def _submit(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> None:
        fut = pool.submit(fn, *args)
        with self.lock:
            self.inflight.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future) -> None:
        with self.lock:
            self.inflight.discard(fut)
        if fut.exception() is not None and len(self.errors) < 20:
            self.errors.append(repr(fut.exception()))

    def next_unit(self) -> Unit:
        """Half the pods in gangs of 8, half single: one gang per 8 singles."""
        self.seq += 1
        if self.seq % 9 == 0:
            name = f"g{self.seq:07d}"
            return Unit(name, [f"{name}-{m}" for m in range(GANG)], True)
        return Unit(f"s{self.seq:07d}", [f"s{self.seq:07d}"], False)

    def _create(self, u: Unit) -> None:
        base = f"/api/v1/namespaces/{self.ns}/pods"
        if u.gang:
            self.client.request("POST", f"{PG_API}/namespaces/{self.ns}/podgroups", podgroup_manifest(u.name),
                                limit=False)
        for p in u.pods:
            self.client.request("POST", base, pod_manifest(p, "gangsched", self.run, u.name if u.gang else None),
                                limit=False)
        u.created = time.monotonic()
        with self.lock:
            self.made += len(u.pods)

    def _delete(self, u: Unit) -> None:
        base = f"/api/v1/namespaces/{self.ns}"
        for p in u.pods:
            with contextlib.suppress(ApiError):
                self.client.request("DELETE", f"{base}/pods/{p}", DELETE, limit=False)
        if u.gang:
            with contextlib.suppress(ApiError):
                self.client.request("DELETE", f"{PG_API}/namespaces/{self.ns}/podgroups/{u.name}", DELETE,
                                    limit=False)

    def create(self, pods: int) -> int:
        """Units of at least `pods` pods in all; returns how many pods."""
        made = 0
        while made < pods:
            u = self.next_unit()
            self.waiting[u.name] = u
            self._submit(self.creators, self._create, u)
            made += len(u.pods)
        return made

    def settle(self, now: float) -> None:
        """Units whose pods are all bound move to running, their latency recorded."""
        for name, u in list(self.waiting.items()):
            if u.created and all(p in self.watcher.bound for p in u.pods):
                u.bound = max(self.watcher.bound[p] for p in u.pods)
                u.delete_at = now + self.lifetime
                del self.waiting[name]
                self.running.append(u)
                self.bound += len(u.pods)
                (self.gang_lat if u.gang else self.single_lat).append(u.bound - u.created)

    def expire(self, now: float) -> None:
        gone = [u for u in self.running if u.delete_at <= now]
        self.running = [u for u in self.running if u.delete_at > now]
        for u in gone:
            self._submit(self.deleters, self._delete, u)
            self.deleted += len(u.pods)

    def reset(self) -> None:
        """Start a new measured stretch: counters to zero."""
        self.created = self.bound = self.deleted = 0
        with self.lock:
            self.made = 0
        self.gang_lat, self.single_lat = [], []

    def population(self) -> int:
        return sum(len(u.pods) for u in self.running)

    def churn_for(self, seconds: float, proc: subprocess.Popen[bytes]) -> float:
        """Create at the rate, settle and delete for `seconds`; returns the seconds it took."""
        t0 = last = time.monotonic()
        while last - t0 < seconds:
            if proc.poll() is not None:
                raise RuntimeError(f"gangsched exited ({proc.returncode})")
            time.sleep(0.05)
            last = time.monotonic()
            want = int((last - t0) * self.rate) - self.created
            if want > 0:
                self.created += self.create(want)
            self.settle(last)
            self.expire(last)
        return last - t0

    def pause(self, seconds: float) -> None:
        """A check paused the churn: the running units' lifetimes are moved on by its length."""
        for u in self.running:
            u.delete_at += seconds

    def idle(self) -> bool:
        with self.lock:
            return not self.inflight


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def soak(args: argparse.Namespace, client: KubeClient, kubeconfig: Path, run: str, log_dir: Path) -> dict[str, Any]:
    ns = f"soak-{run}"
    client.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}}, limit=False)
    port = free_port()
    log = log_dir / "gangsched.log"
    cmd = [sys.executable, "-m", "gangsched.cli", "run", "--kubeconfig", str(kubeconfig), "--qps", str(args.qps),
           "--burst", str(args.burst), "--bind-workers", str(args.bind_workers), "--no-events",
           "--health-port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/debug/books"
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    hists = ("gangsched_gang_scheduling_duration_seconds", "gangsched_binding_duration_seconds")
    minutes: list[dict[str, Any]] = []
    churn: Churn | None = None
    watcher = BindWatcher(client, ns, 1 << 40).start()
    try:
        deadline = time.monotonic() + 120
        while True:  # up, with every node in its books
            with contextlib.suppress(OSError, ValueError):
                if get_json(url, timeout=5)["nodes"] >= args.nodes:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gangsched did not come up; see {log}")
            time.sleep(0.5)
        churn = Churn(client, ns, run, watcher, args.rate, args.lifetime)
        print(f"soak {run}: {args.minutes} min at {args.rate:g} pods/s after {args.warmup:g} s warm-up; "
              f"gangsched pid {proc.pid}, logs in {log_dir}", flush=True)
        segments = ([args.warmup] if args.warmup > 0 else []) + [60.0] * args.minutes
        scraped = histograms(metrics_url, hists)
        for i, length in enumerate(segments):
            churn.reset()
            churn_s = churn.churn_for(length, proc)
            # gangsched's own view since the last scrape (the previous check's stragglers included)
            before, scraped = scraped, histograms(metrics_url, hists)
            sched_p99 = quantile(scraped[hists[0]], before[hists[0]], 0.99)
            bind_p99 = quantile(scraped[hists[1]], before[hists[1]], 0.99)
            if args.warmup > 0 and i == 0:
                print(f"warm-up done: {churn.population()} pods alive", flush=True)
                continue
            rss = rss_mb(proc.pid)
            alive = churn.population()
            # at the minute's end: pods asked for but not created yet (the driver's backlog), created not bound
            backlog = sum(len(u.pods) for u in list(churn.waiting.values()) if not u.created)
            waiting = sum(len(u.pods) for u in list(churn.waiting.values()) if u.created)
            check = check_books(churn, client, url, args.check_timeout)
            row = {"minute": len(minutes) + 1, "churn_s": round(churn_s, 1), "pods_asked": churn.created,
                   "pods_created": churn.made,
                   "pods_bound": churn.bound, "pods_deleted": churn.deleted, "gangs": len(churn.gang_lat),
                   "gang_p50_s": pct(churn.gang_lat, 50), "gang_p99_s": pct(churn.gang_lat, 99),
                   "single_p50_s": pct(churn.single_lat, 50), "single_p99_s": pct(churn.single_lat, 99),
                   "sched_gang_p99_s": sched_p99, "bind_p99_ms": bind_p99 * 1e3,
                   "rss_mb": rss, "population": alive, "waiting": waiting, "backlog": backlog,
                   "load_1m": (load_average() or [float("nan")])[0], **check}
            minutes.append(row)
            print(f"minute {row['minute']:>2}: created {churn.made} (backlog {backlog}) bound {churn.bound} "
                  f"(waiting {waiting}) deleted {churn.deleted}  "
                  f"gang p99 {row['gang_p99_s']:.3f} s (gangsched's {sched_p99:.2f} s, binding "
                  f"{bind_p99 * 1e3:.0f} ms)  "
                  f"single p99 {row['single_p99_s']:.3f} s  RSS {rss:.0f} MB  "
                  f"books {'equal' if check['books_equal'] else 'DIFFER'} ({check['books_pods']} pods, "
                  f"{check['check_s']:.1f} s)  load {row['load_1m']}", flush=True)
    finally:
        watcher.stop.set()
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        if proc.poll() is None:
            proc.kill()
        if churn is not None:
            churn.creators.shutdown(wait=True)
            churn.deleters.shutdown(wait=True)
    return {"namespace": ns, "minutes": minutes, "errors": churn.errors if churn else [], "log": str(log)}


def check_books(churn: Churn, client: KubeClient, url: str, timeout: float) -> dict[str, Any]:
    """Pause the churn, let the waiting pods bind, then compare the books with a rebuild until equal."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        churn.settle(time.monotonic())  # the stragglers' latencies count in the minute that made them
        if churn.idle() and not churn.waiting:
            break
        time.sleep(0.1)
    quiet_s = time.monotonic() - t0
    tries, diff, snap = 0, ["not compared"], {"pods": {}}
    while True:
        tries += 1
        snap = get_json(url)
        diff = diff_books(snap, rebuild_books(client))
        if not diff or time.monotonic() > deadline + timeout:
            break
        time.sleep(0.5)
    churn.pause(time.monotonic() - t0)
    return {"books_equal": not diff, "books_pods": len(snap["pods"]), "books_diff": diff[:10],
            "books_diff_count": len(diff), "books_tries": tries, "quiet_s": round(quiet_s, 2),
            "check_s": time.monotonic() - t0, "waiting_at_check": len(churn.waiting)}


# ---- driver ------------------------------------------------------------------------------------------------------
def summary(minutes: list[dict[str, Any]]) -> dict[str, Any]:
    if not minutes:
        return {}
    first, last = minutes[0], minutes[-1]

    def ratio(k: str) -> float:
        return last[k] / first[k] if first[k] else float("nan")

    out = {"books_equal_every_check": all(m["books_equal"] for m in minutes),
           "rss_last_over_first": ratio("rss_mb"), "gang_p99_last_over_first": ratio("gang_p99_s"),
           "pods_per_s": float(np.mean([m["pods_bound"] / m["churn_s"] for m in minutes if m["churn_s"]]))}
    out["goal_rss_flat"] = bool(abs(out["rss_last_over_first"] - 1) <= 0.10)
    out["goal_gang_p99_flat"] = bool(abs(out["gang_p99_last_over_first"] - 1) <= 0.10)
    return out


def report(minutes: list[dict[str, Any]], summ: dict[str, Any], title: str) -> str:
    headers = ["minute", "created", "backlog", "bound", "waiting", "deleted", "bound/s", "alive", "gangs", "gang p50 s",
               "gang p99 s", "single p99 s", "gangsched's p99 s", "bind p99 ms", "RSS MB", "books", "pods compared",
               "check s", "load"]
    rows = [[m["minute"], m["pods_created"], m["backlog"], m["pods_bound"], m["waiting"], m["pods_deleted"],
             m["pods_bound"] / m["churn_s"] if m["churn_s"] else float("nan"), m["population"], m["gangs"],
             m["gang_p50_s"], m["gang_p99_s"], m["single_p99_s"], m["sched_gang_p99_s"], m["bind_p99_ms"], m["rss_mb"],
             "equal" if m["books_equal"] else f"DIFFER ({m['books_diff_count']})", m["books_pods"], m["check_s"],
             m["load_1m"]] for m in minutes]
    lines = [table(headers, rows, title=title)]
    if summ:
        lines.append(f"books equal at every check: {summ['books_equal_every_check']}; last/first minute: RSS "
                     f"{summ['rss_last_over_first']:.3f} ({'flat' if summ['goal_rss_flat'] else 'NOT within 10 %'}),"
                     f" gang p99 {summ['gang_p99_last_over_first']:.3f} "
                     f"({'flat' if summ['goal_gang_p99_flat'] else 'NOT within 10 %'})")
    for m in minutes:
        for d in m["books_diff"]:
            lines.append(f"  minute {m['minute']}: {d}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--minutes", type=int, default=10, help="measured minutes of churn (a check after each)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds of churn before the first minute")
    p.add_argument("--rate", type=float, default=200.0, help="pods created (and, in steady state, deleted) per s")
    p.add_argument("--lifetime", type=float, default=20.0, help="seconds a unit lives once all its pods are bound")
    p.add_argument("--qps", type=float, default=5000.0, help="gangsched's client QPS")
    p.add_argument("--burst", type=int, default=10000)
    p.add_argument("--bind-workers", type=int, default=16)
    p.add_argument("--check-timeout", type=float, default=30.0,
                   help="seconds for the waiting pods to bind, and again for the books to match, at each check")
    p.add_argument("--kubeconfig", type=Path, help="a running cluster (default: a DevCluster in a temp dir)")
    p.add_argument("--out", type=Path, default=OUT, help="JSON output path (the table goes beside, .txt)")
    args = p.parse_args(argv)
    if args.minutes < 1 or args.rate <= 0 or args.nodes < 1:
        p.error("--minutes, --rate and --nodes must be positive")
    if args.rate * args.lifetime > args.nodes * 8 * 0.8:
        p.error(f"--rate x --lifetime ({args.rate * args.lifetime:.0f} pods alive) must stay under 80 % of the "
                f"{args.nodes * 8} GPUs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = uuid.uuid4().hex[:6]
    log_dir = Path(tempfile.mkdtemp(prefix="churn-soak-logs-"))
    started, load_before = time.time(), load_average()
    own = args.kubeconfig is None
    cluster: DevCluster | None = None
    admin: KubeClient | None = None
    result: dict[str, Any] = {}
    k8s_version = ""  # the apiserver's /version
    try:
        if own:
            cluster = DevCluster(tmp_state_dir("churn-soak-")).up()
            kubeconfig = cluster.kubeconfig
        else:
            kubeconfig = args.kubeconfig
        admin = KubeClient.load(str(kubeconfig), qps=0, burst=1, pool_size=40)
        k8s_version = str(admin.request("GET", "/version", limit=False).get("gitVersion", ""))
        add_nodes(admin, run, 0, args.nodes)
        wait_nodes_ready(admin, run, args.nodes)
        if own and cluster is not None:
            cluster.processes["kwok"].stop()  # nothing but the churn and the scheduler loads the API server
        result = soak(args, admin, kubeconfig, run, log_dir)
    finally:
        if own and cluster is not None:
            cluster.down()
        elif admin is not None:
            with contextlib.suppress(Exception):
                delete_nodes(admin.api_client, [node_name(run, i) for i in range(args.nodes)])
    minutes = result.get("minutes", [])
    summ = summary(minutes)
    text = report(minutes, summ, title=f"Churn soak: gangsched run, {args.nodes} nodes, {args.rate:g} pods/s "
                                       f"created and deleted (half in gangs of 8), lifetime {args.lifetime:g} s")
    print()
    print(text)
    doc = {"meta": {"python": platform.python_version(), "machine": platform.machine(), "cpus": cpus(),
                    "kube_apiserver": k8s_version,
                    "seconds": round(time.time() - started, 1), "load_average_before": load_before,
                    "load_average_after": load_average(), "run": run, "nodes": args.nodes, "rate": args.rate,
                    "lifetime_s": args.lifetime, "minutes": args.minutes, "warmup_s": args.warmup, "qps": args.qps,
                    "burst": args.burst, "bind_workers": args.bind_workers, "logs": str(log_dir),
                    "errors": result.get("errors", [])},
           "minutes": minutes, "summary": summ}
    write_json(args.out, doc)
    args.out.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.txt')}")
    return 0 if minutes and summ["books_equal_every_check"] else 1


if __name__ == "__main__":
    sys.exit(main())
