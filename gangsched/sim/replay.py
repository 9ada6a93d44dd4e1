"""The event-driven replay behind the time mode: jobs arrive, wait in a gang queue, run, complete.

Events sit in a heap ordered by (time, kind, seq): at equal times completions come first, so a job may start
the instant another frees its GPUs, then arrivals, then starvation checks. After each batch of events at one
timestamp, every queue that saw an event gets a scheduling pass: gangs in the queue's pop order, each placed
whole through `Scheduler.schedule_gang`, the pass stopping where `GangQueue.blocks` says a failed gang
holds up the rest (strict FIFO: any failure; otherwise a starving gang). Each vc has its own queue, as
Philly's virtual clusters did; `scope="cluster"` puts every job in one queue instead.

Two things keep a pass from costing O(queue) on long queues, without changing its outcome:
- A shape (vc, GPUs) that failed stays failed until a job of that vc completes — the vc only gets fuller
  meanwhile, and a gang of whole-node pods plus one remainder pod fits exactly when enough nodes have enough
  free GPUs, which the core's greedy placement always finds — so it is not retried.
- The shipped queue sorts' keys do not depend on the time, so pending gangs are kept in one sorted lane per
  shape (and a lane of starving gangs, oldest first, which `pop_order` puts ahead of everything). A pass
  merges the lanes' heads and drops a lane at its first failure, as the full pop order would skip the rest
  of that shape. Other sorts fall back to iterating `GangQueue.pop_order`.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gangsched.core import GangResult, Scheduler
from gangsched.cycle import run_pass
from gangsched.framework import GangInfo
from gangsched.model import Node, Pod, PodGroup
from gangsched.profile import Profile
from gangsched.queue import Fifo, GangQueue, PriorityFifo, ShortestFirst, SmallestFirst
from gangsched.result import Code, Status
from gangsched.sim.philly import GPUS_PER_NODE, Job, pod_demands
from gangsched.state import ClusterState

COMPLETION, ARRIVAL, STARVING = 0, 1, 2
STATIC_SORTS = (Fifo, PriorityFifo, ShortestFirst, SmallestFirst)  # key(gang, now) ignores now

Shape = tuple[str, int]  # (vc, GPUs)
_SHAPE_FAILED = Status.unschedulable("its shape failed since its vc last freed GPUs")


class SimClock:
    """Simulated time, advanced only by the event loop; components injected with it read `now()`."""

    def __init__(self, start: float = 0.0):
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, t: float) -> None:
        if t < self._now:
            raise RuntimeError(f"simulated time cannot go back from {self._now} to {t}")
        self._now = t


@dataclass
class Outcome:
    """Per job (in the replay's job order) its start and finish, and the step function of busy GPUs and
    pending jobs: `steps[k] = (time, busy GPUs, pending jobs)`, holding from that time until the next."""

    jobs: list[Job]
    start: np.ndarray
    finish: np.ndarray
    total_gpus: int
    steps: list[tuple[float, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # gangs the core says can never run (none expected)


@dataclass
class _Lanes:
    """A queue's pending gangs, sorted: per shape those not starving, and the starving ones by age."""

    shapes: dict[Shape, list[tuple[Any, int]]] = field(default_factory=dict)  # (sort key, job) ascending
    starving: list[tuple[float, Any, int]] = field(default_factory=list)  # (enqueued, sort key, job)


class TimeReplay:
    def __init__(self, nodes: list[Node], jobs: list[Job], profile: Profile, *, clock: SimClock | None = None,
                 scope: str = "vc", seed: int = 0, progress: bool = False, lanes: bool | None = None):
        self.jobs, self.profile, self.scope, self.progress = jobs, profile, scope, progress
        self.lanes = isinstance(profile.queue_sort, STATIC_SORTS) if lanes is None else lanes
        self.state = ClusterState(nodes)
        self.scheduler = Scheduler(self.state, profile, seed=seed)
        self.clock = clock or SimClock(jobs[0].submit if jobs else 0.0)
        self.queues: dict[str, tuple[GangQueue, _Lanes]] = {}
        self.events: list[tuple[float, int, int, int]] = []
        self._seq = itertools.count()
        self.gangs: dict[int, GangInfo] = {}  # pending job -> its gang
        self.keys: dict[int, Any] = {}  # pending job -> its sort key, fixed at arrival (lanes only)
        self.pods: dict[int, list[str]] = {}  # running job -> its pod keys
        self.released: Counter[str] = Counter()  # completions per vc: bumps whenever its GPUs free up
        self.failed_at: dict[Shape, int] = {}  # shape -> `released[vc]` when it last failed
        self.busy = 0
        self.out = Outcome(jobs, np.full(len(jobs), np.nan), np.full(len(jobs), np.nan), len(nodes) * GPUS_PER_NODE)

    def run(self) -> Outcome:
        from gangsched.sim.progress import progress  # tqdm: the sim extra, which the live scheduler lacks

        for i, job in enumerate(self.jobs):
            self._push(job.submit, ARRIVAL, i)
        with progress(len(self.jobs), self.profile.name, "job", enabled=self.progress, leave=False) as bar:
            while self.events:
                now = self.events[0][0]
                self.clock.advance(now)
                dirty: set[str] = set()
                while self.events and self.events[0][0] == now:
                    _, kind, _, i = heapq.heappop(self.events)
                    if self._handle(kind, i, now):
                        dirty.add(self._scope(self.jobs[i]))
                    bar.update(kind == COMPLETION)
                for scope in sorted(dirty):
                    queue, lanes = self.queues[scope]
                    if self.lanes:
                        self._pass_lanes(queue, lanes, now)
                    else:
                        self._pass(queue, now)
                self._record(now)
        return self.out

    # ---- events -------------------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, job: int) -> None:
        heapq.heappush(self.events, (t, kind, next(self._seq), job))

    def _scope(self, job: Job) -> str:
        return job.vc if self.scope == "vc" else "*"

    def _handle(self, kind: int, i: int, now: float) -> bool:
        """Apply one event; True if its queue needs a pass."""
        job = self.jobs[i]
        scope = self._scope(job)
        if scope not in self.queues:
            self.queues[scope] = (self.profile.new_queue(), _Lanes())
        queue, lanes = self.queues[scope]
        if kind == COMPLETION:
            for pod in self.pods.pop(i):
                self.state.release(pod)
            self.busy -= job.gpus
            self.released[job.vc] += 1
            self.out.finish[i] = now
        elif kind == ARRIVAL:
            gang = self.gangs[i] = self._gang(i, job)
            queue.add(gang)
            if self.lanes:
                self.keys[i] = queue.sort.key(gang, now)
                bisect.insort(lanes.shapes.setdefault((job.vc, job.gpus), []), (self.keys[i], i))
            if queue.starvation_seconds is not None:  # due a little early: rounding is settled on arrival
                due = now + queue.starvation_seconds
                self._push(math.nextafter(math.nextafter(due, -math.inf), -math.inf), STARVING, i)
        else:  # the gang may have waited long enough to starve
            gang = self.gangs.get(i)
            if gang is None:
                return False  # started already
            if not queue.starving(gang, now):  # a float step short of due: look again one step later
                self._push(math.nextafter(now, math.inf), STARVING, i)
                return False
            if self.lanes:
                lanes.shapes[(job.vc, job.gpus)].remove((self.keys[i], i))
                bisect.insort(lanes.starving, (gang.enqueued, self.keys[i], i))
        return True

    def _gang(self, i: int, job: Job) -> GangInfo:
        pods = [Pod(f"job-{i}-{k}", d, namespace=job.vc, priority=job.priority, group=f"job-{i}")
                for k, d in enumerate(pod_demands(job.vc, job.gpus))]
        group = PodGroup(f"job-{i}", min_member=len(pods), namespace=job.vc, priority=job.priority,
                         creation=job.submit)
        return GangInfo(group, pods, enqueued=job.submit, duration=job.duration, key=i)

    # ---- scheduling passes ------------------------------------------------------------------------------
    def _ready(self, gang: GangInfo) -> Status | None:
        """None if the gang may be tried; a shape that failed stays failed until its vc frees GPUs."""
        job = self.jobs[gang.key]
        if self.failed_at.get((job.vc, job.gpus)) == self.released[job.vc]:
            return _SHAPE_FAILED
        return None

    def _settle(self, gang: GangInfo, result: GangResult, starving: bool = False) -> None:
        i: int = gang.key  # type: ignore[assignment]
        job = self.jobs[i]
        if result.code == Code.UNRESOLVABLE:  # can never run: say so rather than wait forever
            self.out.errors.append(f"job row {job.id}: {result.message()}")
        if result.ok or result.code == Code.UNRESOLVABLE:
            self.queues[self._scope(job)][0].remove(i)
            del self.gangs[i]
            self.keys.pop(i, None)
        if not result.ok:
            if result.code != Code.UNRESOLVABLE:
                self.failed_at[(job.vc, job.gpus)] = self.released[job.vc]
            return
        now = self.clock.now()
        self.pods[i] = [a.pod_key for a in result.placed]
        self.busy += job.gpus
        self.out.start[i] = now
        self._push(now + job.duration, COMPLETION, i)

    def _try(self, i: int) -> bool:
        """Place job i's gang now if it fits (the lanes pass's step of `run_pass`); True if it left the queue."""
        gang = self.gangs[i]
        if self._ready(gang) is not None:
            return False
        result = self.scheduler.schedule_gang(gang)
        self._settle(gang, result)
        return result.ok or result.code == Code.UNRESOLVABLE

    def _pass(self, queue: GangQueue, now: float) -> None:
        """The reference pass: the core's `run_pass` over every pending gang."""
        run_pass(self.scheduler, queue, now, ready=self._ready, on_result=self._settle)

    def _pass_lanes(self, queue: GangQueue, lanes: _Lanes, now: float) -> None:
        """The same pass over the sorted lanes: starving gangs first (a failure blocks), then the shapes'
        heads merged in key order; a shape whose head fails is done for this pass."""
        while lanes.starving:
            i = lanes.starving[0][2]
            if not self._try(i):
                return  # a starving gang that does not fit blocks everything behind it
            del lanes.starving[0]
        heads = [(lane[0], shape) for shape, lane in lanes.shapes.items() if lane]
        heapq.heapify(heads)
        while heads:
            (_, i), shape = heads[0]
            lane = lanes.shapes[shape]
            if self._try(i):
                del lane[0]
                if lane:
                    heapq.heapreplace(heads, (lane[0], shape))
                else:
                    heapq.heappop(heads)
            elif queue.blocks(self.gangs[i], now):
                return
            else:
                heapq.heappop(heads)

    def _record(self, now: float) -> None:
        pending = len(self.gangs)
        steps = self.out.steps
        if steps and steps[-1][0] == now:
            steps.pop()
        if not steps or steps[-1][1:] != (self.busy, pending):
            steps.append((now, self.busy, pending))
