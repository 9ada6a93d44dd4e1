"""Gang-aware preemption: which running gangs to evict so that a waiting gang fits, simulated in state trials.

kube-scheduler's victim selection (`selectVictimsOnNode`: remove every lower-priority pod, then reprieve as many
as possible, the most valuable first), lifted from pods on one node to whole gangs on the cluster:

1. Units of eviction: a running gang whole (evicting part of one wastes the rest), except that members of an
   elastic gang above its minMember go one by one, as KAI-Scheduler does; a lone pod is a gang of one. Only
   units of strictly lower priority than the preemptor (so two gangs never preempt each other in turn).
2. Futility: with every such unit gone, the gang must fit (placed by the core, in a trial); else nothing is
   evicted. A gang that cannot fit on an empty cluster (selectors, taints, GPU model) is never a preemptor.
3. The lowest priority level that suffices: units up to the lowest level at which the gang fits are candidates
   (so the highest victim priority is as low as it can be).
4. Reprieve: candidates are put back, the most valuable first (higher priority, more PodDisruptionBudget
   violations, smaller gangs so fewer gangs go, longer running), each kept back if the gang still fits. Most
   are settled without placing the gang again: its latest placement still holds with the unit back (a capacity
   sum on the unit's nodes), or holds once the few members the unit displaces are moved; a batch the free
   GPUs cannot cover is refused before placing. Then a last pass, so that no victim is unneeded.
The state is left as it was (every unit released is put back, placements are tried in rolled-back trials): the
caller gets the victims and the placement the gang would have, and evicts (live) or releases (simulator) them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gangsched.core import GangResult, Scheduler
from gangsched.framework import GangInfo
from gangsched.result import Code, Status
from gangsched.state import Assignment, CapacityError

MIN_CANDIDATE_NODES = 100


@dataclass(frozen=True)
class Running:
    """A running gang as preemption sees it. `pods` are keys of assignments in the state, in the order its
    members above `min_member` would go (last first); `min_member` None: the gang goes whole."""

    key: Hashable
    pods: tuple[str, ...]
    priority: int
    started: float = 0.0
    min_member: int | None = None
    pdb_violations: int = 0  # its pods whose eviction would go past a PodDisruptionBudget


@dataclass(frozen=True, eq=False)
class Unit:
    """What is evicted together: a whole gang, or one member above an elastic gang's minMember. Compared by
    identity: the search keeps sets of units, and each unit is made once."""

    gang: Running
    pods: tuple[str, ...]
    extra: bool = False  # a member above the gang's minMember (else the whole gang, or its minMember core)

    @property
    def whole(self) -> bool:
        return len(self.pods) == len(self.gang.pods)


@dataclass
class Preemption:
    status: Status
    victims: list[Unit] = field(default_factory=list)
    placement: list[Assignment] = field(default_factory=list)  # where the gang goes once the victims are gone

    @property
    def ok(self) -> bool:
        return self.status.ok

    @property
    def code(self) -> Code:
        return self.status.code

    @property
    def victim_pods(self) -> list[str]:
        return [k for u in self.victims for k in u.pods]


def units_of(running: Running) -> list[Unit]:
    extra = len(running.pods) - running.min_member if running.min_member is not None else 0
    if extra <= 0:
        return [Unit(running, running.pods)]
    core, above = running.pods[:running.min_member], running.pods[running.min_member:]
    return [Unit(running, (k,), extra=True) for k in reversed(above)] + [Unit(running, core)]


def find_victims(scheduler: Scheduler, gang: GangInfo, running: Sequence[Running],
                 allowed: bool = True) -> Preemption:
    """Victims among `running` whose eviction lets the gang (one that does not fit as things are) fit, or a
    status saying why there are none."""
    if not allowed:
        return Preemption(Status.unresolvable("its PriorityClass has preemptionPolicy: Never"))
    prio = gang.priority
    state = scheduler.state
    assigned = state.assignments
    units = [u for r in running if r.priority < prio and all(k in assigned for k in r.pods) for u in units_of(r)]
    if not units:
        return Preemption(Status.unschedulable(f"no running pod has a priority below {prio}"))
    saved: dict[str, Assignment] = {}  # every pod released below, as it was
    levels = sorted({u.gang.priority for u in units})
    try:  # the units released below are all put back at the end, cheaper than rolling a trial back
        released: list[Unit] = []
        fit = None
        for level in levels:  # the lowest level that suffices
            fit, released = _try_level(scheduler, gang, [u for u in units if u.gang.priority <= level], saved)
            if fit.ok:
                break
        assert fit is not None
        if fit.code == Code.UNRESOLVABLE:
            return Preemption(Status.unresolvable(f"preemption cannot help: {fit.message()}"))
        if not fit.ok:  # every unit of lower priority is gone now: no futile preemption
            return Preemption(Status.unschedulable(
                f"it would not fit even with every pod of priority below {prio} gone: {fit.message()}"))
        with state.trial() as attempt:
            victims = _reprieve(scheduler, gang, released, fit.placed, saved)
            final = _fits(scheduler, gang)
            if final.ok:
                attempt.commit()
        if not final.ok:  # the unchecked reprieves misled the greedy placement: check every one
            victims = _reprieve(scheduler, gang, released, fit.placed, saved, shortcut=False)
            final = _fits(scheduler, gang)
    finally:
        for k, a in saved.items():
            if k not in state.assignments:
                state.assign(k, a.demand, a.node, a.devices, force=True)
    return Preemption(Status(), victims, final.placed)


def _try_level(scheduler: Scheduler, gang: GangInfo, candidates: list[Unit],
               saved: dict[str, Assignment]) -> tuple[GangResult, list[Unit]]:
    """Release candidates (in the caller's trial) until the gang fits: first only those on the nodes that free
    the most GPUs (enough for twice what the gang asks, and at least MIN_CANDIDATE_NODES nodes, as
    kube-scheduler's preemption looks at a subset of nodes), then, if that is not enough, all of them. Releasing
    every candidate of a 20,000-pod cluster costs more than the search itself."""
    state = scheduler.state
    released = [u for u in candidates if all(k not in state.assignments for k in u.pods)]
    fresh = [u for u in candidates if u not in released]
    freeable = (state.gpu_free.clip(min=0) // 1000).sum(axis=1).astype(np.int64)
    assigned = state.assignments
    for u in fresh:
        for k in u.pods:
            a = assigned[k]
            freeable[a.node] += len(a.devices) * a.gpu_milli // 1000
    need = sum(p.demand.gpu_count for p in gang.pods)
    ranked = np.argsort(-freeable, kind="stable")
    enough = int(np.searchsorted(np.cumsum(freeable[ranked]), 2 * need)) + 1
    nodes = set(ranked[:max(enough, MIN_CANDIDATE_NODES)].tolist())
    done = set(released)
    for subset in ([u for u in fresh if any(assigned[k].node in nodes for k in u.pods)], fresh):
        for u in subset:
            if u not in done:
                _release(state, u, saved)
                released.append(u)
                done.add(u)
        fit = _fits(scheduler, gang)
        if fit.ok or len(released) == len(candidates):
            return fit, released
    return fit, released


def _reprieve(scheduler: Scheduler, gang: GangInfo, released: list[Unit], placed: list[Assignment],
              saved: dict[str, Assignment], shortcut: bool = True) -> list[Unit]:
    """Put back every released unit the gang can do without, the most valuable first. With `shortcut`, a unit
    that leaves the gang's latest placement intact, or needs only a few of its members moved, goes back without
    placing the whole gang again."""
    state = scheduler.state
    book = _Placement(state, gang, placed)
    need = _Need.of(gang)
    kept: list[Unit] = []
    # In that order, each unit goes back if the gang still fits with it. With `shortcut`: at once if the latest
    # placement still holds with it back, else if moving only the members it displaces suffices. Else the gang
    # is placed anew, in batches that double while they go back whole and halve when they do not (the same
    # answer as one at a time as long as giving capacity back never helps the gang fit), so a few victims among
    # many candidates cost few placements.
    order = sorted(released, key=_keep_first)
    i, batch = 0, 1
    while i < len(order):
        if shortcut and book.holds_with(order[i], saved):  # most units: on nodes the gang does not use
            _restore(state, order[i], saved)
            i += 1
            continue
        group = order[i:i + batch]
        for u in group:
            _restore(state, u, saved)
        fit = _check(scheduler, need, book if shortcut else None)
        if fit is not None:
            book = fit
            i += len(group)
            batch *= 2
            continue
        for u in group:
            _release(state, u, saved)
        if len(group) == 1:
            kept.append(group[0])
            i += 1
        batch = max(1, len(group) // 2)
    # An elastic gang whose core (minMember pods) goes loses its other members too: never leave it partial.
    gone = {u.gang.key for u in kept if not u.extra}
    for u in released:
        if u.gang.key in gone and u not in kept:
            _release(state, u, saved)  # it was reprieved: it is back in the state
            kept.append(u)
    # Greedy placement is not quite monotone (a unit given back later, or one added above, can change what the
    # gang needs): pass over the few victims until none of them is unneeded. Extras of a gang whose core goes
    # stay with it.
    changed = True
    while changed:
        changed = False
        cores = {u.gang.key for u in kept if not u.extra}
        for u in sorted(kept, key=_keep_first):
            if u.extra and u.gang.key in cores:
                continue
            unneeded = shortcut and book.holds_with(u, saved)
            _restore(state, u, saved)
            if not unneeded:
                fit = _check(scheduler, need, book if shortcut else None)
                if fit is not None:
                    book, unneeded = fit, True
            if unneeded:
                kept.remove(u)
                changed = True
                break
            _release(state, u, saved)
    return kept


class _Placement:
    """The gang's latest placement, by node: whether it still holds once a unit is back is a capacity sum on
    the unit's nodes (preemption changes nothing else a filter reads), far cheaper than placing the gang."""

    def __init__(self, state, gang: GangInfo, placed: list[Assignment]) -> None:
        self.state, self.gang, self.placed = state, gang, placed
        # minResources is checked against the whole cluster's free capacity: only placing the gang tells
        self.usable = not (gang.group.min_resources and not gang.bound)
        self.by_node: dict[int, list[Assignment]] = {}
        for a in placed:
            self.by_node.setdefault(a.node, []).append(a)

    def holds_with(self, u: Unit, saved: dict[str, Assignment]) -> bool:
        if not self.usable:
            return False
        state = self.state
        back: dict[int, list[Assignment]] = {}
        for k in u.pods:
            back.setdefault(saved[k].node, []).append(saved[k])
        for node, pods in back.items():
            ours = self.by_node.get(node)
            if not ours:
                continue
            both = ours + pods
            vec = np.sum([a.vector for a in both], axis=0)
            if (state.used[node] + vec > state.allocatable[node]).any():
                return False
            gpu = state.gpu_free[node].copy()
            for a in both:
                if a.devices:
                    gpu[list(a.devices)] -= a.gpu_milli
            if (gpu < 0).any():
                return False
        return True

    def repaired(self, scheduler: Scheduler) -> _Placement | None:
        """The placement with only the members that no longer fit where they were moved (by the core's pod
        placement), if they all find room; None otherwise (the gang may still fit, placed anew)."""
        if not self.usable:
            return None
        state = scheduler.state
        pods = {p.key: p for p in self.gang.pods}
        placed, displaced = [], []
        with state.trial():  # rolled back: only the placement found is kept
            for a in self.placed:
                try:
                    placed.append(state.assign(a.pod_key, a.demand, a.node, a.devices))
                except CapacityError:
                    displaced.append(a)
            for a in displaced:
                moved = scheduler.place_pod(pods[a.pod_key])
                if not isinstance(moved, Assignment):
                    return None
                placed.append(moved)
        return _Placement(state, self.gang, placed)


def _keep_first(u: Unit) -> tuple:
    """Reprieve order, most valuable first: higher priority, more PDB violations, whole gangs and elastic
    gangs' cores before the members above their minMember (those go first), fewer pods (so the victims are
    fewer, larger gangs), running longer (more work lost if evicted)."""
    return (-u.gang.priority, -(u.gang.pdb_violations if u.whole else 0), u.extra, len(u.pods), u.gang.started)


@dataclass(frozen=True)
class _Need:
    """What the gang's smallest minMember waiting members need at the least, summed over the cluster."""

    gang: GangInfo
    whole_gpus: int  # whole devices, for members asking whole GPUs
    gpu_milli: int  # GPU thousandths in all

    @classmethod
    def of(cls, gang: GangInfo) -> _Need:
        pods = sorted(gang.pods, key=lambda p: p.demand.gpu_total_milli)[:max(0, gang.group.min_member
                                                                             - len(gang.bound))]
        whole = sum(p.demand.gpu_count for p in pods if p.demand.gpu_milli >= 1000)
        return cls(gang, whole, sum(p.demand.gpu_total_milli for p in pods))

    def exceeds(self, state) -> bool:
        """True when the schedulable nodes' free capacity cannot cover it: the gang cannot fit, no need to
        place it to know (a necessary condition only, so it never says no where placing would say yes)."""
        usable = ~state.unschedulable
        free = state.gpu_free[usable].clip(min=0)
        return int((free >= 1000).sum()) < self.whole_gpus or int(free.sum()) < self.gpu_milli


def _check(scheduler: Scheduler, need: _Need, book: _Placement | None) -> _Placement | None:
    """A placement of the gang as things are, else None: `book` repaired if given, else (or if that fails) the
    capacity bound, as most checks that fail fail on it, and last the gang placed anew."""
    if book is not None:
        repaired = book.repaired(scheduler)
        if repaired is not None:
            return repaired
    state, gang = scheduler.state, need.gang
    if need.exceeds(state):
        return None
    fit = _fits(scheduler, gang)
    return _Placement(state, gang, fit.placed) if fit.ok else None


def _fits(scheduler: Scheduler, gang: GangInfo) -> GangResult:
    with scheduler.state.trial():  # rolled back: only the answer is kept
        return scheduler.schedule_gang(gang)


def _release(state, u: Unit, saved: dict[str, Assignment]) -> None:
    for k in u.pods:
        saved[k] = state.release(k)


def _restore(state, u: Unit, saved: dict[str, Assignment]) -> None:
    for k in u.pods:
        a = saved[k]
        state.assign(k, a.demand, a.node, a.devices, force=True)
