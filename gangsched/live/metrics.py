"""Prometheus metrics of the live scheduler, named and typed as kube-scheduler and Volcano users know them.

- `gangsched_schedule_attempts_total{result,profile}` (kube-scheduler's `scheduler_schedule_attempts_total`):
  one per gang attempt; result scheduled / unschedulable / error.
- `gangsched_scheduling_attempt_duration_seconds{result,profile}`: one `schedule_gang` call.
- `gangsched_gang_scheduling_duration_seconds` (Volcano's `e2e_job_scheduling_duration`): first member
  created -> last member bound, for gangs whose bindings all succeeded.
- `gangsched_binding_duration_seconds{result}`: posting a binding -> its answer (retries included).
- `gangsched_preemption_victims` (kube-scheduler's histogram of that name): pods evicted per preemption;
  `gangsched_preemption_attempts_total`.
- gauges refreshed by the scheduling loop (`refresh`, at most every `every` seconds, so a scrape never walks
  the cache while the loop changes it): `gangsched_pending_gangs` / `gangsched_pending_pods` {queue,priority},
  `gangsched_node_gpus{pool,model,state}` (allocated / free / capacity, in GPUs: a shared GPU counts in part),
  `gangsched_gpu_fragmentation_gpus{pool}` and `gangsched_gpu_fragmentation_ratio` (FGD's measure: idle GPU
  capacity the workload's typical pods could not use, over all idle GPU capacity), `gangsched_build_info`.
- counters kept elsewhere (the loop's stats, the cache's, the give-back's), exposed as real counters.

The scheduler thread calls the hooks; the HTTP thread only reads what they left.
"""

from __future__ import annotations

import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gangsched.frag import Workload, node_fragmentation
from gangsched.model import MILLI_PER_GPU
from gangsched.result import Code

if TYPE_CHECKING:
    from gangsched.live.cache import Cache, GangKey
    from gangsched.live.scheduler import LiveScheduler

# Node labels that name a node pool, in the order tried (GKE, EKS, Karpenter, AKS); else pool "".
POOL_LABELS = ("gangsched.io/node-pool", "cloud.google.com/gke-nodepool", "eks.amazonaws.com/nodegroup",
               "karpenter.sh/nodepool", "kubernetes.azure.com/agentpool", "agentpool")
QUEUE_DEFAULT = "default"  # Volcano's default queue; PodGroups without spec.queue are in it
# seconds: from 1 ms to ~1 h, as kube-scheduler's exponential buckets reach
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 60, 120, 300, 600, 1800,
                   3600)
VICTIM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def result_label(code: Code) -> str:
    """kube-scheduler's three results: UNRESOLVABLE is unschedulable too."""
    return {Code.SUCCESS: "scheduled", Code.ERROR: "error"}.get(code, "unschedulable")


@dataclass(frozen=True)
class Snapshot:
    """Gauge values computed in the scheduling loop; replaced whole, so a scrape sees one consistent set."""

    pending_gangs: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, priority) -> gangs
    pending_pods: dict[tuple[str, str], int] = field(default_factory=dict)
    gpus: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (pool, model, state) -> GPUs
    frag_gpus: dict[str, float] = field(default_factory=dict)  # pool -> fragmented GPUs
    frag_ratio: float = 0.0


