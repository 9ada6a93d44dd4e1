"""`gangsched status` (and the kubectl plugin `kubectl gangsched`): what waits, why, where it is in line, what
runs, and which pod holds which GPU, read from the API server.

The API objects go through the live scheduler's own books (`live.cache.Cache`, fed one list of each kind, as a
scheduler starting now would build them) and its queue (`profile.new_queue().pop_order`), so the positions and
the GPU map are the scheduler's, not a re-derivation. The reason a gang waits is the latest FailedScheduling
Event the scheduler posted on its PodGroup (or on its pods).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from gangsched.frag import Workload, node_fragmentation
from gangsched.live.cache import Cache
from gangsched.live.informer import SYNC
from gangsched.live.translate import parse_time
from gangsched.model import MILLI_PER_GPU
from gangsched.profile import load_profile
from gangsched.state import ClusterState


@dataclass
class Waiting:
    gang: str  # namespace/name
    kind: str  # "PodGroup" or "Pod" (a lone pod is a gang of one)
    position: int | None  # 1 = tried first at the next pass; None: not in the queue (see reason)
    priority: int
    age_seconds: float
    gpus: float  # asked by its waiting members
    min_member: int
    members: int  # pods of the gang that exist (waiting + holding a node)
    bound: int
    reason: str  # the latest FailedScheduling message, else why it is not queued


@dataclass
class Running:
    gang: str
    kind: str
    priority: int
    age_seconds: float
    pods: int
    min_member: int
    gpus: float
    nodes: list[str]


@dataclass
class NodeGpus:
    node: str
    model: str
    gpus: int
    free: float
    fragmentation: float  # GPUs of idle capacity the typical pods could not use (FGD)
    devices: list[dict[str, Any]] = field(default_factory=list)  # {"index", "pods": [ns/name...], "free_milli"}
    unhealthy: list[int] = field(default_factory=list)


@dataclass
class Report:
    namespace: str | None
    waiting: list[Waiting]
    running: list[Running]
    nodes: list[NodeGpus]
    fragmentation_ratio: float


# ---- from API objects to the report ---------------------------------------------------------------------------
def books(nodes: list[dict], podgroups: list[dict], classes: list[dict], pods: list[dict],
          scheduler_name: str) -> Cache:
    cache = Cache(ClusterState([]), scheduler_name)
    cache.apply("nodes", SYNC, nodes)
    cache.apply("podgroups", SYNC, podgroups)
    cache.apply("priorityclasses", SYNC, classes)
    cache.apply("pods", SYNC, pods)
    cache.refresh_nodes()
    return cache


def latest_reasons(events: Iterable[dict]) -> dict[tuple[str, str, str], str]:
    """(kind, namespace, name) -> the message of its latest FailedScheduling Event."""
    latest: dict[tuple[str, str, str], tuple[float, str]] = {}
    for e in events:
        if e.get("reason") != "FailedScheduling":
            continue
        obj = e.get("involvedObject") or {}
        key = (obj.get("kind", ""), obj.get("namespace", ""), obj.get("name", ""))
        when = max(parse_time(e.get("lastTimestamp")), parse_time(e.get("eventTime")),
                   parse_time((e.get("series") or {}).get("lastObservedTime")),
                   parse_time((e.get("metadata") or {}).get("creationTimestamp")))
        if key not in latest or when >= latest[key][0]:
            latest[key] = (when, e.get("message", ""))
    return {k: m for k, (_, m) in latest.items()}


def build_report(cache: Cache, events: Iterable[dict], profile: str = "default", now: float | None = None,
                 namespace: str | None = None) -> Report:
    now = time.time() if now is None else now
    reasons = latest_reasons(events)
    prof = load_profile(profile)
    queue = prof.new_queue()
    views = {}
    for gkey, gang in cache.gangs.items():
        if gang.pending and (namespace is None or gkey.namespace == namespace):
            view = cache.view(gkey)
            if view is not None:
                views[gkey] = view
                if view.info is not None and not view.problem:
                    queue.add(view.info)
    position = {g.key: i for i, g in enumerate(queue.pop_order(now), start=1)}
    waiting = []
    for gkey, view in views.items():
        kind = "PodGroup" if gkey.group else "Pod"
        reason = reasons.get((kind, gkey.namespace, gkey.name)) or next(
            (reasons[("Pod", gkey.namespace, p.obj["metadata"]["name"])] for p in view.waiting
             if ("Pod", gkey.namespace, p.obj["metadata"]["name"]) in reasons), "")
        if view.problem or view.info is None:
            reason = view.problem or reason
        group = cache.groups.get(gkey.ref) if gkey.group else None
        min_member = group.min_member if group is not None and not isinstance(group, str) else 1
        held = cache.gangs[gkey].held
        waiting.append(Waiting(
            gkey.ref, kind, position.get(gkey), _priority(cache, view.waiting, held),
            round(now - min(p.creation for p in view.waiting), 1),
            sum(p.demand.gpu_total_milli for p in view.waiting if p.demand is not None) / MILLI_PER_GPU,
            min_member, len(view.waiting) + len(held), len(held), reason or "not tried yet"))
    waiting.sort(key=lambda w: (w.position is None, w.position or 0, w.gang))
    return Report(namespace, waiting, _running(cache, now, namespace), *_gpu_map(cache))


def _priority(cache: Cache, waiting: Iterable, held: Iterable[str]) -> int:
    infos = [*waiting, *(cache.pods[k] for k in held if k in cache.pods)]
    return max((cache.priority(p) for p in infos), default=0)


def _running(cache: Cache, now: float, namespace: str | None) -> list[Running]:
    """Our gangs with members holding a node (a lone pod is a gang of one)."""
    members: dict = {}
    for info in cache.pods.values():
        if info.ours and info.active and info.gang is not None and \
                (namespace is None or info.gang.namespace == namespace):
            members.setdefault(info.gang, []).append(info)
    out = []
    for gkey, active in sorted(members.items(), key=lambda kv: kv[0].ref):
        group = cache.groups.get(gkey.ref) if gkey.group else None
        held = [cache.state.assignments[p.key] for p in active if p.key in cache.state.assignments]
        out.append(Running(gkey.ref, "PodGroup" if gkey.group else "Pod", _priority(cache, active, ()),
                           round(now - min(p.started or p.creation for p in active), 1), len(active),
                           group.min_member if group is not None and not isinstance(group, str) else 1,
                           sum(a.demand.gpu_total_milli for a in held) / MILLI_PER_GPU,
                           sorted({p.node for p in active if p.node})))
    return out


def _gpu_map(cache: Cache) -> tuple[list[NodeGpus], float]:
    state = cache.state
    holders: dict[tuple[int, int], list[str]] = {}
    for key, a in state.assignments.items():
        for d in a.devices:
            holders.setdefault((a.node, d), []).append(key)
    frag = None
    if cache.shapes and state.n_nodes and state.max_gpus:
        workload = Workload.from_demands([d for d, n in cache.shapes.items() for _ in range(n)])
        frag = node_fragmentation(state, workload)
    nodes = []
    for i, node in enumerate(state.nodes):
        if not node.gpus:
            continue
        devices = [{"index": d.index, "model": d.model, "pods": sorted(holders.get((i, d.index), [])),
                    "free_milli": int(state.gpu_free[i, d.index])} for d in node.gpus if d.healthy]
        nodes.append(NodeGpus(node.name, ",".join(sorted({d.model for d in node.gpus})), len(node.gpus),
                              float(state.gpu_free[i].sum()) / MILLI_PER_GPU,
                              float(frag[i]) / MILLI_PER_GPU if frag is not None else 0.0, devices,
                              [d.index for d in node.gpus if not d.healthy]))
    idle = float(state.gpu_free.sum()) if state.n_nodes else 0.0
    ratio = float(frag.sum()) / idle if frag is not None and idle > 0 else 0.0
    return nodes, ratio


# ---- reading the API server ---------------------------------------------------------------------------------
def fetch(client: Any, namespace: str | None) -> tuple[list[dict], ...]:
    """Nodes, PodGroups, PriorityClasses, pods (all namespaces: pods elsewhere hold GPUs too) and the Events of
    the namespace (or all)."""
    from gangsched.live.kube import ApiError

    def items(path: str, optional: bool = False) -> list[dict]:
        try:
            return client.request("GET", path)["items"]
        except ApiError as e:
            if optional and e.status in (403, 404):
                return []  # no PodGroup CRD installed: every pod is a gang of one
            raise

    ns = f"/namespaces/{namespace}" if namespace else ""
    return (items("/api/v1/nodes"), items(f"/apis/scheduling.x-k8s.io/v1alpha1{ns}/podgroups", optional=True),
            items("/apis/scheduling.k8s.io/v1/priorityclasses", optional=True), items("/api/v1/pods"),
            items(f"/api/v1{ns}/events?fieldSelector=reason%3DFailedScheduling"))


# ---- rendering ----------------------------------------------------------------------------------------------
def age(seconds: float) -> str:
    """kubectl's style: 45s, 12m, 3h, 2d."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= 2 * size or (unit == "m" and s >= size):
            return f"{s // size}{unit}"
    return f"{s}s"


