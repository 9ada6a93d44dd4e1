"""Per-verb latency of `gangsched extender`, over HTTP on loopback, as kube-scheduler calls it.

    .venv/bin/python benchmarks/extender_latency.py                      # 1,000 and 5,000 nodes
    .venv/bin/python benchmarks/extender_latency.py --nodes 200 --gangs 5  # quick

The real server (`extender.server.serve`) over a real `Book` with `--nodes` nodes of 8 GPUs (no API server:
informer events are applied directly and bindings go to a function that accepts them, then the pod is applied
as bound, as the watch would show it). kube-scheduler's side is a keep-alive HTTP client sending what
HTTPExtender sends with `nodeCacheCapable: true`: every node name in each filter/prioritize call. Per gang of
`--gang` 1-GPU pods: filter for each member (the first one plans and reserves the whole gang: timed apart),
prioritize for each, then the binds (from threads, as kube-scheduler's binding goroutines: the barrier needs
them concurrent). Times are client round trips. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import gangsched  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from gangsched.core import Scheduler  # noqa: E402
from gangsched.extender.reservations import Book  # noqa: E402
from gangsched.extender.server import Extender, serve  # noqa: E402
from gangsched.live import informer as inf  # noqa: E402
from gangsched.live.cache import Cache  # noqa: E402
from gangsched.live.translate import POD_GROUP_LABEL  # noqa: E402
from gangsched.profile import load_profile  # noqa: E402
from gangsched.state import ClusterState  # noqa: E402

SCHED = "default-scheduler"


def node(i: int) -> dict:
    name = f"node-{i:05d}"
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(gang: str, i: int) -> dict:
    return {"metadata": {"name": f"{gang}-{i}", "namespace": "bench", "uid": f"{gang}-{i}",
                         "labels": {POD_GROUP_LABEL: gang}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"schedulerName": SCHED, "containers": [{"name": "c", "resources": {
                "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Pending"}}


class Client:
    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()

    def call(self, verb: str, body: dict) -> tuple[float, dict]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = json.dumps(body).encode()  # as kube-scheduler marshals it: part of each call's cost
        start = time.perf_counter()
        conn.request("POST", f"/{verb}", data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        out = json.loads(resp.read())
        took = time.perf_counter() - start
        assert resp.status == 200, (verb, resp.status, out)
        return took, out


def run(nodes: int, gangs: int, size: int) -> dict:
    state = ClusterState([])
    cache = Cache(state, SCHED)
    profile = load_profile("default")
    bound: list[dict] = []

    def post(req):
        bound.append({"namespace": req.namespace, "name": req.name, "node": req.node})
        return None

    book = Book(cache, Scheduler(state, profile), profile, post, bind_wait=30.0)
    with book.lock:
        book.apply("nodes", inf.SYNC, [node(i) for i in range(nodes)])
        for kind in ("pods", "podgroups", "priorityclasses"):
            book.apply(kind, inf.SYNC, [])
        book.tick()
    server = serve(Extender(book, request_timeout=30.0), "127.0.0.1", 0)
    client = Client(server.server_address[1])
    names = [f"node-{i:05d}" for i in range(nodes)]
    times: dict[str, list[float]] = {"filter (plans the gang)": [], "filter": [], "prioritize": [], "bind": []}
    for g in range(gangs):
        gang = f"g{g:04d}"
        members = [pod(gang, i) for i in range(size)]
        with book.lock:
            book.apply("podgroups", "ADDED", {"metadata": {"name": gang, "namespace": "bench", "uid": gang},
                                              "spec": {"minMember": size}})
            for m in members:
                book.apply("pods", "ADDED", m)
            book.tick()
        chosen = {}
        for i, m in enumerate(members):
            took, out = client.call("filter", {"Pod": m, "Nodes": None, "NodeNames": names})
            assert len(out["NodeNames"]) == 1, out["Error"] or out["FailedNodes"]
            chosen[m["metadata"]["name"]] = out["NodeNames"][0]
            times["filter (plans the gang)" if i == 0 else "filter"].append(took)
            took, _ = client.call("prioritize", {"Pod": m, "Nodes": None, "NodeNames": names})
            times["prioritize"].append(took)
        threads = []
        lock = threading.Lock()

        def bind(m: dict, chosen: dict[str, str], lock: threading.Lock) -> None:
            name = m["metadata"]["name"]
            took, out = client.call("bind", {"PodName": name, "PodNamespace": "bench", "PodUID": name,
                                             "Node": chosen[name]})
            assert out["Error"] == "", out
            with lock:
                times["bind"].append(took)

        for m in members:
            threads.append(threading.Thread(target=bind, args=(m, chosen, lock)))
            threads[-1].start()
        for t in threads:
            t.join()
        with book.lock:  # the watch shows them bound
            for m in members:
                obj = dict(m, spec=dict(m["spec"], nodeName=chosen[m["metadata"]["name"]]),
                           status={"phase": "Running"})
                book.apply("pods", "MODIFIED", obj)
            book.tick()
    server.shutdown()
    assert len(bound) == gangs * size
    return {verb: {"calls": len(ts), "p50_ms": 1000 * statistics.median(ts),
                   "p99_ms": 1000 * _quantile(ts, 0.99), "max_ms": 1000 * max(ts)} for verb, ts in times.items()}


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="1000,5000", help="comma-separated node counts")
    p.add_argument("--gangs", type=int, default=40, help="gangs per node count")
    p.add_argument("--gang", type=int, default=8, help="pods per gang")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "extender_latency.json"))
    args = p.parse_args(argv)
    results = {}
    print(f"gangsched extender: per-verb round trip over loopback HTTP, gangs of {args.gang} x 1 GPU, "
          f"nodeCacheCapable (every node name in each call)")
    print(f"{'nodes':>6} {'verb':<24} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for n in [int(x) for x in args.nodes.split(",")]:
        results[str(n)] = run(n, args.gangs, args.gang)
        for verb, r in results[str(n)].items():
            print(f"{n:>6} {verb:<24} {r['calls']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"gangs": args.gangs, "gang": args.gang, "profile": "default"},
                               "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