@dataclass
class _Placed:
    created: float  # wall clock: the oldest member's creationTimestamp
    waiting: set[str]  # bindings not answered yet


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, profile: str = "default", *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 every: float = 2.0, pool_labels: Iterable[str] = POOL_LABELS):
        self.registry = registry or CollectorRegistry()
        self.profile, self.clock, self.wall, self.every = profile, clock, wall, every
        self.pool_labels = tuple(pool_labels)
        r = self.registry
        self.attempts = Counter("gangsched_schedule_attempts", "Gang scheduling attempts by result",
                                ["result", "profile"], registry=r)
        self.attempt_duration = Histogram("gangsched_scheduling_attempt_duration_seconds",
                                          "Duration of one gang scheduling attempt (the whole gang, all-or-nothing)",
                                          ["result", "profile"], buckets=LATENCY_BUCKETS, registry=r)
        self.gang_duration = Histogram("gangsched_gang_scheduling_duration_seconds",
                                       "Gang end-to-end latency: its first member created -> its last member bound",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.binding_duration = Histogram("gangsched_binding_duration_seconds",
                                          "Binding posted -> answered (retries included)", ["result"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.victims = Histogram("gangsched_preemption_victims", "Pods evicted by one preemption",
                                 buckets=VICTIM_BUCKETS, registry=r)
        self.preemptions = Counter("gangsched_preemption_attempts", "Preemptions that evicted pods", registry=r)
        for result in ("scheduled", "unschedulable", "error"):  # every series exists from the start
            self.attempts.labels(result, profile)
        Info("gangsched_build", "Build information", registry=r).info(
            {"version": _version(), "python_version": platform.python_version(), "profile": profile})
        self.snapshot = Snapshot()
        self._started: float | None = None
        self._refreshed = -float("inf")
        self._placed: dict[GangKey, _Placed] = {}
        self._bind_started: dict[str, float] = {}
        self._memo: dict = {}

    # ---- hooks the scheduling loop calls -------------------------------------------------------------------
    def attempt_started(self) -> None:
        self._started = self.clock()

    def attempt_done(self, code: Code) -> None:
        label = result_label(code)
        self.attempts.labels(label, self.profile).inc()
        if self._started is not None:
            self.attempt_duration.labels(label, self.profile).observe(self.clock() - self._started)
            self._started = None

    def gang_placed(self, gkey: GangKey, pod_keys: Iterable[str], created: float) -> None:
        keys = set(pod_keys)
        now = self.clock()
        for k in keys:
            self._bind_started[k] = now
        old = self._placed.get(gkey)  # members placed in an earlier pass still binding count too
        if old is not None:
            created, keys = min(created, old.created), keys | old.waiting
        self._placed[gkey] = _Placed(created, keys)

    def binding_done(self, gkey: GangKey, pod_key: str, ok: bool) -> None:
        """A binding's final answer (not a retry). The gang's latency is observed when its last one succeeds;
        a gang with a failed binding is not observed (it waits again and is placed anew)."""
        started = self._bind_started.pop(pod_key, None)
        if started is not None:
            self.binding_duration.labels("bound" if ok else "error").observe(self.clock() - started)
        placed = self._placed.get(gkey)
        if placed is None:
            return
        if not ok:
            del self._placed[gkey]
            return
        placed.waiting.discard(pod_key)
        if not placed.waiting:
            del self._placed[gkey]
            self.gang_duration.observe(max(0.0, self.wall() - placed.created))

    def preempted(self, victims: int) -> None:
        if victims > 0:
            self.preemptions.inc()
            self.victims.observe(victims)

    def refresh(self, cache: Cache, workload: Workload | None, force: bool = False) -> None:
        """Recompute the gauges from the cache (scheduler thread), at most every `every` seconds."""
        now = self.clock()
        if not force and now - self._refreshed < self.every:
            return
        self._refreshed = now
        self.snapshot = snapshot(cache, workload, self.pool_labels, self._memo)


def _version() -> str:
    try:
        return metadata.version("gangsched")
    except metadata.PackageNotFoundError:
        return "unknown"


def node_pool(labels: dict[str, str], pool_labels: Iterable[str] = POOL_LABELS) -> str:
    return next((labels[k] for k in pool_labels if k in labels), "")


def snapshot(cache: Cache, workload: Workload | None, pool_labels: Iterable[str] = POOL_LABELS,
             memo: dict | None = None) -> Snapshot:
    """The gauges' values. `memo` keeps the node pools (per node set) and the workload built from the pods'
    shapes (per shape mix) from one call to the next."""
    memo = {} if memo is None else memo
    gangs: dict[tuple[str, str], int] = defaultdict(int)
    pods: dict[tuple[str, str], int] = defaultdict(int)
    for gkey, gang in cache.gangs.items():
        if not gang.pending:
            continue
        members = [cache.pods[k] for k in gang.pending if k in cache.pods]
        obj = cache.group_objs.get(gkey.ref) if gkey.group else None
        queue = str(((obj or {}).get("spec") or {}).get("queue") or QUEUE_DEFAULT)
        prio = str(max((cache.priority(p) for p in members), default=0))
        gangs[queue, prio] += 1
        pods[queue, prio] += len(members)
    state = cache.state
    gpus: dict[tuple[str, str, str], float] = {}
    frag: dict[str, float] = {}
    ratio = 0.0
    if not state.n_nodes or not state.max_gpus:
        return Snapshot(dict(gangs), dict(pods), gpus, frag, ratio)
    # per (pool, model): sums over the device arrays, vectorised (a Python loop costs ~100 ms at 5,000 nodes)
    if memo.get("pools", (None,))[0] is not state.nodes:
        pool_of = [node_pool(n.labels, pool_labels) for n in state.nodes]
        names = sorted(set(pool_of))
        index = {p: i for i, p in enumerate(names)}
        memo["pools"] = (state.nodes, names, np.array([index[p] for p in pool_of], dtype=np.int64))
    _, names, pool_idx = memo["pools"]
    cap, free = state.gpu_cap, state.gpu_free
    real = cap > 0
    n_models = max(len(state.models), 1)
    key = (np.broadcast_to(pool_idx[:, None], cap.shape)[real] * n_models + state.dev_model[real]).astype(np.int64)
    size = len(names) * n_models
    sums = {"capacity": np.bincount(key, minlength=size).astype(float),
            "free": np.bincount(key, weights=free[real] / MILLI_PER_GPU, minlength=size),
            "allocated": np.bincount(key, weights=(cap - free)[real] / MILLI_PER_GPU, minlength=size)}
    for k in np.flatnonzero(sums["capacity"]):
        pool, model = names[k // n_models], state.models[k % n_models]
        for what, arr in sums.items():
            gpus[pool, model, what] = float(arr[k])
    if workload is None and cache.shapes:
        mix = dict(cache.shapes)
        if memo.get("mix", (None,))[0] != mix:
            memo["mix"] = (mix, Workload.from_demands([d for d, n in mix.items() for _ in range(n)]))
        workload = memo["mix"][1]
    if workload is not None:
        per_node = node_fragmentation(state, workload)
        by_pool = np.bincount(pool_idx, weights=per_node, minlength=len(names)) / MILLI_PER_GPU
        frag = {p: float(v) for p, v in zip(names, by_pool, strict=True)}
        idle = float(free.sum())
        ratio = float(per_node.sum()) / idle if idle > 0 else 0.0
    return Snapshot(dict(gangs), dict(pods), gpus, frag, ratio)


class LoopCollector(Collector):
    """What the loop and its collaborators count and the snapshot's gauges, read at scrape time."""

    def __init__(self, sched: LiveScheduler, metrics: SchedulerMetrics):
        self.sched, self.metrics = sched, metrics

    def collect(self) -> Iterable[Metric]:
        s = self.sched
        stats, cache_stats = dict(s.stats), dict(s.cache.stats)
        for name, doc, value in (
                ("gangsched_gangs_scheduled", "Gangs placed whole", stats.get("gangs_scheduled", 0)),
                ("gangsched_pods_bound", "Bindings that succeeded", stats.get("pods_bound", 0)),
                ("gangsched_bind_errors", "Bindings that failed (retried or given up)", stats.get("bind_errors", 0)),
                ("gangsched_cycles", "Scheduling cycles", stats.get("cycles", 0)),
                ("gangsched_event_errors", "Watch events that could not be applied", stats.get("event_errors", 0)),
                ("gangsched_evicted", "Pods deleted from incomplete gangs past their timeout", s.giveback.evicted),
                ("gangsched_preempted_pods", "Pods evicted for a higher-priority gang",
                 s.preemptor.evicted if s.preemptor else 0),
                ("gangsched_inexact_accounting", "Bound pods accounted conservatively (not exactly as asked)",
                 cache_stats.get("inexact", 0))):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("gangsched_bindings_in_flight", "Bindings posted, no answer yet",
                                value=len(s.binding))
        snap = self.metrics.snapshot
        for name, doc, values in (("gangsched_pending_gangs", "Gangs with members waiting for a node",
                                   snap.pending_gangs),
                                  ("gangsched_pending_pods", "Pods waiting for a node", snap.pending_pods)):
            g = GaugeMetricFamily(name, doc, labels=["queue", "priority"])
            for (queue, prio), n in sorted(values.items()):
                g.add_metric([queue, prio], n)
            yield g
        g = GaugeMetricFamily("gangsched_node_gpus", "GPUs per node pool and model: allocated, free, capacity "
                              "(a shared GPU counts in part)", labels=["pool", "model", "state"])
        for labels, v in sorted(snap.gpus.items()):
            g.add_metric(list(labels), v)
        yield g
        g = GaugeMetricFamily("gangsched_gpu_fragmentation_gpus", "Idle GPU capacity the workload's typical pods "
                              "could not use (FGD), in GPUs, per node pool", labels=["pool"])
        for pool, v in sorted(snap.frag_gpus.items()):
            g.add_metric([pool], v)
        yield g
        yield GaugeMetricFamily("gangsched_gpu_fragmentation_ratio", "Fragmented share of all idle GPU capacity "
                                "(FGD)", value=snap.frag_ratio)


def registry_for(sched: LiveScheduler) -> CollectorRegistry:
    """The registry `/metrics` serves: the scheduler's own metrics plus the loop's counters and gauges."""
    metrics = sched.metrics
    metrics.registry.register(LoopCollector(sched, metrics))
    return metrics.registry
