"""Preemption study for the time mode: the same Philly jobs, some of them high priority, replayed under three
policies (`gangsched simulate time --preemption-study`).

Common to all three: one queue per vc (jobs are confined to their vc, so vcs never interact), ordered by
priority, then submission (kube-scheduler's PrioritySort), with greedy backfill: a job that does not fit is
passed over and later ones may start. A job runs for its trace duration once all its pods hold GPUs.

- `none`: no preemption. Each job is placed whole through `Scheduler.schedule_gang` or waits.
- `per-pod`: kube-scheduler without gangs. A job's pods are placed one at a time (`Scheduler.place_pod`) and
  each placed pod holds its GPUs at once, so a job can be *partial*: some pods placed, not running. A pod that
  fits nowhere and has a priority above some pods of its vc preempts on one node, as `selectVictimsOnNode`
  and `pickOneNodeForPreemption` do: on each node every lower-priority pod is removed, then put back the most
  important first (higher priority, placed earlier) while the pod still fits; the node chosen has the lowest
  highest-victim priority, then the fewest victim pods, then the fewest victim GPUs. Victim pods are evicted
  alone: a running job that loses one stops (its work so far is lost; it reruns from scratch once whole again)
  and its other pods keep their GPUs while it waits in the queue to get the lost pod back. A job that stays
  partial for `partial_timeout` seconds (as a training job whose workers wait for their peers times out) gives
  back all its pods and queues again from nothing. Pods of a job never preempt each other.
- `gang`: gangsched. A high-priority gang that does not fit calls `preempt.find_victims` with the running
  jobs of its vc (`Running` with their pods and start time); the victims are evicted whole (they queue again,
  their work lost) and the preemptor is placed at once, at the same instant. No job is ever partial.

Victims go back to the queue with their original submission time, so a job's JCT counts the work it lost.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from gangsched.core import Scheduler
from gangsched.framework import GangInfo
from gangsched.model import Node, Pod, PodGroup
from gangsched.preempt import Running, find_victims
from gangsched.profile import Profile, load_profile
from gangsched.result import Code
from gangsched.sim.philly import GPUS_PER_NODE, Job, pod_demands
from gangsched.state import Assignment, ClusterState

POLICIES = ("none", "per-pod", "gang")
COMPLETION, TIMEOUT, ARRIVAL, RETRY = 0, 1, 2, 3  # at equal times completions free GPUs first, then timeouts
RETRY_SECONDS = 60.0  # a job that timed out partial waits this long before its pods queue again
STALL_ROUNDS = 10_000  # event batches in a row without a start or a completion: a livelock, give up
PENDING, RUNNING, DONE = 0, 1, 2


@dataclass
class StudyOutcome:
    """Per job (in the replay's job order) its final start (the start of the run that completed) and finish,
    plus what preemption cost. `evictions`: (time, victim job, preemptor job) per victim job per preemption."""

    policy: str
    jobs: list[Job]
    start: np.ndarray
    finish: np.ndarray
    total_gpus: int
    lost_gpu_seconds: float = 0.0  # GPU-seconds of work thrown away by evictions
    partial_gpu_seconds: float = 0.0  # GPU-seconds held by pods of jobs that were not running
    busy_gpu_seconds: float = 0.0  # GPU-seconds of running jobs (evicted runs included)
    evictions: list[tuple[float, int, int]] = field(default_factory=list)
    victim_pods: int = 0
    restarts: int = 0  # per-pod: partial jobs that timed out and gave back their pods
    livelock: float | None = None  # per-pod: when the replay gave up on partial jobs that never progressed
    max_partial_jobs: int = 0  # the most jobs partial at once
    starts: list[tuple[float, int]] = field(default_factory=list)  # every (time, job) a run began
    end: float = 0.0  # the last event's time
    errors: list[str] = field(default_factory=list)

    @property
    def preemptions(self) -> int:
        return len(self.evictions)


class PreemptionReplay:
    def __init__(self, nodes: list[Node], jobs: list[Job], policy: str, profile: Profile | None = None, *,
                 partial_timeout: float | None = 3600.0, seed: int = 0):
        if policy not in POLICIES:
            raise ValueError(f"unknown preemption policy {policy!r}; expected one of {POLICIES}")
        self.policy, self.jobs, self.partial_timeout = policy, jobs, partial_timeout
        self.state = ClusterState(nodes)
        self.scheduler = Scheduler(self.state, profile or load_profile("time-fifo-backfill"), seed=seed)
        self.lowest = min((j.priority for j in jobs), default=0)
        self.pods: list[list[Pod]] = []
        self.gangs: list[GangInfo] = []
        for i, job in enumerate(jobs):
            pods = [Pod(f"job-{i}-{k}", d, namespace=job.vc, priority=job.priority, group=f"job-{i}")
                    for k, d in enumerate(pod_demands(job.vc, job.gpus))]
            group = PodGroup(f"job-{i}", min_member=len(pods), namespace=job.vc, priority=job.priority,
                             creation=job.submit)
            self.pods.append(pods)
            self.gangs.append(GangInfo(group, pods, enqueued=job.submit, duration=job.duration, key=i))
        self.owner = {p.key: (i, p) for i, pods in enumerate(self.pods) for p in pods}
        self.status = [PENDING] * len(jobs)
        self.run_id = [0] * len(jobs)  # bumped per start: a completion event of an evicted run is stale
        self.partial_id = [0] * len(jobs)  # bumped each time a job becomes partial: stale timeouts
        self.started = [0.0] * len(jobs)
        self.placed: list[dict[str, float]] = [{} for _ in jobs]  # job -> its placed pods' keys -> placed at
        self.pending: dict[str, list[tuple[int, float, int]]] = defaultdict(list)  # vc -> sorted (-prio, t, i)
        self.running: dict[str, set[int]] = defaultdict(set)  # vc -> running jobs
        self.freed: Counter[str] = Counter()  # vc -> bumped whenever GPUs of the vc are released
        self.changed: Counter[str] = Counter()  # vc -> bumped on any placement or release in the vc
        self.fit_failed: dict[tuple, int] = {}  # (vc, GPUs) -> `freed[vc]` when it last did not fit
        self.preempt_failed: dict[tuple, int] = {}  # (vc, GPUs, priority) -> `changed[vc]` when it last failed
        self.busy = self.partial_gpus = 0
        self.partial_jobs: set[int] = set()
        self.backoff: set[int] = set()  # jobs waiting out RETRY_SECONDS after a partial timeout
        self.events: list[tuple[float, int, int, int, int]] = []
        self._seq = itertools.count()
        self.now = jobs[0].submit if jobs else 0.0
        nan = np.full(len(jobs), np.nan)
        self.out = StudyOutcome(policy, jobs, nan.copy(), nan.copy(), len(nodes) * GPUS_PER_NODE)

    # ---- event loop -------------------------------------------------------------------------------------
    def run(self) -> StudyOutcome:
        for i, job in enumerate(self.jobs):
            self._push(job.submit, ARRIVAL, i, 0)
        stalled = 0
        while self.events:
            if stalled > STALL_ROUNDS:  # partial jobs holding each other's GPUs, timing out for ever
                self.out.livelock = self.now
                self.out.errors.append(f"livelock: {len(self.partial_jobs)} partial job(s) and nothing running "
                                       f"for {STALL_ROUNDS} rounds; stopped at t={self.now:.0f}")
                break
            progress = len(self.out.starts) + int(np.count_nonzero(~np.isnan(self.out.finish)))
            now = self.events[0][0]
            self._advance(now)
            dirty: set[str] = set()
            while self.events and self.events[0][0] == now:
                _, kind, _, i, token = heapq.heappop(self.events)
                if self._handle(kind, i, token, now):
                    dirty.add(self.jobs[i].vc)
            for vc in sorted(dirty):
                for _ in range(100):  # evictions free GPUs others may use: pass again until nothing changes
                    before = self.changed[vc]
                    self._pass(vc, now)
                    if self.changed[vc] == before:
                        break
            done = len(self.out.starts) + int(np.count_nonzero(~np.isnan(self.out.finish)))
            stalled = 0 if done != progress else stalled + 1
        self.out.end = self.now
        return self.out

    def _push(self, t: float, kind: int, i: int, token: int) -> None:
        heapq.heappush(self.events, (t, kind, next(self._seq), i, token))

    def _advance(self, t: float) -> None:
        dt = t - self.now
        self.out.partial_gpu_seconds += self.partial_gpus * dt
        self.out.busy_gpu_seconds += self.busy * dt
        self.now = t

    def _handle(self, kind: int, i: int, token: int, now: float) -> bool:
        job = self.jobs[i]
        if kind == ARRIVAL:
            self._enqueue(i)
            return True
        if kind == COMPLETION:
            if self.status[i] != RUNNING or token != self.run_id[i]:
                return False  # the run was evicted
            self.status[i] = DONE
            self.running[job.vc].discard(i)
            self.busy -= job.gpus
            for key in self.placed[i]:
                self.state.release(key)
            self.placed[i] = {}
            self._bump(job.vc, freed=True)
            self.out.finish[i] = now
            return True
        if kind == RETRY:
            self.backoff.discard(i)
            return self.status[i] == PENDING
        # TIMEOUT: a job partial since the timeout was set gives back its pods and, after a backoff (so that
        # the others can use them first), queues again from nothing
        if self.status[i] != PENDING or token != self.partial_id[i] or not self.placed[i]:
            return False
        for key in list(self.placed[i]):
            self._release_pod(i, key)
        self.out.restarts += 1
        self.backoff.add(i)
        self._push(now + RETRY_SECONDS, RETRY, i, 0)
        return True

    def _enqueue(self, i: int) -> None:
        job = self.jobs[i]
        bisect.insort(self.pending[job.vc], (-job.priority, job.submit, i))

    def _dequeue(self, i: int) -> None:
        job = self.jobs[i]
        lane = self.pending[job.vc]
        del lane[bisect.bisect_left(lane, (-job.priority, job.submit, i))]

    def _bump(self, vc: str, freed: bool) -> None:
        self.changed[vc] += 1
        if freed:
            self.freed[vc] += 1

    # ---- passes -----------------------------------------------------------------------------------------
    def _pass(self, vc: str, now: float) -> None:
        for _, _, i in list(self.pending[vc]):
            if self.status[i] != PENDING or i in self.backoff:
                continue
            if self.policy == "per-pod":
                self._try_pods(i, now)
            else:
                self._try_gang(i, now)

    def _start(self, i: int, now: float) -> None:
        job = self.jobs[i]
        self._dequeue(i)
        if i in self.partial_jobs:
            self.partial_jobs.discard(i)
            self.partial_gpus -= sum(self.owner[k][1].demand.gpu_count for k in self.placed[i])
        self.status[i] = RUNNING
        self.run_id[i] += 1
        self.started[i] = now
        self.running[job.vc].add(i)
        self.busy += job.gpus
        self.out.start[i] = now
        self.out.starts.append((now, i))
        self._push(now + job.duration, COMPLETION, i, self.run_id[i])

    def _stop(self, i: int, now: float) -> None:
        """A running job loses its run (evicted whole, or one of its pods evicted): the work is lost."""
        job = self.jobs[i]
        self.status[i] = PENDING
        self.run_id[i] += 1
        self.running[job.vc].discard(i)
        self.busy -= job.gpus
        self.out.lost_gpu_seconds += job.gpus * (now - self.started[i])
        self.out.start[i] = np.nan
        self._enqueue(i)

    # ---- none / gang ------------------------------------------------------------------------------------
    def _try_gang(self, i: int, now: float) -> bool:
        job, gang = self.jobs[i], self.gangs[i]
        shape = (job.vc, job.gpus)
        if self.fit_failed.get(shape) != self.freed[job.vc]:
            result = self.scheduler.schedule_gang(gang)
            if result.ok:
                self._place_gang(i, result.placed, now)
                return True
            if result.code == Code.UNRESOLVABLE:
                self._give_up(i, result.message())
                return False
            self.fit_failed[shape] = self.freed[job.vc]
        if self.policy != "gang" or job.priority <= self.lowest:
            return False
        pshape = (job.vc, job.gpus, job.priority)
        if self.preempt_failed.get(pshape) == self.changed[job.vc]:
            return False
        running = [Running(j, tuple(self.placed[j]), self.jobs[j].priority, self.started[j])
                   for j in sorted(self.running[job.vc]) if self.jobs[j].priority < job.priority]
        pre = find_victims(self.scheduler, gang, running) if running else None
        if pre is None or not pre.ok:
            self.preempt_failed[pshape] = self.changed[job.vc]
            return False
        for unit in pre.victims:  # whole gangs (min_member is None): evict every pod, requeue the job
            v = unit.gang.key
            assert isinstance(v, int) and self.status[v] == RUNNING
            for key in list(self.placed[v]):
                self.state.release(key)
            self.out.victim_pods += len(self.placed[v])
            self.placed[v] = {}
            self._stop(v, now)
            self.out.evictions.append((now, v, i))
        self._bump(job.vc, freed=True)
        result = self.scheduler.schedule_gang(gang)
        if not result.ok:  # find_victims placed it in a trial of this very state: should never happen
            self.out.errors.append(f"job {job.id}: victims evicted but the gang did not fit: {result.message()}")
            return False
        self._place_gang(i, result.placed, now)
        return True

    def _place_gang(self, i: int, placed: list[Assignment], now: float) -> None:
        self.placed[i] = {a.pod_key: now for a in placed}
        self._bump(self.jobs[i].vc, freed=False)
        self._start(i, now)

    def _give_up(self, i: int, why: str) -> None:
        self._dequeue(i)
        self.status[i] = DONE  # never runs: finish stays NaN
        self.out.errors.append(f"job row {self.jobs[i].id}: {why}")

    # ---- per-pod ----------------------------------------------------------------------------------------
    def _try_pods(self, i: int, now: float) -> bool:
        job = self.jobs[i]
        failed: set[int] = set()  # pod sizes that found no node for this job in this pass
        for pod in self.pods[i]:
            g = pod.demand.gpu_count
            if pod.key in self.placed[i] or g in failed:
                continue
            shape = (job.vc, g)
            ok = False
            if self.fit_failed.get(shape) != self.freed[job.vc]:
                outcome = self.scheduler.place_pod(pod)
                ok = isinstance(outcome, Assignment)
                if not ok:
                    if outcome.unschedulable:
                        self._give_up(i, outcome.message())
                        return False
                    self.fit_failed[shape] = self.freed[job.vc]
            if not ok and job.priority > self.lowest:
                ok = self._preempt_for_pod(i, pod, now)
            if ok:
                self._hold(i, pod, now)
            else:
                failed.add(g)
        if len(self.placed[i]) == len(self.pods[i]):
            self._start(i, now)
            return True
        return False

    def _hold(self, i: int, pod: Pod, now: float) -> None:
        """Pod `pod` of pending job i now holds its GPUs (the job is partial until its last pod lands)."""
        self.placed[i][pod.key] = now
        self._bump(self.jobs[i].vc, freed=False)
        if i in self.partial_jobs:
            self.partial_gpus += pod.demand.gpu_count  # `_start` takes all its pods off when it is whole
        elif len(self.placed[i]) < len(self.pods[i]):
            self.partial_gpus += pod.demand.gpu_count
            self._become_partial(i, now)

    def _become_partial(self, i: int, now: float) -> None:
        self.partial_jobs.add(i)
        self.out.max_partial_jobs = max(self.out.max_partial_jobs, len(self.partial_jobs))
        self.partial_id[i] += 1
        if self.partial_timeout is not None:
            self._push(now + self.partial_timeout, TIMEOUT, i, self.partial_id[i])

    def _release_pod(self, i: int, key: str) -> None:
        """Pod `key` of job i (pending, or running and being stopped) gives back its GPUs."""
        self.state.release(key)
        del self.placed[i][key]
        if i in self.partial_jobs:
            self.partial_gpus -= self.owner[key][1].demand.gpu_count
            if not self.placed[i]:
                self.partial_jobs.discard(i)
        self._bump(self.jobs[i].vc, freed=True)

    def _preempt_for_pod(self, i: int, pod: Pod, now: float) -> bool:
        """kube-scheduler's preemption for one pod: victims on the one node needing the least."""
        state, d, prio = self.state, pod.demand, pod.priority
        need = d.gpu_count
        best: tuple | None = None
        for node in np.flatnonzero(self.scheduler.evaluator.static_mask(d)):
            node = int(node)
            free = int((state.gpu_free[node] >= 1000).sum())
            lower = []
            for key in state.node_pods[node]:
                j, p = self.owner[key]
                if p.priority < prio:
                    lower.append((-p.priority, self.placed[j][key], key, p.demand.gpu_count))
            avail = free + sum(x[3] for x in lower)
            if avail < need:
                continue
            victims = []
            for item in sorted(lower):  # reprieve the most important first: higher priority, placed earlier
                if avail - item[3] >= need:
                    avail -= item[3]
                else:
                    victims.append(item)
            rank = (max((-v[0] for v in victims), default=-1), len(victims), sum(v[3] for v in victims), node)
            if best is None or rank < best[0]:
                best = (rank, node, [v[2] for v in victims])
        if best is None:
            self.preempt_failed[(self.jobs[i].vc, need, prio)] = self.changed[self.jobs[i].vc]
            return False
        _, node, victims = best
        hit: dict[int, int] = {}
        for key in victims:
            j, _ = self.owner[key]
            hit[j] = hit.get(j, 0) + 1
            if self.status[j] == RUNNING:
                self._stop(j, now)
                self._release_pod(j, key)
                if self.placed[j]:  # its other pods keep their GPUs: the job is partial now
                    self._become_partial(j, now)
                    self.partial_gpus += sum(self.owner[k][1].demand.gpu_count for k in self.placed[j])
            else:
                self._release_pod(j, key)
        self.out.victim_pods += len(victims)
        self.out.evictions.extend((now, j, i) for j in hit)
        devices = self.scheduler.profile.devices(self.scheduler.ctx, d, node) if need else ()
        state.assign(pod.key, d, node, devices)
        return True


# ---- metrics ------------------------------------------------------------------------------------------------

def _stat(a: np.ndarray, q: float | None = None) -> float:
    if not a.size:
        return float("nan")
    return float(a.mean()) if q is None else float(np.percentile(a, q))


def summarize(out: StudyOutcome) -> dict[str, float]:
    prio = np.array([j.priority for j in out.jobs])
    submit = np.array([j.submit for j in out.jobs])
    done = ~np.isnan(out.finish)
    high = prio > prio.min() if prio.size else prio.astype(bool)
    wait_h = (out.start - submit)[done & high]
    jct_l = (out.finish - submit)[done & ~high]
    jct_h = (out.finish - submit)[done & high]
    return {"jobs": len(out.jobs), "high_jobs": int(high.sum()), "finished": int(done.sum()),
            "unfinished": int((~done).sum()),
            "high_wait_avg": _stat(wait_h), "high_wait_p99": _stat(wait_h, 99), "high_jct_avg": _stat(jct_h),
            "low_jct_avg": _stat(jct_l), "low_jct_p99": _stat(jct_l, 99),
            "lost_gpu_hours": out.lost_gpu_seconds / 3600, "partial_gpu_hours": out.partial_gpu_seconds / 3600,
            "preemptions": out.preemptions, "victim_pods": out.victim_pods, "restarts": out.restarts,
            "max_partial_jobs": out.max_partial_jobs, "gpu_hours_run": out.busy_gpu_seconds / 3600,
            "errors": len(out.errors)}


# ---- the study: one job list, three policies ----------------------------------------------------------------

LABELS = {"none": "no preemption", "per-pod": "per-pod (kube-scheduler)", "gang": "gang (gangsched)"}
HEADERS = ["policy", "high wait avg s", "high wait p99 s", "low JCT avg s", "low JCT p99 s", "GPU-h lost",
           "GPU-h partial", "preemptions", "victim pods", "restarts", "unfinished", "run s"]


def run_study(nodes: list[Node], jobs: list[Job], *, partial_timeout: float | None = 3600.0, seed: int = 0,
              policies: tuple[str, ...] = POLICIES) -> dict[str, tuple[StudyOutcome, dict]]:
    """Every policy over the same jobs (priorities already drawn): per policy its outcome and summary."""
    import time

    results = {}
    for policy in policies:
        began = time.perf_counter()
        out = PreemptionReplay(nodes, jobs, policy, partial_timeout=partial_timeout, seed=seed).run()
        results[policy] = (out, {**summarize(out), "runtime_s": round(time.perf_counter() - began, 2)})
    return results


def study_table(results: dict[str, tuple[StudyOutcome, dict]], title: str) -> str:
    from gangsched.sim.report import table

    rows = []
    for policy, (_, r) in results.items():
        rows.append([LABELS.get(policy, policy), *(_whole(r[m]) for m in ("high_wait_avg", "high_wait_p99",
                     "low_jct_avg", "low_jct_p99")), r["lost_gpu_hours"], r["partial_gpu_hours"], r["preemptions"],
                     r["victim_pods"], r["restarts"], r["unfinished"], r["runtime_s"]])
    return table(HEADERS, rows, title=title)


def _whole(x: float) -> float | int:
    return x if x != x else round(x)


def plot_wait_cdf(path, results: dict[str, tuple[StudyOutcome, dict]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for policy, (out, _) in results.items():
        prio = np.array([j.priority for j in out.jobs])
        submit = np.array([j.submit for j in out.jobs])
        sel = (prio > prio.min()) & ~np.isnan(out.start)
        wait = np.sort(out.start[sel] - submit[sel]) / 60.0
        if wait.size:
            ax.step(np.maximum(wait, 1e-3), np.arange(1, wait.size + 1) / wait.size, where="post",
                    label=LABELS.get(policy, policy))
    ax.set_xscale("log")
    ax.set_xlabel("high-priority queueing delay, minutes (log; 0 drawn at 0.001)")
    ax.set_ylabel("fraction of high-priority jobs")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
