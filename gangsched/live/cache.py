"""The live scheduler's books: the API objects it knows, and every pod that holds a node accounted in the
core's `ClusterState`.

Rules (kube-scheduler's cache, with gangs):
- A pod the API server shows bound and not finished holds its node, whoever bound it and whatever it asks
  for: it is accounted exactly where possible (its requests, its annotated GPUs), conservatively otherwise
  (over-committing the node, guessed GPUs), with a log line and `stats["inexact"]` -- never dropped.
- Our own placements are *assumed* (in the state, binding in flight) until the watch shows them bound, and
  *forgotten* (released) when the binding fails or the pod finishes or goes.
- Annotated GPUs win over guessed ones: a pod whose annotation names devices a guess took displaces the guess.
Every change that can alter a gang's chances marks the gang dirty, for the scheduler to re-queue it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import orjson

from gangsched.framework import GangInfo
from gangsched.live import informer as inf
from gangsched.live.budgets import Budgets
from gangsched.live.translate import (
    GPU_MODELS_ANNOTATION,
    NATIVE_GROUP_FIELD,
    NATIVE_PODGROUP_API,
    demand_from,
    gpu_devices,
    group_conflict,
    group_name,
    held_demand,
    native_group_name,
    native_podgroup_from,
    node_from,
    parse_time,
    podgroup_from,
)
from gangsched.model import Demand, ModelError, Node, Pod, PodGroup
from gangsched.preempt import Running
from gangsched.state import Assignment, CapacityError, ClusterState

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
PLUGINS_PODGROUP_API = "scheduling.x-k8s.io/v1alpha1"  # scheduler-plugins' PodGroup CRD (and Volcano's pods)
# what a pod's demand is made of (see translate.demand_from and pod_requests); annotations are checked apart
_DEMAND_MEMO_SIZE = 10_000  # distinct pod shapes remembered (see Cache._demands)
_DEMAND_SPEC = ("containers", "initContainers", "overhead", "resources", "nodeSelector", "affinity", "tolerations")


@dataclass(frozen=True)
class GangKey:
    """A gang: a PodGroup (`group`), or a lone pod, which is a gang of one."""

    namespace: str
    name: str
    group: bool

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"gang {self.ref}" if self.group else f"pod {self.ref}"


@dataclass
class PodInfo:
    key: str
    obj: dict
    ours: bool  # spec.schedulerName is ours
    node: str | None  # spec.nodeName
    phase: str
    gang: GangKey | None  # ours only
    group: str | None  # the PodGroup "ns/name" its label or annotation names
    demand: Demand | None  # where it may run and what it needs, for scheduling; None if invalid
    error: str | None  # why it cannot be scheduled as written
    held: Demand  # what it takes from its node once bound (requests only)
    held_notes: list[str]
    priority: int | None  # spec.priority, if set
    class_name: str
    creation: float
    gated: bool  # spec.schedulingGates not empty: not schedulable yet (kube-scheduler's PreEnqueue)
    deleting: bool
    nominated: str | None = None  # status.nominatedNodeName: capacity is being freed for it there
    started: float = 0.0  # status.startTime
    never_preempts: bool = False  # spec.preemptionPolicy: Never (from its PriorityClass, or its native PodGroup)
    native: bool = False  # names its PodGroup in spec.schedulingGroup (scheduling.k8s.io), not by label
    conflict: bool = False  # names PodGroups both ways: `error` says so

    @property
    def active(self) -> bool:
        """Holds node resources: bound and not finished (a terminating pod still holds them)."""
        return self.node is not None and self.phase not in TERMINAL

    @property
    def waiting(self) -> bool:
        """Ours and not bound yet (gated or not); excludes pods being deleted or finished."""
        return self.ours and self.node is None and not self.deleting and self.phase not in TERMINAL


@dataclass
class Gang:
    pending: set[str] = field(default_factory=set)  # members waiting for a node (not assumed)
    held: set[str] = field(default_factory=set)  # members holding a node: assumed or bound, not finished


@dataclass
class GangView:
    """A gang ready for the queue (`info`), or why it is not (`problem`), with what the Events need."""

    key: GangKey
    info: GangInfo | None
    problem: str | None
    waiting: list[PodInfo]  # every waiting member, gated and invalid ones too
    group_obj: dict | None


class Cache:
    def __init__(self, state: ClusterState, scheduler_name: str = "gangsched"):
        self.state = state
        self.scheduler_name = scheduler_name
        self.pods: dict[str, PodInfo] = {}
        self.nodes: dict[str, Node] = {}
        self.nodes_dirty = False
        self.groups: dict[str, PodGroup | str] = {}  # key -> PodGroup, or the error in its spec
        self.group_objs: dict[str, dict] = {}
        self.min_known: dict[str, int] = {}  # last valid minMember per group: outlives the group's deletion
        self.group_members: dict[str, set[str]] = {}  # PodGroup key -> keys of pods naming it
        # PodGroup key -> API version -> object: scheduler-plugins' and native PodGroups share one name space, so
        # a name taken in both APIs is a conflict, not one silently hiding the other
        self.group_srcs: dict[str, dict[str, dict]] = {}
        self.whole_disruption: set[str] = set()  # native PodGroups with disruptionMode all: evicted only whole
        self.never_preempt_groups: set[str] = set()  # native PodGroups with preemptionPolicy Never
        self.priority_classes: dict[str, int] = {}
        self.budgets = Budgets()  # PodDisruptionBudgets: preemption prefers victims that violate none
        self.global_default: str | None = None  # the PriorityClass with globalDefault: true
        self.gangs: dict[GangKey, Gang] = {}
        self.assumed: dict[str, str] = {}  # pod key -> node, binding in flight
        self.guessed: set[str] = set()  # accounted on GPUs we picked, not ones it names
        self.unplaced: set[str] = set()  # bound to a node we do not know (yet)
        self.dirty: set[GangKey] = set()
        self.dirty_groups: set[str] = set()  # PodGroups whose status may have changed
        self.freed = 0  # bumped whenever capacity is released or the nodes change
        self.node_epoch = 0  # bumped when the node set or a node changes
        self.shapes: Counter[Demand] = Counter()  # demands of pods held or waiting: FGD's workload
        self._demand_memo: dict[bytes, tuple[Demand, Demand]] = {}  # see _demands
        self._parts: dict[str, list[dict]] = {}  # kind -> objects of its list so far (see apply)
        self._listed: set[str] = set()  # keys of the pods the list under way has applied
        self.stats: Counter[str] = Counter()

    # ---- events --------------------------------------------------------------------------------------------
    def apply(self, kind: str, typ: str, obj) -> None:
        if typ == inf.SYNC_ABORT:  # what the cut list delivered stays; the next list's SYNC settles the rest
            self._parts.pop(kind, None)
            if kind == "pods":
                self._listed = set()
            return
        if kind != "pods" and typ in (inf.SYNC_PART, inf.SYNC):  # small lists: applied whole at their end
            if typ == inf.SYNC_PART:
                self._parts.setdefault(kind, []).extend(obj)
                return
            obj = self._parts.pop(kind, []) + list(obj)
        if kind == "pods":
            if typ in (inf.SYNC_PART, inf.SYNC):
                self._list_pods(obj, done=typ == inf.SYNC)
            elif typ == "DELETED":
                self.delete_pod(_key(obj))
            else:
                self.upsert_pod(obj)
        elif kind == "nodes":
            self._nodes_event(typ, obj)
        elif kind == "podgroups":
            self._groups_event(typ, obj, PLUGINS_PODGROUP_API)
        elif kind == "nativepodgroups":
            self._groups_event(typ, obj, NATIVE_PODGROUP_API)
        elif kind == "priorityclasses":
            self._classes_event(typ, obj)
        elif kind == "pdbs":
            self.budgets.apply(typ, obj)

    def _list_pods(self, items: list[dict], done: bool) -> None:
        """Some of a pod list (SYNC_PART), or its end (SYNC): each pod is applied as it comes, on the newest
        nodes (else all would wait as unplaced for the first cycle to account them); at the end, pods the
        list did not hold are deleted. One unreadable object is skipped, not the rest of the list."""
        self.refresh_nodes()
        seen = self._listed
        # pods naming their GPUs first, so a guess never takes a device another pod really holds
        for o in sorted(items, key=lambda o: gpu_devices(o) is None):
            try:
                seen.add(self.upsert_pod(o))
            except Exception:
                self.stats["objects_skipped"] += 1
                log.exception("pod object not applied: %.200s", o)
        if done:
            self._listed = set()
            for key in [k for k in self.pods if k not in seen]:
                self.delete_pod(key)

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
                node = None
            if node is None:
                if self.nodes.pop(name, None) is not None:
                    self.nodes_dirty = True
            elif self.nodes.get(name) != node:  # heartbeats change nothing we schedule on
                self.nodes[name] = node
                self.nodes_dirty = True

    def _groups_event(self, typ: str, obj, api: str) -> None:
        items = obj if typ == inf.SYNC else [obj]
        if typ == inf.SYNC:
            keys = {_key(o) for o in items}
            for key in [k for k, srcs in self.group_srcs.items() if api in srcs and k not in keys]:
                self._set_group(key, api, None)
        for o in items:
            self._set_group(_key(o), api, None if typ == "DELETED" else o)

    def _set_group(self, key: str, api: str, obj: dict | None) -> None:
        """Record (or with None, forget) the PodGroup `key` of `api`, and rebuild what the gang reads of it."""
        srcs = self.group_srcs.setdefault(key, {})
        if obj is None:
            srcs.pop(api, None)
        else:  # listed items carry no apiVersion; Events and status writes need it
            srcs[api] = obj if obj.get("apiVersion") == api else {**obj, "apiVersion": api, "kind": "PodGroup"}
        if not srcs:
            del self.group_srcs[key]
            self.whole_disruption.discard(key)
            self._never_preempt(key, False)
            self._drop_group(key)
            return
        whole = never = False
        group: PodGroup | str
        if len(srcs) > 1:
            o = srcs[NATIVE_PODGROUP_API]
            group = f"PodGroup {key} exists as both {' and '.join(sorted(srcs))}; delete one"
        else:
            (src, o), = srcs.items()
            try:
                if src == NATIVE_PODGROUP_API:
                    group, (whole, never) = native_podgroup_from(o)
                else:
                    group = podgroup_from(o)
            except ModelError as e:
                group = str(e)
        (self.whole_disruption.add if whole else self.whole_disruption.discard)(key)
        self._never_preempt(key, never)
        if isinstance(group, PodGroup):
            self.min_known[key] = group.min_member
        if self.groups.get(key) != group:
            self.groups[key] = group
            self._group_dirty(key)
        self.group_objs[key] = o
        self.dirty_groups.add(key)

    def _never_preempt(self, key: str, never: bool) -> None:
        if (key in self.never_preempt_groups) == never:
            return
        (self.never_preempt_groups.add if never else self.never_preempt_groups.discard)(key)
        for k in self.group_members.get(key, ()):
            info = self.pods.get(k)
            if info is not None and info.native:
                own = (info.obj.get("spec") or {}).get("preemptionPolicy") == "Never"
                info.never_preempts = own or never

    def group_api(self, key: str) -> str | None:
        """The API of PodGroup `key` (None if absent or in both)."""
        srcs = self.group_srcs.get(key) or {}
        return next(iter(srcs)) if len(srcs) == 1 else None

    def _drop_group(self, key: str) -> None:
        self.groups.pop(key, None)
        self.group_objs.pop(key, None)
        self._group_dirty(key)

    def _group_dirty(self, key: str) -> None:
        ns, name = key.split("/", 1)
        self.dirty.add(GangKey(ns, name, True))

    def _classes_event(self, typ: str, obj) -> None:
        items = obj if typ == inf.SYNC else [obj]
        if typ == inf.SYNC:
            self.priority_classes.clear()
            self.global_default = None
        for o in items:
            name = o["metadata"]["name"]
            if typ == "DELETED":
                self.priority_classes.pop(name, None)
                if self.global_default == name:
                    self.global_default = None
                continue
            self.priority_classes[name] = int(o.get("value", 0))
            if o.get("globalDefault"):
                self.global_default = name
            elif self.global_default == name:
                self.global_default = None
        self.dirty.update(k for k, g in self.gangs.items() if g.pending)  # priorities reorder the queue

    def priority(self, info: PodInfo) -> int:
        """spec.priority (admission resolves it), else its PriorityClass now, else the global default."""
        if info.priority is not None:
            return info.priority
        name = info.class_name or self.global_default or ""
        return self.priority_classes.get(name, 0)

    # ---- pods ------------------------------------------------------------------------------------------------
    def upsert_pod(self, obj: dict) -> str:
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        ns, name = meta.get("namespace", "default"), meta["name"]
        key = f"{ns}/{name}"
        old = self.pods.get(key)
        if old is not None and old.obj["metadata"].get("uid") != meta.get("uid"):
            self.delete_pod(key)  # deleted and re-created under the same name while we were not watching
            old = None
        if old is not None and not old.conflict and _same_demand(old.obj, obj):  # most events change no demand
            demand, error, held, notes = old.demand, old.error, old.held, old.held_notes
        else:
            demand, error, held, notes = self._demands(obj)
        native = native_group_name(obj)
        group = native or group_name(obj)
        conflict = group_conflict(obj)
        if conflict:  # what it holds once bound stays what it asks; it is not scheduled as written
            demand, error = None, conflict
        ours = spec.get("schedulerName") == self.scheduler_name
        prio = spec.get("priority")
        info = PodInfo(key=key, obj=obj, ours=ours, node=spec.get("nodeName") or None,
                       phase=status.get("phase", "Pending"),
                       gang=(GangKey(ns, group, True) if group else GangKey(ns, name, False)) if ours else None,
                       group=f"{ns}/{group}" if group else None, demand=demand, error=error, held=held,
                       held_notes=notes, priority=prio if isinstance(prio, int) else None,
                       class_name=spec.get("priorityClassName") or "",
                       creation=old.creation if old is not None else parse_time(meta.get("creationTimestamp")),
                       gated=bool(spec.get("schedulingGates")), deleting=bool(meta.get("deletionTimestamp")),
                       nominated=status.get("nominatedNodeName") or None, started=parse_time(status.get("startTime")),
                       never_preempts=spec.get("preemptionPolicy") == "Never" or (
                           native is not None and f"{ns}/{group}" in self.never_preempt_groups),
                       native=native is not None, conflict=conflict is not None)
        self._count_shape(old, -1)
        self._count_shape(info, +1)
        self.pods[key] = info
        if old is not None and old.group != info.group and old.group:
            self.group_members.get(old.group, set()).discard(key)
            self.dirty_groups.add(old.group)
        if info.group:
            self.group_members.setdefault(info.group, set()).add(key)
            self.dirty_groups.add(info.group)
        if old is not None and old.gang != info.gang:  # relabelled into another gang
            self._leave_gang(old.gang, key)
        self._account(info)
        self._join_gang(info, changed=old is None or old.obj.get("spec") != spec or old.phase != info.phase
                        or old.error != info.error)  # e.g. a conflicting label removed
        return key

    def _demands(self, obj: dict) -> tuple[Demand | None, str | None, Demand, list[str]]:
        """What the pod asks (or why it cannot be read) and what it holds once bound. Pods made from one
        template ask the same: a valid answer is kept by the fields it is computed from, so a relist of
        100,000 pods translates each shape once."""
        memo = _demand_fields(obj)
        hit = self._demand_memo.get(memo) if memo is not None else None
        if hit is not None:
            return hit[0], None, hit[1], []
        demand, error = _demand(obj)
        if demand is None:  # the error names the pod: not shared
            held, notes = held_demand(obj)
            return demand, error, held, notes
        held = Demand(requests=demand.requests, gpu_count=demand.gpu_count)  # parsed exactly: held the same
        if memo is not None:
            if len(self._demand_memo) >= _DEMAND_MEMO_SIZE:
                self._demand_memo.clear()
            self._demand_memo[memo] = (demand, held)
        return demand, None, held, []

    def delete_pod(self, key: str) -> None:
        info = self.pods.pop(key, None)
        if info is None:
            return
        self._count_shape(info, -1)
        self.assumed.pop(key, None)  # its binding fails (404/409) and is ignored
        self._release(key)
        self.unplaced.discard(key)
        if info.group:
            self.group_members.get(info.group, set()).discard(key)
            self.dirty_groups.add(info.group)
        self._leave_gang(info.gang, key)

    def _count_shape(self, info: PodInfo | None, n: int) -> None:
        if info is not None and info.demand is not None and info.phase not in TERMINAL:
            self.shapes[info.demand] += n

    def _join_gang(self, info: PodInfo, changed: bool) -> None:
        if info.gang is None:
            return
        holds = info.key in self.state.assignments and (info.active or info.key in self.assumed)
        waits = info.waiting and not holds
        gang = self.gangs.get(info.gang)
        if gang is None:
            if not (holds or waits):
                return
            gang = self.gangs[info.gang] = Gang()
        was = (info.key in gang.pending, info.key in gang.held)
        (gang.pending.add if waits else gang.pending.discard)(info.key)
        (gang.held.add if holds and info.gang.group else gang.held.discard)(info.key)
        if (waits, holds and info.gang.group) != was or (waits and changed):
            self.dirty.add(info.gang)
        if not gang.pending and not gang.held:
            del self.gangs[info.gang]

    def _leave_gang(self, gkey: GangKey | None, key: str) -> None:
        gang = self.gangs.get(gkey) if gkey is not None else None
        if gang is None:
            return
        gang.pending.discard(key)
        gang.held.discard(key)
        self.dirty.add(gkey)  # type: ignore[arg-type]
        if not gang.pending and not gang.held:
            del self.gangs[gkey]  # type: ignore[arg-type]

    # ---- accounting --------------------------------------------------------------------------------------------
    def _account(self, info: PodInfo) -> None:
        """Keep the pod's assignment in the state in line with what the API server says."""
        key = info.key
        current = self.state.assignments.get(key)
        if not info.active:
            if info.phase in TERMINAL:  # finished, even with its binding still in flight: give it back
                self.assumed.pop(key, None)
            if key not in self.assumed:
                self._release(key)
            self.unplaced.discard(key)
            return
        assumed = self.assumed.pop(key, None)
        if assumed is not None and assumed != info.node:
            log.warning("pod %s was bound to %s, not %s as we asked", key, info.node, assumed)
        node = self.state.index.get(info.node)  # type: ignore[arg-type]
        if node is None:
            self._release(key)
            self.unplaced.add(key)  # accounted once its node shows up
            return
        self.unplaced.discard(key)
        named = gpu_devices(info.obj)
        if (current is not None and current.node == node and _same_resources(current.demand, info.held)
                and (named is None or named == current.devices)):
            return  # confirmed as assumed, or unchanged
        self._release(key)
        self._hold(info, node, named)

    def _hold(self, info: PodInfo, node: int, named: tuple[int, ...] | None) -> None:
        key, demand, state = info.key, info.held, self.state
        inexact = list(info.held_notes)
        devices: tuple[int, ...] = ()
        if demand.gpu_count:
            devices = self._claim_named(key, demand, node, named) if named is not None else ()
            if not devices:
                if named is not None:
                    inexact.append(f"its {named} annotation names GPUs the node does not have free")
                devices, exact = self._guess(demand, node)
                self.guessed.add(key)
                if not exact:
                    inexact.append("too few free GPUs: counted on busy ones")
            else:
                self.guessed.discard(key)
        if len(devices) < demand.gpu_count:
            demand = replace(demand, gpu_count=len(devices))
        try:  # the usual case, checked as any assignment is
            state.assign(key, demand, node, devices)
        except (CapacityError, ModelError):
            missing = [r for r, q in demand.requests if q and r not in state.res_index]
            if missing:
                inexact.append(f"requests {', '.join(missing)}, which no node offers")
            state.assign(key, demand, node, devices, force=True)
            if state.overcommitted(node):
                inexact.append(f"node {state.names[node]} is over-committed")
        if inexact:
            self.stats["inexact"] += 1
            log.warning("bound pod %s on %s accounted conservatively: %s", key, state.names[node], "; ".join(inexact))

    def _claim_named(self, key: str, demand: Demand, node: int, named: tuple[int, ...]) -> tuple[int, ...]:
        """The pod's annotated GPUs, displacing guesses that took them; () if they cannot be its own."""
        state = self.state
        cap, free = state.gpu_cap[node], state.gpu_free[node]  # one node's rows: plain indexing, no fancy copies
        if len(named) != demand.gpu_count or len(set(named)) != len(named) or \
                any(d < 0 or d >= len(cap) or cap[d] == 0 for d in named):
            return ()
        short = [d for d in named if free[d] < demand.gpu_milli]
        if short:
            holders = [k for k in state.node_pods[node] if set(state.assignments[k].devices) & set(short)]
            if any(k not in self.guessed for k in holders):
                return ()  # an exact claim holds them: this annotation is stale or wrong
            displaced = [self.pods[k] for k in holders if k in self.pods]
            for k in holders:
                self._release(k)
            state.assign(key, demand, node, named, force=True)
            for other in displaced:  # by their own annotation if they can have it now (a swap reported in halves)
                self._hold(other, node, gpu_devices(other.obj))
            state.release(key)  # the caller assigns it, with the rest of its checks
        return named

    def _guess(self, demand: Demand, node: int) -> tuple[tuple[int, ...], bool]:
        """Devices for a bound pod that names none: the freest real ones; exact when all have room. A pod
        asking more GPUs than the node has is counted on all of them."""
        free = self.state.gpu_free[node].astype(np.int64)
        real = np.flatnonzero(self.state.gpu_cap[node] > 0)
        order = real[np.argsort(-free[real], kind="stable")][:demand.gpu_count]
        exact = len(order) == demand.gpu_count and bool((free[order] >= demand.gpu_milli).all())
        return tuple(int(d) for d in order), exact

    def _release(self, key: str) -> None:
        if key in self.state.assignments:
            self.state.release(key)
            self.guessed.discard(key)
            self.freed += 1

    # ---- our placements ----------------------------------------------------------------------------------------
    def assume(self, a: Assignment) -> None:
        """The core placed this pod (its assignment is in the state); its binding is about to be posted."""
        self.assumed[a.pod_key] = a.node_name
        info = self.pods[a.pod_key]
        self._join_gang(info, changed=False)
        if info.group:
            self.dirty_groups.add(info.group)

    def forget(self, key: str) -> None:
        """Our binding failed: give its capacity back; the pod waits again (if it still exists)."""
        if self.assumed.pop(key, None) is None:
            return
        self._release(key)
        info = self.pods.get(key)
        if info is not None:
            self._join_gang(info, changed=True)
            if info.group:
                self.dirty_groups.add(info.group)

    # ---- nodes -------------------------------------------------------------------------------------------------
    def refresh_nodes(self) -> None:
        """Node set changed: rebuild the state's nodes, keep assignments, re-account what could not stay."""
        if not self.nodes_dirty:
            return
        self.nodes_dirty = False
        lost = self.state.set_nodes(sorted(self.nodes.values(), key=lambda n: n.name))
        self.freed += 1
        self.node_epoch += 1
        for a in lost:
            self.guessed.discard(a.pod_key)
            if a.pod_key in self.assumed:  # its node (or GPUs) changed while binding: held again below
                continue
            log.warning("pod %s lost its node %s (or the GPUs it held there)", a.pod_key, a.node_name)
        keys = self.unplaced | {a.pod_key for a in lost if a.pod_key not in self.assumed}
        # bound pods counted on fewer GPUs than they ask (their node had too few): the node may have them now,
        # and set_nodes kept the short count
        keys |= {k for k, a in self.state.assignments.items()
                 if k not in self.assumed and k in self.pods and a.demand.gpu_count < self.pods[k].held.gpu_count}
        infos = [self.pods[k] for k in sorted(keys) if k in self.pods and self.pods[k].active]
        for info in sorted(infos, key=lambda p: gpu_devices(p.obj) is None):  # named GPUs before guesses
            self._account(info)
            self._join_gang(info, changed=False)
        # Ours being bound keep holding their node, as the bound pods do: the API server takes a binding whatever
        # the node has (or whether it exists), so dropping them lets the next gang take the same GPUs.
        was = {a.pod_key: a.devices for a in lost}
        for key, name in sorted(self.assumed.items()):
            a, info, node = self.state.assignments.get(key), self.pods.get(key), self.state.index.get(name)
            if info is None or node is None or (a is not None and a.demand.gpu_count >= info.held.gpu_count):
                continue  # its node is gone (held again if it returns), or it holds all it asks
            self._release(key)
            self._hold(info, node, was.get(key))
            self._join_gang(info, changed=False)
        self.dirty.update(k for k, g in self.gangs.items() if g.pending)

    # ---- gangs -------------------------------------------------------------------------------------------------
    def take_dirty(self) -> set[GangKey]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def view(self, gkey: GangKey) -> GangView | None:
        """The gang as the queue should see it now, or None if nothing of it waits."""
        gang = self.gangs.get(gkey)
        if gang is None or not gang.pending:
            return None
        waiting = sorted((self.pods[k] for k in gang.pending), key=lambda p: p.key)
        group_obj = self.group_objs.get(gkey.ref) if gkey.group else None
        if gkey.group:
            group = self.groups.get(gkey.ref)
            named = {p.native for p in waiting}
            if len(named) > 1:
                return GangView(gkey, None, f"pods name PodGroup {gkey.ref} both in {NATIVE_GROUP_FIELD} and by "
                                f"label or annotation; none of its pods is scheduled", waiting, group_obj)
            native = True in named
            api = NATIVE_PODGROUP_API if native else PLUGINS_PODGROUP_API
            if group is None or api not in self.group_srcs.get(gkey.ref, {}):
                where = f" ({NATIVE_PODGROUP_API}, named in {NATIVE_GROUP_FIELD})" if native else ""
                return GangView(gkey, None, f"PodGroup {gkey.ref}{where} not found; the pod waits for it", waiting,
                                None)
            if isinstance(group, str):
                return GangView(gkey, None, f"{group}; none of its pods is scheduled", waiting, group_obj)
        else:
            group = PodGroup(gkey.name, 1, namespace=gkey.namespace)
        ready = [p for p in waiting if not p.gated and p.demand is not None]
        pods = [Pod(p.obj["metadata"]["name"], p.demand, namespace=gkey.namespace,  # type: ignore[arg-type]
                    priority=self.priority(p), group=gkey.name if gkey.group else None, creation=p.creation)
                for p in ready]
        bound = [self.state.assignments[k] for k in sorted(gang.held) if k in self.state.assignments]
        held_prio = max((self.priority(self.pods[k]) for k in gang.held if k in self.pods), default=None)
        if held_prio is not None:
            group = PodGroup(group.name, group.min_member, group.namespace, group.min_resources,
                             max(group.priority, held_prio), group.creation, group.timeout)
        # its age is its oldest waiting member's: a scheduler restart does not send it to the back of the line
        enqueued = min(p.creation for p in waiting)
        info = GangInfo(group, pods, enqueued=enqueued, bound=bound, key=gkey)
        problem = None
        if len(pods) + len(bound) < group.min_member or not pods:
            problem = self.shortfall(gkey, group, waiting, len(bound))
        return GangView(gkey, info, problem, waiting, group_obj)

    def shortfall(self, gkey: GangKey, group: PodGroup, waiting: list[PodInfo], bound: int) -> str:
        gated = sum(1 for p in waiting if p.gated)
        invalid = sum(1 for p in waiting if p.error and not p.gated)
        ready = len(waiting) - gated - invalid
        field = "minCount" if self.group_api(gkey.ref) == NATIVE_PODGROUP_API else "minMember"
        parts = [f"{ready + bound} of {field}={group.min_member} pods exist"]
        if gated:
            parts.append(f"{gated} more wait for spec.schedulingGates to be removed")
        if invalid:
            parts.append(f"{invalid} more cannot be scheduled as written")
        return f"{gkey}: " + ", ".join(parts)

    def bound_members(self, gkey: GangKey) -> list[str]:
        """Members the API server shows bound and running or about to (not assumed, not finished)."""
        gang = self.gangs.get(gkey)
        if gang is None:
            return []
        return sorted(k for k in gang.held if k not in self.assumed and k in self.pods and self.pods[k].active)

    def running_below(self, priority: int) -> list[Running]:
        """What preemption may evict for a gang of this priority: the pods holding nodes (not leaving already,
        not being bound by us) of lower priority, grouped by the PodGroup they name, else each alone."""
        groups: dict[str, list[PodInfo]] = {}
        for key in self.state.assignments:
            info = self.pods.get(key)
            if info is None or not info.active or info.deleting or key in self.assumed:
                continue
            groups.setdefault(info.group or f"pod:{key}", []).append(info)
        below = {ref: members for ref, members in groups.items() if max(map(self.priority, members)) < priority}
        violating = self._violating(below) if self.budgets.by_ns else set()
        out = []
        for ref, members in below.items():
            group = self.groups.get(ref)
            elastic = group.min_member if isinstance(group, PodGroup) and len(members) > group.min_member \
                and ref not in self.whole_disruption else None
            members.sort(key=lambda p: (p.started, p.key))  # the most recently started go first
            out.append(Running(ref, tuple(p.key for p in members), max(map(self.priority, members)),
                               min(p.started for p in members), elastic, sum(p.key in violating for p in members)))
        return out

    def _violating(self, groups: dict[str, list[PodInfo]]) -> set[str]:
        """The candidates whose eviction would violate a PodDisruptionBudget, the most important (higher
        priority, then started earlier) using the budgets up first, as kube-scheduler ranks them."""
        pods = sorted((p for members in groups.values() for p in members),
                      key=lambda p: (-self.priority(p), p.started, p.key))
        return self.budgets.violating([(p.key, p.key.partition("/")[0], p.obj["metadata"].get("labels") or {})
                                       for p in pods])

    def succeeded(self, group_key: str) -> int:
        return sum(1 for k in self.group_members.get(group_key, ()) if k in self.pods
                   and self.pods[k].phase == "Succeeded")


