"""The live scheduler: watch events into the cache, run the core's scheduling pass, bind what it placed.

One thread owns the cache and the core's ClusterState: informers, the binder and timers only put events on
its queue. The pass (`gangsched.cycle.run_pass`) places whole gangs in state trials; the loop assumes each
placed pod in the cache and posts its binding; a failed binding is retried while the reservation holds,
then forgotten (the pod waits again). The give-back of incomplete gangs lives in `giveback`, preemption in
`preemption`, PodGroup status in `podgroups`; every collaborator is passed in (see `run.build` for the
production wiring).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import repeat

from gangsched.core import Evaluator, GangResult, Scheduler
from gangsched.cycle import run_pass
from gangsched.frag import Workload
from gangsched.framework import GangInfo
from gangsched.live import informer as inf
from gangsched.live.binder import BIND, BindOutcome, BindRequest
from gangsched.live.cache import Cache, GangKey, GangView
from gangsched.live.giveback import GiveBack
from gangsched.live.kube import NOT_LEADER
from gangsched.live.metrics import SchedulerMetrics
from gangsched.live.podgroups import NATIVE_API, PODGROUP_API, flush_status
from gangsched.live.ports import BindSink, Recorder, StatusSink
from gangsched.live.preemption import Preemptor
from gangsched.profile import Profile
from gangsched.result import Code, Status

log = logging.getLogger(__name__)

BIND_RETRIES = 5
GATHER_GRACE = 2.0  # seconds a gang may lack pods before its members are told (its controller creates them)
CALL = "CALL"  # an event kind: run the callable on the loop's thread, between passes (a consistent read)


@dataclass
class Track:
    """Retry state of one gang between passes."""

    last: Status | None = None  # the last attempt's status; None: try at the next pass
    backoff: float = 0.0
    retry_at: float = 0.0
    freed_seen: int = -1  # an UNSCHEDULABLE gang is retried early once capacity is freed ...
    epoch_seen: int = -1  # ... an UNRESOLVABLE one only when it or the nodes change
    told: str = ""  # the last message posted as an Event


class LiveScheduler:
    def __init__(self, cache: Cache, core: Scheduler, profile: Profile, binder: BindSink, recorder: Recorder,
                 status: StatusSink, giveback: GiveBack, *, clock: Callable[[], float] = time.time,
                 max_backoff: float = 10.0, events: queue.Queue | None = None, preemptor: Preemptor | None = None,
                 informers: Callable[[queue.Queue, threading.Event], list] | None = None,
                 metrics: SchedulerMetrics | None = None):
        self.cache, self.core, self.profile = cache, core, profile
        self.binder, self.recorder, self.status, self.giveback = binder, recorder, status, giveback
        self.clock, self.max_backoff, self.preemptor = clock, max_backoff, preemptor
        self.events: queue.Queue = events if events is not None else queue.Queue()  # the binder's outcomes too
        self.stop = threading.Event()
        self._start_informers = informers
        self.informers: list[inf.Informer] = []
        self.queue = profile.new_queue()
        self.tracks: dict[GangKey, Track] = {}
        self.binding: dict[str, BindRequest] = {}  # pod key -> binding in flight
        self.gathering: dict[GangKey, float] = {}  # gangs still short of minMember pods -> since when
        self._workload: tuple[set, float] | None = None  # the shapes FGD's workload was built from, and when
        self.workload_refresh = 30.0
        self.alive_at = time.monotonic()
        self._synced_at = 0.0
        self.stats: Counter[str] = Counter()
        self.metrics = metrics or SchedulerMetrics(profile=profile.name)

    # ---- the loop --------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._start_informers is not None:
            self.informers = self._start_informers(self.events, self.stop)

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    @property
    def filled(self) -> bool:
        """The informers synced and their lists applied: the books are whole (they may lag the watch)."""
        return self._synced_at > 0

    def run(self, leading: threading.Event | None = None) -> None:
        """The loop. With `leading`, a standby until it is set: the informers run and the books are kept (so a
        replica taking over schedules at once), but nothing is scheduled."""
        if not self.informers:
            self.start()
        try:
            while not self.stop.is_set():
                self.step(schedule=leading is None or leading.is_set())
        finally:
            self.shutdown()

    def step(self, wait: float = 0.05, schedule: bool = True) -> None:
        """Apply every queued event, then run one scheduling pass."""
        self.alive_at = time.monotonic()
        try:
            item = self.events.get(timeout=wait)
            while True:
                self.handle(*item)
                item = self.events.get_nowait()
        except queue.Empty:
            pass
        if not self.synced:
            return
        if not self._synced_at:
            self._synced_at = time.monotonic()
            log.info("informers synced: %d nodes, %d pods, %d PodGroups", len(self.cache.nodes),
                     len(self.cache.pods), len(self.cache.groups))
        if schedule:
            self.cycle()

    def handle(self, kind: str, typ: str, obj) -> None:
        try:
            if kind == BIND:
                self._bind_done(obj)
            elif kind == CALL:
                obj()
            else:
                self.cache.apply(kind, typ, obj)
        except Exception:  # one bad object must not stop the loop: it is skipped, and logged
            self.stats["event_errors"] += 1
            log.exception("%s %s event not applied", kind, typ)

    def cycle(self) -> None:
        now = self.clock()
        self.stats["cycles"] += 1
        self.cache.refresh_nodes()
        self._refresh_workload(now)
        self.giveback.check(now)
        for gkey in self.cache.take_dirty():
            self._requeue(gkey)
        self._tell_gathering(now)
        run_pass(self.core, self.queue, now, ready=self._ready, on_result=self._on_result,
                 holds=self.preemptor.holds if self.preemptor else None)
        self._flush_status()
        self.metrics.refresh(self.cache, self.core.ctx.workload)

    def shutdown(self) -> None:
        """Finish the bindings of gangs already placed (never leave one half-bound), then stop."""
        self.stop.set()
        self.binder.shutdown()
        while not self.events.empty():  # record the last outcomes, so status and logs are right
            kind, typ, obj = self.events.get_nowait()
            if kind == BIND:
                self.handle(kind, typ, obj)

    # ---- the queue -------------------------------------------------------------------------------------------
    def _requeue(self, gkey: GangKey) -> None:
        """The gang changed: queue it as it is now, or say why it cannot be."""
        view = self.cache.view(gkey)
        track = self.tracks.get(gkey)
        if view is None or view.info is None or view.problem:
            self.queue.remove(gkey)
            if view is None:
                self.tracks.pop(gkey, None)
                self.gathering.pop(gkey, None)
                if self.preemptor:
                    self.preemptor.forget(gkey)
            elif view.info is not None and not any(p.error or p.gated for p in view.waiting):
                # still gathering its pods: normal for a moment, worth an Event only if it lasts
                self.gathering.setdefault(gkey, self.clock())
            elif view.problem:
                self._tell(view, track or self.tracks.setdefault(gkey, Track()), view.problem)
            return
        self.gathering.pop(gkey, None)
        self.queue.add(view.info)
        if track is not None:
            track.last = None  # a change to the gang itself: try it again at once

    def _tell_gathering(self, now: float) -> None:
        for gkey, since in list(self.gathering.items()):
            if now - since >= GATHER_GRACE:
                del self.gathering[gkey]
                view = self.cache.view(gkey)
                if view is not None and view.problem:
                    self._tell(view, self.tracks.setdefault(gkey, Track()), view.problem)

    def _ready(self, gang: GangInfo) -> Status | None:
        waits = self._waits(gang)
        if waits is None:
            self.metrics.attempt_started()  # run_pass calls schedule_gang next
        return waits

    def _waits(self, gang: GangInfo) -> Status | None:
        track = self.tracks.get(gang.key)  # type: ignore[arg-type]
        if track is None or track.last is None:
            return None
        if track.last.code == Code.UNRESOLVABLE:
            return None if track.epoch_seen != self.cache.node_epoch else track.last
        if self.clock() >= track.retry_at or track.freed_seen != self.cache.freed:
            return None
        return track.last

    def _on_result(self, gang: GangInfo, result: GangResult, starving: bool) -> None:
        gkey: GangKey = gang.key  # type: ignore[assignment]
        track = self.tracks.setdefault(gkey, Track())
        self.stats[f"attempts_{result.code.name.lower()}"] += 1
        self.metrics.attempt_done(result.code)
        evicted = self.preemptor.evicted if self.preemptor else 0
        said = self.preemptor.settle(gang, result) if self.preemptor else None
        if self.preemptor:
            self.metrics.preempted(self.preemptor.evicted - evicted)
        if result.ok:
            self.stats["gangs_scheduled"] += 1
            self.metrics.gang_placed(gkey, [a.pod_key for a in result.placed], gang.enqueued)
            for a in result.placed:
                self.cache.assume(a)
                info = self.cache.pods[a.pod_key]
                req = BindRequest(gkey.namespace, info.obj["metadata"]["name"], info.obj["metadata"].get("uid", ""),
                                  a.node_name, a.devices, gkey)
                self.binding[a.pod_key] = req
                self.binder.submit(req)
            self.tracks.pop(gkey, None)
            return
        self._backoff(track, result.status)
        view = self.cache.view(gkey)
        if view is None:
            return
        message = said.message if said is not None else result.message()
        if starving and result.code == Code.UNRESOLVABLE:
            message += "; it would not fit even on an empty cluster, so it does not hold back the gangs behind it"
        self._tell(view, track, message)

    def _backoff(self, track: Track, status: Status) -> None:
        track.last = status
        track.backoff = min(max(track.backoff * 2, 1.0), self.max_backoff)
        track.retry_at = self.clock() + track.backoff
        track.freed_seen = self.cache.freed
        track.epoch_seen = self.cache.node_epoch

    def _tell(self, view: GangView, track: Track, message: str) -> None:
        """FailedScheduling on each waiting member (the invalid ones with their own reason) and the PodGroup."""
        if message == track.told:
            return
        track.told = message
        for p in view.waiting:
            self.recorder.record(p.obj, "Pod", "FailedScheduling", p.error or message)
        if view.group_obj is not None:
            api = view.group_obj.get("apiVersion") or PODGROUP_API
            self.recorder.record(view.group_obj, "PodGroup", "FailedScheduling", message, api_version=api)
            if api == NATIVE_API:  # its Unschedulable condition carries the message
                self.cache.dirty_groups.add(view.key.ref)

    def _refresh_workload(self, now: float) -> None:
        self._workload = refresh_workload(self.core, self.profile, self.cache, self._workload, now,
                                          self.workload_refresh)

    # ---- binding outcomes ------------------------------------------------------------------------------------
    def _bind_done(self, out: BindOutcome) -> None:
        req, err = out.request, out.error
        key = f"{req.namespace}/{req.name}"
        if self.binding.get(key) != req:
            return  # the pod was deleted, re-created or finished meanwhile
        if err is None or (err.status == 409 and "already assigned" in err.message):
            # 409: an earlier attempt whose answer we lost did bind it; the watch re-accounts it if elsewhere
            del self.binding[key]
            self.stats["pods_bound"] += 1
            self.metrics.binding_done(req.gang, key, ok=True)  # type: ignore[arg-type]
            info = self.cache.pods.get(key)
            if info is not None and err is None:
                self.recorder.record(info.obj, "Pod", "Scheduled", f"Successfully assigned {key} to {req.node}",
                                     warning=False)
            return
        if err.reason == NOT_LEADER or self.stop.is_set():
            del self.binding[key]  # we no longer lead (or are stopping): the next leader finishes the gang
            self.metrics.binding_done(req.gang, key, ok=False)  # type: ignore[arg-type]
            return
        self.stats["bind_errors"] += 1
        if err.retriable and req.attempt + 1 < BIND_RETRIES:
            retry = replace(req, attempt=req.attempt + 1)
            self.binding[key] = retry  # the reservation stays while we retry
            self.binder.submit(retry, delay=min(0.2 * 2 ** req.attempt, 5.0))
            return
        log.warning("binding %s to %s failed: %s", key, req.node, err)
        del self.binding[key]
        self.metrics.binding_done(req.gang, key, ok=False)  # type: ignore[arg-type]
        self.cache.forget(key)
        self.cache.dirty.discard(req.gang)  # type: ignore[arg-type]  # re-queued here, to wait out a backoff
        track = self.tracks.setdefault(req.gang, Track())  # type: ignore[arg-type]
        self._requeue(req.gang)  # type: ignore[arg-type]
        self._backoff(track, Status.unschedulable(f"binding to {req.node} failed: {err}"))
        info = self.cache.pods.get(key)
        if info is not None and err.status != 404:
            self.recorder.record(info.obj, "Pod", "FailedBinding", f"binding to {req.node} failed: {err}")

    # ---- PodGroup status -------------------------------------------------------------------------------------
    def _flush_status(self) -> None:
        flush_status(self.cache, self.status, self._told)

    def _told(self, key: str) -> str:
        track = self.tracks.get(GangKey(*key.split("/", 1), True))  # type: ignore[call-arg]
        return track.told if track else ""


def refresh_workload(core: Scheduler, profile: Profile, cache: Cache, last: tuple[set, float] | None, now: float,
                     every: float = 30.0) -> tuple[set, float] | None:
    """FGD scores against the workload's typical pods: here, the shapes of the pods the cluster holds or waits
    for, refreshed when a new shape shows up or the mix has had time to drift. Returns what the workload was
    built from and when (pass it back next time); the live scheduler and the extender both call it."""
    if not profile.needs_workload:
        return last
    shapes = cache.shapes
    if last is not None:
        seen, at = last
        if now - at < every and all(d in seen for d in shapes):
            return last
    cache.shapes = shapes = +shapes  # drop shapes no pod has any more
    core.ctx.workload = Workload.from_demands([d for d, n in shapes.items() for d in repeat(d, n)])
    core.evaluator = Evaluator(profile, core.ctx)  # its cached scores assumed the old mix
    return (set(shapes), now)
