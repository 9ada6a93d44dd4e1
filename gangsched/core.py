"""The scheduling core shared by the simulator, the live scheduler and the extender.

`Scheduler.schedule_gang` places a whole gang inside one state trial: every member is filtered, scored and
given devices against the state as it stands with the earlier members already in; if fewer than minMember
land, the trial is rolled back and nothing stays reserved.

`Evaluator` keeps, per distinct demand, the filter mask and per-node scores over all nodes, and refreshes
only the rows whose usage changed since (the state's touch log). A gang of 64 identical pods is therefore
one full evaluation plus 63 one-row refreshes, and a stream of identical single pods is the same.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from gangsched.framework import ALL, CycleContext, Diagnosis, ExplainingFilter, GangInfo, StaticFilter
from gangsched.model import GPU, Demand, ModelError, Pod
from gangsched.profile import Profile
from gangsched.result import SUCCESS, Code, Status
from gangsched.state import Assignment, ClusterState


@dataclass
class _Entry:
    epoch: int
    version: int
    static: np.ndarray  # bool [N]: passes the static filters (node attributes only)
    mask: np.ndarray  # bool [N]: passes every filter
    raws: list[np.ndarray]  # per per-node score plugin: float [N], NaN where infeasible


class Evaluator:
    """`StaticFilter`s read only node attributes (labels, taints, models, cordons), which change only with the
    state's epoch: a refresh skips them and re-runs the other filters only on dirty rows that passed them.
    Results are the same as running every filter on every dirty row."""

    def __init__(self, profile: Profile, ctx: CycleContext, capacity: int = 128):
        self.profile, self.ctx, self.capacity = profile, ctx, capacity
        self.static_filters = [f for f in profile.filters if isinstance(f, StaticFilter)]
        self.dynamic_filters = [f for f in profile.filters if not isinstance(f, StaticFilter)]
        # per filter in profile order, its `explain` if it is an ExplainingFilter (checked once, not per diagnosis)
        self._explainers = [(f, f.explain if isinstance(f, ExplainingFilter) else None) for f in profile.filters]
        self.cached_scores = [(p, w) for p, w in profile.scores if p.per_node]
        self.live_scores = [(p, w) for p, w in profile.scores if not p.per_node]
        self._cache: OrderedDict[Demand, _Entry] = OrderedDict()
        # the demand object looked up last, whose entry is the most recently used one: a pod's mask and then its
        # scores, or the next member of a gang, find it without hashing the demand again
        self._last: tuple[Demand, _Entry] | None = None

    def mask(self, demand: Demand) -> np.ndarray:
        return self._entry(demand).mask

    def static_mask(self, demand: Demand) -> np.ndarray:
        """bool [N]: the nodes whose attributes admit the demand, whatever their usage."""
        return self._entry(demand).static

    def _entry(self, demand: Demand) -> _Entry:
        state = self.ctx.state
        last = self._last
        entry = last[1] if last is not None and last[0] is demand else self._cache.get(demand)
        self._last = None
        if entry is not None and entry.epoch == state.epoch:
            if last is None or last[0] is not demand:
                self._cache.move_to_end(demand)
            if entry.version != state.version:
                dirty = state.touched_since(entry.version)
                if dirty is None or len(dirty) * 4 > state.n_nodes:
                    entry = self._full(demand)
                else:
                    self._refresh(entry, demand, dirty)
            self._last = (demand, entry)
            return entry
        entry = self._full(demand)
        self._cache[demand] = entry
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return entry

    def _filter(self, filters: list, demand: Demand, rows: np.ndarray | slice) -> np.ndarray:
        mask = None
        for f in filters:
            m = f(self.ctx, demand, rows)
            mask = m if mask is None else mask & m
        if mask is None:
            return np.ones(len(self.ctx.state.unschedulable[rows]), dtype=bool)
        return mask

    def _full(self, demand: Demand) -> _Entry:
        state = self.ctx.state
        static = self._filter(self.static_filters, demand, ALL)
        mask = static & self._filter(self.dynamic_filters, demand, ALL)
        feasible = np.flatnonzero(mask)
        raws = []
        for plugin, _ in self.cached_scores:
            raw = np.full(state.n_nodes, np.nan)
            if feasible.size:
                raw[feasible] = plugin(self.ctx, demand, feasible)
            raws.append(raw)
        entry = _Entry(state.epoch, state.version, static, mask, raws)
        self._cache[demand] = entry
        return entry

    def _refresh(self, entry: _Entry, demand: Demand, dirty: np.ndarray) -> None:
        if dirty.size:
            candidates = dirty[entry.static[dirty]]
            entry.mask[dirty] = False
            now_ok = candidates
            if candidates.size:
                ok = self._filter(self.dynamic_filters, demand, candidates)
                entry.mask[candidates] = ok
                now_ok = candidates[ok]
            for (plugin, _), raw in zip(self.cached_scores, entry.raws, strict=True):
                if now_ok.size < dirty.size:  # rows that left the mask (never read while outside it)
                    raw[dirty] = np.nan
                if now_ok.size:
                    raw[now_ok] = plugin(self.ctx, demand, now_ok)
        entry.version = self.ctx.state.version

    def scores(self, demand: Demand, feasible: np.ndarray) -> np.ndarray:
        """Weighted sum of normalised scores over the feasible nodes."""
        entry = self._entry(demand)
        total = None
        for (plugin, weight), raw in zip(self.cached_scores, entry.raws, strict=True):
            total = _add_weighted(total, weight, plugin.normalize(raw[feasible]))
        for plugin, weight in self.live_scores:
            total = _add_weighted(total, weight, plugin.normalize(plugin(self.ctx, demand, feasible)))
        return np.zeros(len(feasible)) if total is None else total

    def diagnose(self, demand: Demand) -> Diagnosis:
        """Per node, the first filter (in profile order) that rejects it, counted by reason."""
        state = self.ctx.state
        diag = Diagnosis(state.n_nodes)
        remaining = np.arange(state.n_nodes)
        for f, explain in self._explainers:
            if not remaining.size:
                break
            ok = f(self.ctx, demand, remaining)
            rejected = remaining[~ok]
            if rejected.size:
                if explain is not None:
                    diag.reasons.update(explain(self.ctx, demand, rejected))
                else:
                    diag.reasons[f.reason] += int(rejected.size)
            remaining = remaining[ok]
        return diag


def _add_weighted(total: np.ndarray | None, weight: float, score: np.ndarray) -> np.ndarray:
    """`total + weight * score`, starting from zeros, with the same float results but no array of zeros to add
    to and no multiplication by a weight of 1 (both exact no-ops)."""
    if weight != 1.0:
        score = np.asarray(weight * score, dtype=np.float64)
    if total is None:
        return np.array(score, dtype=np.float64)  # a copy: `score` may be a plugin's own array
    total += score
    return total


@dataclass
class GangResult:
    gang: GangInfo
    status: Status = SUCCESS
    placed: list[Assignment] = field(default_factory=list)
    waiting: dict[str, Diagnosis] = field(default_factory=dict)  # pod key -> why it found no node

    @property
    def ok(self) -> bool:
        return self.status.ok

    @property
    def code(self) -> Code:
        return self.status.code

    def message(self) -> str:
        return self.status.message or f"placed {len(self.placed)} pod(s)"


class Scheduler:
    """Filter -> score -> pick node -> pick devices -> reserve, per pod; all-or-nothing per gang."""

    def __init__(self, state: ClusterState, profile: Profile, *, seed: int = 0, workload=None):
        self.state = state
        self.profile = profile
        self.ctx = CycleContext(state, np.random.default_rng(seed), workload)
        self.evaluator = Evaluator(profile, self.ctx)
        self._prechecked: dict[Demand, str | None] = {}  # per demand, for the state's current epoch
        self._prechecked_epoch = state.epoch
        self._largest: np.ndarray | None = None  # per scalar resource, the most any node has (this epoch)

    def precheck(self, demand: Demand) -> str | None:
        """A reason the demand fits no node even in an empty cluster, or None."""
        if self._prechecked_epoch != self.state.epoch or len(self._prechecked) >= 4096:
            self._prechecked.clear()
            self._prechecked_epoch = self.state.epoch
            self._largest = None
        try:
            return self._prechecked[demand]
        except KeyError:
            reason = self._prechecked[demand] = self._precheck(demand)
            return reason

    def _precheck(self, demand: Demand) -> str | None:
        state = self.state
        try:
            vec = state.vector(demand)
        except ModelError as e:
            return str(e)
        if self._largest is None:
            self._largest = state.allocatable.max(axis=0, initial=np.iinfo(np.int64).min)
        too_big = [state.resources[j] for j in np.flatnonzero(self._largest < vec)]  # every node has less
        if too_big:
            return f"pod requests more {too_big[0]} than any node has ({vec[state.res_index[too_big[0]]]})"
        if demand.gpu_count > state.max_gpus:
            return f"pod requests {demand.gpu_count} {GPU} but the largest node has {state.max_gpus}"
        if demand.gpu_count and demand.gpu_models and not any(m in state.model_index for m in demand.gpu_models):
            return f"pod requests GPU model(s) {sorted(demand.gpu_models)} that no node has"
        return None

    def place_pod(self, pod: Pod) -> Assignment | Diagnosis:
        """Reserve a node and devices for one pod in the state (inside the caller's trial, if any)."""
        demand = pod.demand
        reason = self.precheck(demand)
        if reason:
            return Diagnosis(self.state.n_nodes, unschedulable=reason)
        feasible = self.evaluator.mask(demand).nonzero()[0]
        if not feasible.size:
            return self.evaluator.diagnose(demand)
        node = int(feasible[0]) if feasible.size == 1 else self._select(demand, feasible)
        devices = self.profile.devices(self.ctx, demand, node) if demand.gpu_count else ()
        return self.state.assign(pod.key, demand, node, devices)

    def _select(self, demand: Demand, feasible: np.ndarray) -> int:
        total = self.evaluator.scores(demand, feasible)
        best = (total == total.max()).nonzero()[0]
        if len(best) == 1 or self.profile.tie_break == "first":
            return int(feasible[best[0]])
        return int(feasible[best[self.ctx.rng.integers(len(best))]])

    def schedule_gang(self, gang: GangInfo) -> GangResult:
        """Place the gang's pods whole: at least minMember (counting `gang.bound`, members already holding
        nodes) get nodes and devices, or the state is left exactly as it was."""
        group, bound = gang.group, gang.bound
        result = GangResult(gang)
        if not gang.pods:
            result.status = Status.unresolvable(f"gang {group.key}: no member waits for a node")
            return result
        if group.min_member > len(gang.pods) + len(bound):
            result.status = Status.unresolvable(
                f"PodGroup {group.key}: spec.minMember={group.min_member} but only "
                f"{len(gang.pods) + len(bound)} pod(s) of the group exist")
            return result
        if not bound and group.min_resources:
            short = self._min_resources_short(group.min_resources)
            if short:
                result.status = Status.unschedulable(f"PodGroup {group.key}: spec.minResources {short}")
                return result
        gang_nodes = np.zeros(self.state.n_nodes, dtype=bool)
        for a in bound:
            gang_nodes[a.node] = True
        self.ctx.gang_nodes = gang_nodes
        failed: dict[Demand, Diagnosis] = {}
        # biggest members first: they have the fewest candidate nodes
        order = sorted(gang.pods, key=lambda p: p.demand.gpu_total_milli, reverse=True)
        try:
            with self.state.trial() as trial:
                for i, pod in enumerate(order):
                    diag = failed.get(pod.demand) if failed else None  # an identical member already found no node
                    outcome = diag if diag is not None else self.place_pod(pod)
                    if isinstance(outcome, Diagnosis):
                        failed[pod.demand] = outcome
                        result.waiting[pod.key] = outcome
                        if len(result.placed) + len(bound) + len(order) - i - 1 < group.min_member:
                            break  # minMember is out of reach
                    else:
                        result.placed.append(outcome)
                        gang_nodes[outcome.node] = True
                if result.placed and len(result.placed) + len(bound) >= group.min_member:
                    trial.commit()
                    return result
        finally:
            self.ctx.gang_nodes = None
        for pod in order[len(result.placed) + len(result.waiting):]:
            result.waiting.setdefault(pod.key, next(iter(failed.values())))
        placed, result.placed = len(result.placed), []
        first = next(iter(failed.values()))
        if len(bound) >= group.min_member:  # the gang runs; these extra members wait for room
            msg = (f"gang {group.key} runs with {len(bound)} of {len(bound) + len(order)} pods "
                   f"(minMember={group.min_member}); this pod waits for room: {first.message()}")
        else:
            msg = (f"{placed}/{len(order)} pods fit, minMember={group.min_member}"
                   + (f" ({len(bound)} bound)" if bound else "") + f"; {first.message()}")
        resolvable = self._could_fit_empty(gang, failed)
        result.status = Status.unschedulable(msg) if resolvable else Status.unresolvable(msg)
        return result

    def _could_fit_empty(self, gang: GangInfo, failed: dict[Demand, Diagnosis]) -> bool:
        """False when no amount of freed capacity can place the gang: a member the pre-check rejects or
        that no node admits by its attributes (selectors, taints, GPU model, cordons), or more GPUs than all
        the nodes that admit the members have."""
        for d, diag in failed.items():
            if diag.unschedulable or not self.evaluator.static_mask(d).any():
                return False
        need = gang.group.min_member - len(gang.bound)
        gpus = sorted(p.demand.gpu_total_milli for p in gang.pods)[:max(need, 0)]
        if not sum(gpus):
            return True
        admits = np.zeros(self.state.n_nodes, dtype=bool)
        for d in {p.demand for p in gang.pods}:
            admits |= self.evaluator.static_mask(d)
        return int(self.state.gpu_cap[admits].sum()) >= sum(gpus)

    def _min_resources_short(self, min_resources: tuple[tuple[str, int], ...]) -> str:
        """coscheduling's PreFilter: the schedulable nodes' free resources must cover the group's
        minResources before any member is placed. Empty if they do, else what is short."""
        state = self.state
        usable = ~state.unschedulable
        short = []
        for res, qty in min_resources:
            if res == GPU:
                free = int((state.gpu_free[usable] // 1000).sum())
            elif res in state.res_index:
                free = int(state.free[usable, state.res_index[res]].sum())
            else:
                free = 0
            if free < qty:
                short.append(f"{res}={qty} exceeds the {free} free")
        return ", ".join(short)