def _num(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.2f}"


class Style:
    def __init__(self, colour: bool, width: int | None):
        self.colour, self.width = colour, width

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour and text else text

    def table(self, headers: list[str], rows: list[list[str]], paint: dict[int, str] | None = None) -> list[str]:
        """Columns padded to fit; on a terminal the last column is cut to its width."""
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        lines = ["   ".join(self.paint(h.ljust(w), "1") for h, w in zip(headers, widths, strict=True)).rstrip()]
        lead = sum(widths[:-1]) + 3 * (len(widths) - 1)
        for r in rows:
            last = r[-1]
            if self.width and lead + len(last) > self.width:
                last = last[:max(10, self.width - lead - 1)] + "…"
            cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)] + [last]
            cells = [self.paint(c, (paint or {}).get(i, "")) if (paint or {}).get(i) else c
                     for i, c in enumerate(cells)]
            lines.append("   ".join(cells).rstrip())
        return lines


def _devices(n: NodeGpus) -> str:
    """'0-1 ns/a, 2 ns/b (0.5 free), 3-7 free': runs of devices held by the same pods."""
    runs: list[tuple[int, int, str]] = []
    for d in n.devices:
        who = ", ".join(d["pods"]) if d["pods"] else "free"
        if d["pods"] and 0 < d["free_milli"] < MILLI_PER_GPU:
            who += f" ({d['free_milli'] / MILLI_PER_GPU:g} free)"
        if runs and runs[-1][2] == who and runs[-1][1] == d["index"] - 1:
            runs[-1] = (runs[-1][0], d["index"], who)
        else:
            runs.append((d["index"], d["index"], who))
    parts = [f"{a}-{b} {who}" if a != b else f"{a} {who}" for a, b, who in runs]
    parts += [f"{i} unhealthy" for i in n.unhealthy]
    return "; ".join(parts)


