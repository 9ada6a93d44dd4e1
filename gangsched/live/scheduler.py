"""The live scheduler: watch the API server, place whole gangs with the core, bind, and keep gangs whole.

One thread owns the cache and the core's ClusterState: informers, the binder and timers only put events on
its queue. Every bound (or being-bound) pod is an assignment in the state, including pods other schedulers
bound and pods found bound at start-up, so nothing is ever double-booked. A gang's bindings are posted only
after the core reserved the whole gang; a failed binding is retried while the reservation holds; a gang
left below minMember (a member deleted, a bind refused) past its timeout has its bound members evicted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat

from gangsched.core import Evaluator, Scheduler
from gangsched.frag import Workload
from gangsched.framework import GangInfo
from gangsched.live import informer as inf
from gangsched.live.binder import BIND, Binder, BindOutcome, BindRequest
from gangsched.live.events import EventRecorder
from gangsched.live.kube import ApiError, KubeClient
from gangsched.live.podgroups import PODGROUP_API, StatusWriter, group_status
from gangsched.live.translate import (
    GPU_MODELS_ANNOTATION,
    demand_from,
    gpu_devices,
    group_name,
    node_from,
    parse_time,
    podgroup_from,
)
from gangsched.model import Demand, ModelError, Node, Pod, PodGroup
from gangsched.profile import Profile
from gangsched.state import CapacityError, ClusterState

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
BIND_RETRIES = 5


@dataclass
class PodInfo:
    key: str
    obj: dict
    ours: bool  # spec.schedulerName is ours
    node: str | None  # spec.nodeName
    phase: str
    gang: str | None  # gang key, see LiveScheduler.gang_key
    group: str | None  # PodGroup key "ns/name" named by label or annotation
    demand: Demand | None
    error: str | None  # why the pod cannot be scheduled as written
    priority: int
    creation: float

    @property
    def active(self) -> bool:
        """Holds node resources: bound and not finished (a terminating pod still holds them)."""
        return self.node is not None and self.phase not in TERMINAL


@dataclass
class GangTrack:
    """What the scheduling thread knows of one gang between cycles."""

    key: str
    pending: dict[str, PodInfo] = field(default_factory=dict)
    bound: set[str] = field(default_factory=set)  # members with a node (bound or being bound), not finished
    enqueued: float = 0.0
    retry_at: float = 0.0  # backoff after a failed attempt ...
    freed_seen: int = -1  # ... cut short when capacity was freed since
    backoff: float = 0.0
    incomplete_since: float | None = None
    last_message: str = ""


class LiveScheduler:
    def __init__(self, client: KubeClient, profile: Profile, *, scheduler_name: str = "gangsched",
                 bind_workers: int = 16, gang_timeout: float = 60.0, max_backoff: float = 10.0,
                 events: bool = True):
        self.client = client
        self.profile = profile
        self.scheduler_name = scheduler_name
        self.gang_timeout = gang_timeout
        self.max_backoff = max_backoff
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.recorder = EventRecorder(client) if events else None
        self.binder = Binder(client, self.events, bind_workers)
        self.status = StatusWriter(client)
        self.informers: list[inf.Informer] = []
        self.nodes: dict[str, Node] = {}
        self.nodes_dirty = True
        self.state = ClusterState([])
        self.core = Scheduler(self.state, profile)
        self.queue = profile.new_queue()
        self.pods: dict[str, PodInfo] = {}
        self.gangs: dict[str, GangTrack] = {}
        self.groups: dict[str, PodGroup | str] = {}  # key -> PodGroup, or the error in its spec
        self.group_objs: dict[str, dict] = {}
        self.group_members: dict[str, set[str]] = {}  # PodGroup key -> keys of pods naming it
        self.priority_classes: dict[str, int] = {}
        self.assumed: dict[str, BindRequest] = {}  # pod key -> binding in flight
        self.freed = 0  # bumped whenever capacity is released or nodes change
        self.dirty_groups: set[str] = set()
        # FGD scores against the workload's typical pods: here, the shapes of the pods the cluster holds or waits
        # for, refreshed when a new shape shows up or the mix has had time to drift.
        self.shapes: Counter[Demand] = Counter()
        self._workload_shapes: set[Demand] | None = None
        self._workload_at = 0.0
        self.workload_refresh = 30.0
        self.alive_at = time.monotonic()
        self.stats = {"gangs_scheduled": 0, "pods_bound": 0, "bind_errors": 0, "evicted": 0, "cycles": 0}

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start_informers(self, watch_timeout: int = 300) -> None:
        self.informers = inf.start_informers(self.client, self.events, self.stop, watch_timeout=watch_timeout)

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def run(self) -> None:
        if not self.informers:
            self.start_informers()
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            self.shutdown()

    def step(self, wait: float = 0.05) -> None:
        """Apply every queued event, then run one scheduling cycle."""
        self.alive_at = time.monotonic()
        try:
            item = self.events.get(timeout=wait)
        except queue.Empty:
            item = None
        while item is not None:
            self.handle(*item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                item = None
        if self.synced:
            self.cycle()

    def shutdown(self) -> None:
        """Finish the bindings of gangs already placed (never leave one half-bound), then stop."""
        self.stop.set()
        self.binder.shutdown()
        while not self.events.empty():  # record the last outcomes, so status and logs are right
            kind, typ, obj = self.events.get_nowait()
            if kind == BIND:
                self.handle(kind, typ, obj)
        self.status.close()
        if self.recorder:
            self.recorder.flush()

    # ---- cache ----------------------------------------------------------------------------------------------
    def handle(self, kind: str, typ: str, obj) -> None:
        if kind == "pods":
            if typ == inf.SYNC:
                seen = set()
                for o in obj:
                    seen.add(self._pod_upsert(o))
                for key in [k for k in self.pods if k not in seen]:
                    self._pod_delete(key)
            elif typ == "DELETED":
                self._pod_delete(_key(obj))
            else:
                self._pod_upsert(obj)
        elif kind == "nodes":
            self._nodes_event(typ, obj)
        elif kind == "podgroups":
            self._groups_event(typ, obj)
        elif kind == "priorityclasses":
            items = obj if typ == inf.SYNC else [obj]
            if typ == inf.SYNC:
                self.priority_classes.clear()
            for o in items:
                name = o["metadata"]["name"]
                if typ == "DELETED":
                    self.priority_classes.pop(name, None)
                else:
                    self.priority_classes[name] = int(o.get("value", 0))
        elif kind == BIND:
            self._bind_done(obj)

    def _nodes_event(self, typ: str, obj) -> None:
        items = obj if typ == inf.SYNC else [obj]
        if typ == inf.SYNC:
            names = {o["metadata"]["name"] for o in items}
            for name in [n for n in self.nodes if n not in names]:
                del self.nodes[name]
                self.nodes_dirty = True
        for o in items:
            name = o["metadata"]["name"]
            if typ == "DELETED":
                if self.nodes.pop(name, None) is not None:
                    self.nodes_dirty = True
                continue
            try:
                node = node_from(o)
            except ModelError as e:
                log.warning("ignoring node: %s", e)
                continue
            if self.nodes.get(name) != node:  # heartbeats change nothing we schedule on
                self.nodes[name] = node
                self.nodes_dirty = True

    def _groups_event(self, typ: str, obj) -> None:
        items = obj if typ == inf.SYNC else [obj]
        if typ == inf.SYNC:
            keys = {_key(o) for o in items}
            for key in [k for k in self.groups if k not in keys]:
                self.groups.pop(key)
                self.group_objs.pop(key, None)
        for o in items:
            key = _key(o)
            if typ == "DELETED":
                self.groups.pop(key, None)
                self.group_objs.pop(key, None)
                continue
            try:
                group: PodGroup | str = podgroup_from(o)
            except ModelError as e:
                group = str(e)
                if self.groups.get(key) != group and self.recorder:
                    self.recorder.record(o, "PodGroup", "InvalidSpec", f"{e}; none of its pods is scheduled",
                                         api_version=PODGROUP_API)
            changed = self.groups.get(key) != group
            self.groups[key] = group
            self.group_objs[key] = o
            if changed:
                self._wake(f"pg:{key}")
            self.dirty_groups.add(key)

    def gang_key(self, ns: str, name: str, group: str | None) -> str:
        return f"pg:{ns}/{group}" if group else f"pod:{ns}/{name}"

    def _pod_upsert(self, obj: dict) -> str:
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        ns, name = meta.get("namespace", "default"), meta["name"]
        key = f"{ns}/{name}"
        group = group_name(obj)
        prio = spec.get("priority")
        if prio is None:
            prio = self.priority_classes.get(spec.get("priorityClassName") or "", 0)
        old = self.pods.get(key)
        if old is not None and old.obj["metadata"].get("uid") == meta.get("uid") and all(
                old.obj["spec"].get(f) == spec.get(f) for f in _DEMAND_FIELDS) and _models(old.obj) == _models(obj):
            # most events (binding, status) leave what it asks for alone
            demand, error, creation = old.demand, old.error, old.creation
        else:
            demand, error = _demand(obj)
            creation = parse_time(meta.get("creationTimestamp"))
        info = PodInfo(key=key, obj=obj, ours=spec.get("schedulerName") == self.scheduler_name,
                       node=spec.get("nodeName") or None, phase=status.get("phase", "Pending"),
                       gang=self.gang_key(ns, name, group), group=f"{ns}/{group}" if group else None,
                       demand=demand, error=error, priority=int(prio), creation=creation)
        if old is not None and old.obj["metadata"].get("uid") != meta.get("uid"):
            self._pod_delete(key)  # deleted and re-created under the same name while we were not watching
            old = None
        if old is not None and old.demand is not None and old.phase not in TERMINAL:
            self.shapes[old.demand] -= 1
        if info.demand is not None and info.phase not in TERMINAL:
            self.shapes[info.demand] += 1
        self.pods[key] = info
        if info.group:
            self.dirty_groups.add(info.group)
            self.group_members.setdefault(info.group, set()).add(key)
        pending = info.ours and info.node is None and not meta.get("deletionTimestamp") and info.phase not in TERMINAL
        track = self.gangs.get(info.gang)
        if pending and key not in self.assumed:
            if track is None:
                track = self.gangs[info.gang] = GangTrack(info.gang, enqueued=time.monotonic())
            if key not in track.pending:
                self._wake(info.gang)
                self.queue.pending.pop(info.gang, None)  # re-enqueued with the new member's priority
            track.pending[key] = info
        elif track is not None:
            track.pending.pop(key, None)
        self._account(info)
        return key

    def _account(self, info: PodInfo) -> None:
        """Keep the pod's assignment in the state in line with what the API server says."""
        key = info.key
        current = self.state.assignments.get(key)
        if info.active:
            req = self.assumed.pop(key, None)
            if req is not None and req.node != info.node:
                log.warning("pod %s was bound to %s, not %s as we asked", key, info.node, req.node)
            if current is not None and current.node_name == info.node:
                self._track_bound(info)
                return
            if current is not None:
                self._release(key)
            node = self.state.index.get(info.node)
            if node is None or info.demand is None:
                return  # its node is not known yet: placed when the node set is rebuilt
            devices = gpu_devices(info.obj)
            try:
                if info.demand.gpu_count and (devices is None or len(devices) != info.demand.gpu_count):
                    devices = tuple(self.profile.devices(self.core.ctx, info.demand, node))
                self.state.assign(key, info.demand, node, devices or ())
            except (CapacityError, ModelError) as e:  # bound by someone who over-committed the node
                log.warning("cannot account bound pod %s on %s: %s", key, info.node, e)
            self._track_bound(info)
        elif current is not None and key not in self.assumed:
            self._release(key)
            if info.gang in self.gangs:
                self.gangs[info.gang].bound.discard(key)

    def _track_bound(self, info: PodInfo) -> None:
        if info.ours and info.group:
            track = self.gangs.setdefault(info.gang, GangTrack(info.gang, enqueued=time.monotonic()))
            track.bound.add(info.key)
            track.pending.pop(info.key, None)

    def _release(self, key: str) -> None:
        if key in self.state.assignments:
            self.state.release(key)
            self.freed += 1

    def _pod_delete(self, key: str) -> None:
        info = self.pods.pop(key, None)
        if info is None:
            return
        if info.demand is not None and info.phase not in TERMINAL:
            self.shapes[info.demand] -= 1
        self._release(key)
        self.assumed.pop(key, None)  # its binding fails (404/409) and is ignored
        if info.group:
            self.group_members.get(info.group, set()).discard(key)
        track = self.gangs.get(info.gang)
        if track is not None:
            track.pending.pop(key, None)
            track.bound.discard(key)
            if not track.pending and not track.bound and key not in self.assumed:
                self.gangs.pop(info.gang, None)
                self.queue.pending.pop(info.gang, None)
        if info.group:
            self.dirty_groups.add(info.group)

    def _wake(self, gang: str) -> None:
        track = self.gangs.get(gang)
        if track is not None:
            track.retry_at = 0.0

    def _rebuild_nodes(self) -> None:
        """Node set changed: rebuild the state, keep assignments, re-account bound pods not yet placed."""
        nodes = sorted(self.nodes.values(), key=lambda n: n.name)
        lost = self.state.set_nodes(nodes)
        for a in lost:
            log.warning("pod %s lost its node %s", a.pod_key, a.node_name)
        self.nodes_dirty = False
        self.freed += 1
        for info in list(self.pods.values()):
            if info.active and info.key not in self.state.assignments:
                self._account(info)
        for key in list(self.assumed):
            if key not in self.state.assignments:  # its node vanished while binding; the bind will fail
                self.assumed.pop(key)

    # ---- scheduling -----------------------------------------------------------------------------------------
    def cycle(self) -> None:
        if self.nodes_dirty:
            self._rebuild_nodes()
        now = time.monotonic()
        if self.profile.needs_workload:
            self._refresh_workload(now)
        self.stats["cycles"] += 1
        self._check_incomplete(now)
        for key, track in self.gangs.items():
            if track.pending and key not in self.queue.pending:  # dropped from the queue when members change
                prio = max(p.priority for p in track.pending.values())
                self.queue.pending[key] = GangInfo(PodGroup(key, 1, priority=prio), [], enqueued=track.enqueued)
        order = self.queue.pop_order(now)
        # Gangs with members already bound (a restart mid-binding, a replacement pod) go first: they hold
        # resources that are useless until they complete.
        order.sort(key=lambda g: not (g.group.name in self.gangs and self.gangs[g.group.name].bound))
        for gang in order:
            key = gang.group.name
            track = self.gangs.get(key)
            if track is None or not track.pending:
                self.queue.pending.pop(key, None)
                continue
            if now < track.retry_at and track.freed_seen == self.freed:
                continue
            outcome = self._attempt(track, now)
            if outcome is False and self.queue.blocks(gang, now):
                break  # a starving gang keeps what is free for itself
        self._flush_status()

    def _refresh_workload(self, now: float) -> None:
        current = self._workload_shapes
        stale = current is None or now - self._workload_at > self.workload_refresh
        if not stale and all(d in current for d in self.shapes):  # type: ignore[operator]
            return
        self.shapes = +self.shapes  # drop shapes no pod has any more
        if current is not None and set(self.shapes) == current and now - self._workload_at < self.workload_refresh:
            return
        demands = [d for d, n in self.shapes.items() for d in repeat(d, n)]
        self.core.ctx.workload = Workload.from_demands(demands)
        self.core.evaluator = Evaluator(self.profile, self.core.ctx)  # its cached scores assumed the old mix
        self._workload_shapes = set(self.shapes)
        self._workload_at = now

    def _gang_group(self, track: GangTrack) -> PodGroup | str:
        first = next(iter(track.pending.values()))
        if first.group is None:
            return PodGroup(first.obj["metadata"]["name"], 1, namespace=first.key.split("/", 1)[0],
                            priority=first.priority)
        group = self.groups.get(first.group)
        if group is None:
            return f"PodGroup {first.group} not found"
        return group

    def _attempt(self, track: GangTrack, now: float) -> bool | None:
        """Try to place the gang. True: placed; False: did not fit; None: not ready to try."""
        group = self._gang_group(track)
        members = list(track.pending.values())
        if isinstance(group, str):
            self._fail(track, now, "FailedScheduling", f"{group}; the pod waits for it", members)
            return None
        bad = [m for m in members if m.error]
        for m in bad:
            self._event(m.obj, "Pod", "FailedScheduling", m.error or "")
        ok = [m for m in members if not m.error]
        bound = [self.state.assignments[k] for k in track.bound if k in self.state.assignments]
        if len(ok) + len(bound) < group.min_member:
            msg = (f"PodGroup {group.key} needs minMember={group.min_member} pods; {len(ok) + len(bound)} "
                   f"schedulable pod(s) exist" + (f", {len(bad)} invalid" if bad else ""))
            self._fail(track, now, "FailedScheduling", msg, members, group, quiet=not bad)
            return None
        pods = [Pod(m.obj["metadata"]["name"], m.demand, namespace=m.key.split("/", 1)[0], priority=m.priority,
                    group=group.name, creation=m.creation) for m in ok if m.demand is not None]
        result = self.core.schedule_gang(GangInfo(group, pods, enqueued=track.enqueued), bound)
        if not result.ok:
            self._fail(track, now, "FailedScheduling", result.message(), members, group)
            return False
        for a in result.placed:
            info = track.pending.pop(a.pod_key)
            req = BindRequest(info.key.split("/", 1)[0], info.obj["metadata"]["name"],
                              info.obj["metadata"].get("uid", ""), a.node_name, a.devices, track.key)
            self.assumed[a.pod_key] = req
            track.bound.add(a.pod_key)
            self.binder.submit(req)
        track.backoff = 0.0
        track.last_message = ""
        self.queue.pending.pop(track.key, None)
        if not track.key.startswith("pg:"):
            self.gangs.pop(track.key)  # a lone pod needs no gang bookkeeping once placed
        self.stats["gangs_scheduled"] += 1
        if track.key.startswith("pg:"):
            self.dirty_groups.add(group.key)
        return True

    def _fail(self, track: GangTrack, now: float, reason: str, message: str, members: list[PodInfo],
              group: PodGroup | None = None, quiet: bool = False) -> None:
        track.backoff = min(max(track.backoff * 2, 1.0), self.max_backoff)
        track.retry_at = now + track.backoff
        track.freed_seen = self.freed
        if (message != track.last_message and not quiet) or now - track.enqueued > 2.0:
            # A gang still gathering its pods is normal for a moment; say so only if it lasts.
            for m in members:
                self._event(m.obj, "Pod", reason, message)
            if group is not None and track.key.startswith("pg:") and group.key in self.group_objs:
                self._event(self.group_objs[group.key], "PodGroup", reason, message, api_version=PODGROUP_API)
        track.last_message = message

    def _event(self, obj: dict, kind: str, reason: str, message: str, warning: bool = True,
               api_version: str = "v1") -> None:
        if self.recorder:
            self.recorder.record(obj, kind, reason, message, warning, api_version)

    # ---- binding outcomes -----------------------------------------------------------------------------------
    def _bind_done(self, out: BindOutcome) -> None:
        self.binder.in_flight -= 1
        req = out.request
        key = f"{req.namespace}/{req.name}"
        err = out.error
        if err is not None:
            self.stats["bind_errors"] += 1
        if err is None or (err.status == 409 and "already assigned" in err.message):
            # 409: an earlier attempt whose answer we lost did bind it. The watch confirms either way and
            # re-accounts the pod if it landed elsewhere; until then its reservation stands.
            self.stats["pods_bound"] += err is None
            info = self.pods.get(key)
            if info is not None and info.node is None and self.assumed.get(key) == req:
                info.node = req.node  # counts as bound for its gang until the watch says so
            return
        if self.assumed.get(key) != req:
            return  # the pod was deleted (or re-created) meanwhile
        if err.retriable and req.attempt + 1 < BIND_RETRIES and not self.stop.is_set():
            retry = BindRequest(**{**req.__dict__, "attempt": req.attempt + 1})
            self.assumed[key] = retry  # the reservation stays while we retry
            self.binder.submit(retry, delay=min(0.2 * 2 ** req.attempt, 5.0))
            return
        log.warning("binding %s to %s failed: %s", key, req.node, err)
        self.assumed.pop(key)
        self._release(key)
        info = self.pods.get(key)
        track = self.gangs.get(req.gang)
        if track is None and info is not None:
            track = self.gangs[req.gang] = GangTrack(req.gang, enqueued=time.monotonic())
        if track is not None:
            track.bound.discard(key)
            if info is not None and info.node is None and err.status != 404:
                # Place it again after a backoff; meanwhile the incomplete-gang timer guards its bound peers.
                track.pending[key] = info
                track.backoff = min(max(track.backoff * 2, 1.0), self.max_backoff)
                track.retry_at = time.monotonic() + track.backoff
                track.freed_seen = self.freed  # counted after our own release, which must not cut it short
        if info is not None and err.status != 404:
            self._event(info.obj, "Pod", "FailedBinding", f"binding to {req.node} failed: {err}")

    # ---- incomplete gangs -----------------------------------------------------------------------------------
    def _check_incomplete(self, now: float) -> None:
        for track in list(self.gangs.values()):
            if not track.bound or not track.key.startswith("pg:"):
                continue
            group = self.groups.get(track.key[3:])
            if not isinstance(group, PodGroup):
                continue
            need = group.min_member
            members = self.group_members.get(group.key, ())
            if len(track.bound) >= need or len(track.bound) + sum(
                    1 for k in members if k in self.pods and self.pods[k].phase == "Succeeded") >= need:
                track.incomplete_since = None
                continue
            if track.incomplete_since is None:
                track.incomplete_since = now
                continue
            timeout = group.timeout or self.gang_timeout
            if now - track.incomplete_since >= timeout:
                self._evict(track, group, timeout)

    def _evict(self, track: GangTrack, group: PodGroup, timeout: float) -> None:
        members = sorted(track.bound)
        msg = (f"gang {group.key} has {len(members)} of minMember={group.min_member} pods bound and no "
               f"replacement placed within {timeout:.0f}s; evicting {', '.join(members)} to free their resources")
        log.warning(msg)
        if group.key in self.group_objs:
            self._event(self.group_objs[group.key], "PodGroup", "GangIncomplete", msg, api_version=PODGROUP_API)
        for key in members:
            info = self.pods.get(key)
            if info is None:
                continue
            self._event(info.obj, "Pod", "Preempted", msg)
            ns, name = key.split("/", 1)
            try:
                self.client.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}",
                                    {"apiVersion": "v1", "kind": "DeleteOptions",
                                     "preconditions": {"uid": info.obj["metadata"].get("uid")}})
                self.stats["evicted"] += 1
            except ApiError as e:
                if e.status not in (404, 409):
                    log.warning("evicting %s failed: %s", key, e)
                    continue
        track.incomplete_since = None

    # ---- PodGroup status ------------------------------------------------------------------------------------
    def _flush_status(self) -> None:
        if not self.dirty_groups:
            return
        for key in self.dirty_groups:
            obj = self.group_objs.get(key)
            group = self.groups.get(key)
            if obj is None or not isinstance(group, PodGroup):
                continue
            members = [self.pods[k] for k in self.group_members.get(key, ()) if k in self.pods]
            assumed = sum(1 for p in members if p.key in self.assumed and p.node is None)
            status = group_status(obj, group, members, assumed)
            if status is not None:
                self.status.write(key, status)
        self.dirty_groups.clear()


# what a pod's Demand is made of (see translate.demand_from); annotations are checked separately
_DEMAND_FIELDS = ("containers", "initContainers", "overhead", "nodeSelector", "affinity", "tolerations")


def _models(obj: dict) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(GPU_MODELS_ANNOTATION)


def _demand(obj: dict) -> tuple[Demand | None, str | None]:
    try:
        return demand_from(obj), None
    except ModelError as e:
        return None, str(e)


def _key(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', 'default')}/{meta['name']}"
