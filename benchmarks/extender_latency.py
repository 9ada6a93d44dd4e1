"""Per-verb latency of `gangsched extender` over loopback HTTP, as kube-scheduler calls it: plan ahead vs on filter.

    .venv/bin/python benchmarks/extender_latency.py                      # 1,000 and 5,000 nodes
    .venv/bin/python benchmarks/extender_latency.py --nodes 200 --gangs 6  # quick

The real server (`extender.server.serve`) over a real `Book` with `--nodes` nodes of 8 GPUs, in a process of
its own as `gangsched extender` is (no API server: the benchmark sends it the informer events over a pipe,
bindings go to a function that accepts them, then the pod is applied as bound, as the watch would show it).
kube-scheduler's side, in this process, is a lean keep-alive HTTP client sending what HTTPExtender sends with
`nodeCacheCapable: true`: every node name in each filter/prioritize call.

Both modes in the same run, on the same book, alternating gang by gang: `ahead` (the default of `gangsched
extender`: after the gang's events and tick, the planner, `Book.plan_step`, places it outside any HTTP call,
timed on its own as "planner") and `filter` (`--no-plan-ahead`: the first member's filter plans the gang).
Per gang of `--gang` 1-GPU pods: filter for each member (the first one timed apart), prioritize for each,
then the binds: all members but one from threads (as kube-scheduler's binding goroutines), which wait at the
gang's barrier, then, once they all wait, the last member's, which opens it (what the extender adds to
kube-scheduler's own binding POST, timed apart). Times are client round trips. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import socket
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
from gangsched.live.cache import Cache, GangKey  # noqa: E402
from gangsched.live.translate import POD_GROUP_LABEL  # noqa: E402
from gangsched.profile import load_profile  # noqa: E402
from gangsched.state import ClusterState  # noqa: E402

SCHED = "default-scheduler"
MODES = ("ahead", "filter")
PLANNER = "planner, per gang (no HTTP call)"
VERBS = ("filter, first member", "filter, other members", "prioritize", "bind, waits at the barrier",
         "bind, opens the barrier")


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
    """kube-scheduler's side: one keep-alive HTTP/1.1 connection per thread, the request written in one send and
    the answer read by its Content-Length. Lean on purpose: http.client's header parsing costs more than the
    extender's answer, and kube-scheduler's Go client costs next to nothing."""

    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()

    def call(self, verb: str, body: dict) -> tuple[float, dict]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local.buf = conn.makefile("rb")
        data = json.dumps(body).encode()  # as kube-scheduler marshals it: not part of the round trip
        head = (f"POST /{verb} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        start = time.perf_counter()
        conn.sendall(head + data)
        buf = self.local.buf
        status = int(buf.readline().split()[1])
        length = 0
        while (line := buf.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = buf.read(length)
        took = time.perf_counter() - start
        out = json.loads(payload)
        assert status == 200, (verb, status, out)
        return took, out


class Side:
    """The extender's process: a real `Book` behind the real server, driven over a pipe by the benchmark (its
    informer events, the planner's steps, what the watch shows). It runs apart from the client, as `gangsched
    extender` runs apart from kube-scheduler, with the collector paced and frozen as `gangsched extender` does."""

    def __init__(self, conn, nodes: int):
        from gangsched.live import collector

        collector.pace()
        self.conn, self.bound = conn, []
        state = ClusterState([])
        cache = Cache(state, SCHED)
        profile = load_profile("default")
        self.book = book = Book(cache, Scheduler(state, profile), profile, self._post, bind_wait=30.0)
        with book.lock:
            book.apply("nodes", inf.SYNC, [node(i) for i in range(nodes)])
            for kind in ("pods", "podgroups", "priorityclasses"):
                book.apply(kind, inf.SYNC, [])
            book.tick()
        gc.freeze()  # the books filled (collector.freeze_when in `gangsched extender`)
        self.server = serve(Extender(book, request_timeout=30.0), "127.0.0.1", 0)

    def _post(self, req) -> None:
        self.bound.append({"namespace": req.namespace, "name": req.name, "node": req.node})

    def gang(self, gang: str, size: int, ahead: bool) -> tuple[bool, float | None]:
        """The gang's PodGroup and members arrive; the planner steps as `run.pump` does, one gang per hold of
        the lock. Whether it is reserved before any call, and the planner's time for it."""
        book = self.book
        book.plan_ahead = ahead
        with book.lock:
            book.apply("podgroups", "ADDED", {"metadata": {"name": gang, "namespace": "bench", "uid": gang},
                                              "spec": {"minMember": size}})
            for i in range(size):
                book.apply("pods", "ADDED", pod(gang, i))
            book.tick()
        planner = None
        while True:
            with book.lock:
                start = time.perf_counter()
                planned = book.stats["planned_ahead"]
                more = book.plan_step()
                took = time.perf_counter() - start
                if book.stats["planned_ahead"] > planned:
                    planner = took
            if not more:
                break
        return GangKey("bench", gang, True) in book.reservations, planner

    def waiting(self, gang: str) -> int:
        with self.book.lock:
            return len(self.book.reservations[GangKey("bench", gang, True)].waiting)

    def watched(self, gang: str, chosen: dict[str, str]) -> None:
        """The watch shows the gang bound."""
        with self.book.lock:
            for i in range(len(chosen)):
                m = pod(gang, i)
                book_obj = dict(m, spec=dict(m["spec"], nodeName=chosen[m["metadata"]["name"]]),
                                status={"phase": "Running"})
                self.book.apply("pods", "MODIFIED", book_obj)
            self.book.tick()

    def totals(self) -> tuple[int, int, int]:
        return len(self.bound), self.book.stats["gangs_planned"], self.book.stats["planned_ahead"]

    def serve_pipe(self) -> None:
        self.conn.send(self.server.server_address[1])
        while True:
            call = self.conn.recv()
            if call is None:
                self.server.shutdown()
                return
            name, args = call
            self.conn.send(getattr(self, name)(*args))


def _side(conn, nodes: int) -> None:
    Side(conn, nodes).serve_pipe()


class Remote:
    """The benchmark's handle on the extender's process: a method call over the pipe."""

    def __init__(self, nodes: int):
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of ours in its heap
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_side, args=(child, nodes), daemon=True)
        self.proc.start()
        self.port = self.conn.recv()
        self.lock = threading.Lock()

    def __getattr__(self, name: str):
        def call(*args):
            with self.lock:
                self.conn.send((name, args))
                return self.conn.recv()
        return call

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(30)


def run(nodes: int, gangs: int, size: int) -> dict:
    side = Remote(nodes)
    client = Client(side.port)
    names = [f"node-{i:05d}" for i in range(nodes)]
    times: dict[str, dict[str, list[float]]] = {m: {v: [] for v in (PLANNER, *VERBS)} for m in MODES}
    times["filter"].pop(PLANNER)
    lock = threading.Lock()
    for g in range(gangs):
        mode = MODES[g % 2]  # alternating: both modes see the same cluster, fill and machine load
        t = times[mode]
        gang = f"g{g:04d}"
        members = [pod(gang, i) for i in range(size)]
        reserved, planner = side.gang(gang, size, mode == "ahead")
        assert reserved == (mode == "ahead"), (mode, gang)
        if planner is not None:
            t[PLANNER].append(planner)
        chosen = {}
        for i, m in enumerate(members):
            took, out = client.call("filter", {"Pod": m, "Nodes": None, "NodeNames": names})
            assert len(out["NodeNames"]) == 1, out["Error"] or out["FailedNodes"]
            chosen[m["metadata"]["name"]] = out["NodeNames"][0]
            t["filter, first member" if i == 0 else "filter, other members"].append(took)
            took, _ = client.call("prioritize", {"Pod": m, "Nodes": None, "NodeNames": names})
            t["prioritize"].append(took)

        def bind(m: dict, verb: str, t: dict[str, list[float]], chosen: dict[str, str]) -> None:
            name = m["metadata"]["name"]
            took, out = client.call("bind", {"PodName": name, "PodNamespace": "bench", "PodUID": name,
                                             "Node": chosen[name]})
            assert out["Error"] == "", out
            with lock:
                t[verb].append(took)

        threads = [threading.Thread(target=bind, args=(m, "bind, waits at the barrier", t, chosen))
                   for m in members[:-1]]
        for th in threads:
            th.start()
        while side.waiting(gang) < size - 1:  # every other member waits at the barrier: the last one opens it
            time.sleep(0.0005)
        bind(members[-1], "bind, opens the barrier", t, chosen)
        for th in threads:
            th.join()
        side.watched(gang, chosen)
    bound, planned, ahead = side.totals()
    side.close()
    assert bound == gangs * size
    assert planned == gangs and ahead == (gangs + 1) // 2
    return {mode: {verb: {"calls": len(ts), "p50_ms": 1000 * statistics.median(ts),
                          "p99_ms": 1000 * _quantile(ts, 0.99), "max_ms": 1000 * max(ts)}
                   for verb, ts in verbs.items() if ts}
            for mode, verbs in times.items()}


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="1000,5000", help="comma-separated node counts")
    p.add_argument("--gangs", type=int, default=100, help="gangs per node count, half in each mode")
    p.add_argument("--gang", type=int, default=8, help="pods per gang")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "extender_latency.json"))
    args = p.parse_args(argv)
    results = {}
    print(f"gangsched extender: per-verb round trip over loopback HTTP, gangs of {args.gang} x 1 GPU, "
          f"nodeCacheCapable (every node name in each call); ahead = planned before kube-scheduler asks, "
          f"filter = --no-plan-ahead")
    print(f"{'nodes':>6} {'mode':<6} {'verb':<33} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for n in [int(x) for x in args.nodes.split(",")]:
        results[str(n)] = run(n, args.gangs, args.gang)
        for verb in (PLANNER, *VERBS):
            for mode in MODES:
                r = results[str(n)][mode].get(verb)
                if r is not None:
                    print(f"{n:>6} {mode:<6} {verb:<33} {r['calls']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                          f"{r['max_ms']:>8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"gangs": args.gangs, "gang": args.gang, "profile": "default",
                                        "modes": {"ahead": "plan ahead (default)", "filter": "--no-plan-ahead"}},
                               "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