def render(report: Report, style: Style) -> str:
    where = f"namespace {report.namespace}" if report.namespace else "all namespaces"
    out = [style.paint(f"Waiting gangs ({len(report.waiting)}, {where})", "1;33")]
    if report.waiting:
        out += style.table(["POS", "GANG", "PRIORITY", "AGE", "GPUS", "MEMBERS", "REASON"], [
            [str(w.position) if w.position else "-", w.gang, str(w.priority), age(w.age_seconds), _num(w.gpus),
             f"{w.members}/{w.min_member}" + (f" ({w.bound} bound)" if w.bound else ""), w.reason]
            for w in report.waiting], paint={6: "33"})
    else:
        out.append("  none")
    out += ["", style.paint(f"Running gangs ({len(report.running)})", "1;32")]
    if report.running:
        out += style.table(["GANG", "PRIORITY", "AGE", "PODS", "GPUS", "NODES"], [
            [r.gang, str(r.priority), age(r.age_seconds), f"{r.pods}/{r.min_member}", _num(r.gpus),
             ",".join(r.nodes)] for r in report.running])
    else:
        out.append("  none")
    out += ["", style.paint(f"GPU nodes ({len(report.nodes)}; fragmentation {100 * report.fragmentation_ratio:.0f}%"
                            " of idle GPU capacity, FGD's measure against the pods held and waiting)", "1")]
    if report.nodes:
        out += style.table(["NODE", "MODEL", "GPUS", "FREE", "FRAG", "DEVICES"], [
            [n.node, n.model, str(n.gpus), _num(n.free), _num(round(n.fragmentation, 2)), _devices(n)]
            for n in report.nodes])
    else:
        out.append("  none")
    return "\n".join(out)


def to_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2)


# ---- command line ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="only this namespace's gangs (default: all namespaces)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text (default) or json")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--scheduler-name", default="gangsched", help="the scheduler's spec.schedulerName")
    p.add_argument("--profile", default="default", help="the scheduler's profile (its queue order)")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from gangsched.live.kube import ApiError, KubeClient

    try:
        client = KubeClient.load(args.kubeconfig, qps=0)
        nodes, podgroups, classes, pods, events = fetch(client, args.namespace)
    except ApiError as e:
        said = "cannot reach the API server" if e.status == 0 else "the API server refused"
        print(f"gangsched status: error: {said}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # no kubeconfig, no cluster: one line, as kubectl says it
        print(f"gangsched status: error: cannot reach the API server: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    report = build_report(books(nodes, podgroups, classes, pods, args.scheduler_name), events, args.profile,
                          namespace=args.namespace)
    if args.output == "json":
        print(to_json(report))
        return 0
    tty = sys.stdout.isatty()
    colour = tty and not os.environ.get("NO_COLOR")
    print(render(report, Style(colour, shutil.get_terminal_size().columns if tty else None)))
    return 0


def plugin_main() -> int:
    """`kubectl gangsched [status] [-n NS] [-o json]`: kubectl runs the `kubectl-gangsched` executable."""
    from gangsched.cli import Parser

    argv = sys.argv[1:]
    if argv[:1] == ["status"]:
        argv = argv[1:]
    parser = Parser(prog="kubectl gangsched", description="gang scheduler status: waiting and running gangs, GPUs")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.run(args)