def _same_demand(a: dict, b: dict) -> bool:
    sa, sb = a.get("spec") or {}, b.get("spec") or {}
    return (all(sa.get(f) == sb.get(f) for f in _DEMAND_SPEC)
            and _annotation(a) == _annotation(b)
            and _allocated(a) == _allocated(b))


def _demand_fields(obj: dict) -> bytes | None:
    """Every field `demand_from` and `held_demand` read, and nothing else (env, images, names of pods differ
    between replicas), as one hashable value."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}

    def containers(field: str) -> list:
        cs = spec.get(field)
        return [[c.get("name"), c.get("resources"), c.get("restartPolicy")] if isinstance(c, dict) else c
                for c in cs] if isinstance(cs, list) else cs

    affinity, conditions = spec.get("affinity"), status.get("conditions")
    try:
        return orjson.dumps([
            containers("containers"), containers("initContainers"), spec.get("overhead"), spec.get("resources"),
            spec.get("nodeSelector"), affinity.get("nodeAffinity") if isinstance(affinity, dict) else affinity,
            spec.get("tolerations"), _annotation(obj), _allocated(obj), status.get("resize"),
            [c for c in conditions if isinstance(c, dict) and c.get("type") == "PodResizePending"]
            if isinstance(conditions, list) else conditions,
        ])
    except (TypeError, orjson.JSONEncodeError):  # nothing the API server sends; such a pod is not memoized
        return None


def _annotation(obj: dict) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(GPU_MODELS_ANNOTATION)


def _allocated(obj: dict) -> list:
    """What an in-place resize changes in the status (the kubelet's allocated resources)."""
    statuses = (obj.get("status") or {}).get("containerStatuses") or ()
    return [(c.get("allocatedResources"), (c.get("resources") or {}).get("requests")) for c in statuses]


def _same_resources(a: Demand, b: Demand) -> bool:
    return (a.requests, a.gpu_count, a.gpu_milli) == (b.requests, b.gpu_count, b.gpu_milli)


def _demand(obj: dict) -> tuple[Demand | None, str | None]:
    try:
        return demand_from(obj), None
    except ModelError as e:
        return None, str(e)


def _key(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', 'default')}/{meta['name']}"

