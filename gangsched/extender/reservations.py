"""Gang semantics through kube-scheduler's per-pod extender calls: the reservation book.

kube-scheduler asks about one pod at a time. When it asks (filter) about a member of a gang whose minMember
pods exist, the core (`Scheduler.schedule_gang`) places the whole gang at once, on the same books as
`gangsched run` (`live.cache.Cache`: every placement *assumed* there, so no later plan takes its GPUs), and
each member's filter answer is its reserved node and nothing else. A member of an incomplete gang gets no node
at all (FailedAndUnresolvableNodes), so nothing is held for a gang that cannot start and two interleaved gangs
cannot deadlock: the first one complete is placed whole, the other gets nothing.

kube-scheduler's own plugins may reject a reserved node (pod affinity, volumes, ports: what the core does not
model): the member then comes to filter with a node list that lacks it. Its movable mates (not yet at bind) are
released and the gang is re-planned, that member kept to the nodes kube-scheduler offered. The asking member
is always kept to its offered nodes.

Bind is a barrier, as coscheduling's Permit: a member's bind call waits until minMember members are bound or
at bind, then every waiting member's Binding is posted (with its GPUs as `gangsched.io/gpu-devices`; the call
that opened the barrier posts and answers first, then releases the waiting ones). A member
that kube-scheduler never brings to bind (it rejects it on every node) keeps the barrier shut: after
`bind_wait` the waiting binds fail and the whole reservation is dropped, so nothing of the gang is bound and
nothing stays held. A reservation that is never bound at all expires after `ttl`. A binding refused after the
barrier opened (its mates already posted) leaves the gang below minMember: kube-scheduler retries the member, and
if that never succeeds `live.giveback.GiveBack` deletes the bound members after the gang's timeout, as in
`gangsched run`; PodGroup status is written the same way too (`live.podgroups.flush_status`).

Plan ahead (`plan_ahead`, the default): planning a gang at 5,000 nodes takes milliseconds, too long for a
filter call, so the event side does it before kube-scheduler asks. `tick` queues every changed gang that is
complete, unreserved and without a problem in a `GangQueue` of the profile's order (as `gangsched run`'s
pass: members already bound first, starving ones, then the queue sort, priority first), and `plan_step`, which
the event thread calls after each tick with the lock released between calls, places the next one of them the
same way a filter would (`_place`: kept to kube-scheduler's offers, nudging members turned away). The first
filter of a member is then a lookup of its reserved node. A filter for a gang not planned yet plans it itself,
as without plan-ahead, so correctness never depends on the planner being ahead. A gang that did not fit or
was held for a higher-priority preemptor is tried again once capacity is freed, the nodes or the holds
change; one whose reservation was dropped (expired, a member lost, the barrier timed out) is planned ahead
again only once it changes, or when kube-scheduler asks, so a reservation kube-scheduler never binds is not
taken again and again.

Everything here runs under `lock` (a Condition: the bind barrier waits on it); the caller takes it around
every call except `bind`, which takes it itself because it waits and posts outside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gangsched.core import GangResult, Scheduler
from gangsched.extender.protocol import BindArgs, FilterVerdict
from gangsched.framework import GangInfo
from gangsched.live.binder import BindRequest
from gangsched.live.cache import Cache, GangKey, PodInfo
from gangsched.live.giveback import GiveBack
from gangsched.live.kube import ApiError
from gangsched.live.podgroups import flush_status
from gangsched.live.ports import StatusSink
from gangsched.live.preemption import Preemptor
from gangsched.live.scheduler import refresh_workload
from gangsched.model import NODE_NAME_FIELD, Requirement
from gangsched.profile import Profile
from gangsched.result import Code, Status

log = logging.getLogger(__name__)

PostBinding = Callable[[BindRequest], "ApiError | None"]
# Tell kube-scheduler to try a pod again: any update to a pod it keeps as unschedulable because an extender
# turned it down re-queues it (kube-scheduler registers the "Extender" rejector for every event), else it would
# wait for an unrelated cluster event or the 5-minute flush. Called under the lock: must not block.
Nudge = Callable[[dict, str], None]


@dataclass
class Reservation:
    gang: GangKey
    min_member: int
    expires: float
    pods: set[str] = field(default_factory=set)  # members we placed (assumed in the cache), not bound yet
    waiting: dict[str, str] = field(default_factory=dict)  # members at the bind barrier -> their node
    open: bool = False  # the barrier opened: later members bind at once
    held: bool = False  # ... by a call whose own Binding and reply go first: its mates wait for its release
    failed: str = ""  # dropped: the waiting binds return this


class Book:
    def __init__(self, cache: Cache, core: Scheduler, profile: Profile, post: PostBinding, *,
                 preemptor: Preemptor | None = None, clock: Callable[[], float] = time.time, ttl: float = 30.0,
                 bind_wait: float = 15.0, bind_retries: int = 3, nudge: Nudge | None = None,
                 giveback: GiveBack | None = None, status: StatusSink | None = None,
                 writes: Callable[[], bool] = lambda: True, plan_ahead: bool = True):
        self.cache, self.core, self.profile, self.post, self.preemptor = cache, core, profile, post, preemptor
        # as in `gangsched run`: gangs left below minMember give back their bound members; PodGroup status.
        # Only while `writes()`: the replica whose kube-scheduler leads (the others are never called).
        self.giveback, self.status, self.writes = giveback, status, writes
        self.nudge = nudge or (lambda pod, message: None)
        self.refused: set[str] = set()  # pods we sent away with no node: kube-scheduler holds them back
        self.incomplete: set[str] = set()  # ... of those, the ones sent away because their gang was incomplete
        self.clock, self.ttl, self.bind_wait, self.bind_retries = clock, ttl, bind_wait, bind_retries
        self.lock = threading.Condition(threading.RLock())
        self.reservations: dict[GangKey, Reservation] = {}
        # pod key -> nodes kube-scheduler last offered it, the list as sent (a set of thousands of names per call
        # would cost more than the rest of the call; it is made when a plan needs it)
        self.offered: dict[str, list[str]] = {}
        self._offered_all: tuple[list[str], dict] | None = None  # see _offers_all
        self.posting: set[str] = set()  # bindings being posted: their node can no longer change
        self._workload: tuple[set, float] | None = None
        self.stats: Counter[str] = Counter()
        # plan-ahead: complete gangs no one has reserved yet, in the profile's queue order; for those tried and
        # not placed, the capacity stamp they were tried at (see _stamp) and the attempt's code
        self.plan_ahead = plan_ahead
        self.ahead = profile.new_queue()
        self._tried: dict[GangKey, tuple[tuple, Code | None]] = {}

    # ---- events --------------------------------------------------------------------------------------------
    def apply(self, kind: str, typ: str, obj) -> None:
        """One informer event into the cache (a bad object is logged and skipped)."""
        try:
            self.cache.apply(kind, typ, obj)
        except Exception:
            self.stats["event_errors"] += 1
            log.exception("%s %s event not applied", kind, typ)

    def tick(self) -> None:
        """After events and periodically: nodes into the state, changed gangs queued to plan ahead, expired or
        broken reservations dropped."""
        now = self.clock()
        self.cache.refresh_nodes()
        dirty = self.cache.take_dirty()  # kube-scheduler owns the queue; we call members back, and plan ahead
        if dirty and self.incomplete:
            self._call_back(dirty)
        if self.plan_ahead:
            self._requeue(dirty)  # before the reservations settle: a drop below parks its gang past these changes
        self.refused &= self.cache.pods.keys()
        self.incomplete &= self.refused
        for gkey, res in list(self.reservations.items()):
            self._settle(gkey, res, now)
        if self.preemptor is not None:
            for gkey in [k for k in self.preemptor.holding if k not in self.cache.gangs]:
                self.preemptor.forget(gkey)
        if self.writes():
            if self.giveback is not None:
                self.giveback.check(now)
            if self.status is not None:
                flush_status(self.cache, self.status)  # (a standby keeps its changed groups for when it leads)
        self.lock.notify_all()

    def _call_back(self, dirty: set[GangKey]) -> None:
        """Members turned away while their gang was incomplete are called back once its minMember pods exist.
        kube-scheduler re-queues a pod it set aside on cluster events, but not on another unscheduled pod's
        creation: a gang completed by a member kube-scheduler itself rejects (so never asks us about) would
        leave them waiting for its 5-minute flush."""
        by_gang: dict[GangKey, list[PodInfo]] = {}
        for key in self.incomplete:
            info = self.cache.pods.get(key)
            if info is not None and info.gang in dirty:
                by_gang.setdefault(info.gang, []).append(info)
        for gkey, infos in by_gang.items():
            view = self.cache.view(gkey)
            if view is None or view.info is None or view.problem:
                continue
            for info in infos:
                self.refused.discard(info.key)
                self.incomplete.discard(info.key)
                self.nudge(info.obj, f"{gkey}: its minMember pods exist")

    def _requeue(self, dirty: set[GangKey]) -> None:
        """Changed gangs into the plan-ahead queue as they are now, or out of it."""
        for gkey in dirty:
            self._tried.pop(gkey, None)  # a change to the gang itself: try it again at once
            view = self.cache.view(gkey)
            if view is None or view.info is None or view.problem or gkey in self.reservations:
                self.ahead.remove(gkey)  # (a reserved gang is re-planned by the filter that finds its node gone)
            else:
                self.ahead.add(view.info)

    def plan_step(self) -> bool:
        """Plan ahead the next complete gang of the queue, if one is due: one gang per call, so the caller can
        release the lock between calls and kube-scheduler's calls interleave. False when nothing is due."""
        if not self.plan_ahead or not self.ahead or not self.writes():  # (a standby's kube-scheduler never asks)
            return False
        now, stamp = self.clock(), self._stamp()
        for gang in self.ahead.pop_order(now):
            gkey: GangKey = gang.key  # type: ignore[assignment]
            tried = self._tried.get(gkey)
            if tried is not None and tried[0] == stamp:  # nothing it waits for changed since
                if tried[1] in (Code.UNSCHEDULABLE, Code.ERROR) and self.ahead.blocks(gang, now):
                    return False  # it holds the line (backfill off, or starving), as in run_pass
                continue
            view = self.cache.view(gkey)  # the queue's copy orders; the plan takes the gang as it is now
            if view is None or view.info is None or view.problem or gkey in self.reservations:
                self.ahead.remove(gkey)  # a filter got there first, or the change is on its way to tick
                continue
            if self._held_for(view.info) is not None:
                self._tried[gkey] = (stamp, None)
                continue
            try:
                result = self._place(view.info)
            except Exception as e:  # the event thread must not die of one bad gang (its trial was rolled back)
                log.exception("planning gang %s ahead failed", gkey)
                result = GangResult(view.info, Status.error(f"internal error: {type(e).__name__}: {e}"))
            self.stats["planned_ahead" if result.ok else "ahead_misses"] += 1
            if result.ok:
                self.ahead.remove(gkey)
                self._tried.pop(gkey, None)
            else:
                self._tried[gkey] = (stamp, result.code)
            return True
        return False

    def _stamp(self) -> tuple:
        """What a gang that did not fit (or was held) waits for: capacity freed, the nodes, the holds."""
        holding = frozenset(self.preemptor.holding) if self.preemptor is not None else frozenset()
        return self.cache.freed, self.cache.node_epoch, holding

    def _settle(self, gkey: GangKey, res: Reservation, now: float) -> None:
        bound = {k for k in res.pods if k in self.cache.pods and self.cache.pods[k].node}
        res.pods -= bound
        lost = {k for k in res.pods if k not in self.cache.assumed}  # deleted, finished, or re-created meanwhile
        res.pods -= lost
        for k in bound | lost:
            self.offered.pop(k, None)
            self.refused.discard(k)
        if not res.pods:
            del self.reservations[gkey]
        elif lost and not res.open:
            self._drop(gkey, f"{gkey}: member(s) {', '.join(sorted(lost))} went away before binding")
        elif now > res.expires and not res.waiting and not (res.pods & self.posting):
            self.stats["expired"] += 1
            self._drop(gkey, f"{gkey}: its reservation was not bound within {self.ttl:.0f}s")

    def _drop(self, gkey: GangKey, why: str) -> None:
        """Give back every member not being bound; the waiting binds fail with `why`."""
        res = self.reservations.pop(gkey, None)
        if res is None:
            return
        log.info("dropping the reservation of %s: %s", gkey, why)
        res.failed = why
        # Parked: not planned ahead again until it changes (or kube-scheduler asks). Our own forgetting below
        # dirties it; that is no change to the gang. (Outside tick's events all dirt is ours: the event thread
        # applies events and ticks under one hold of the lock.)
        already = gkey in self.cache.dirty
        for key in res.pods - self.posting:
            self.cache.forget(key)
            self.offered.pop(key, None)
        if self.plan_ahead and not already:
            self.cache.dirty.discard(gkey)
        self.ahead.remove(gkey)
        self._tried.pop(gkey, None)
        self.lock.notify_all()

    # ---- filter / prioritize -----------------------------------------------------------------------------------
    def known(self, pod: dict) -> PodInfo | None:
        """The cache's record of the pod kube-scheduler sent, once the informer has delivered it."""
        meta = pod["metadata"]
        info = self.cache.pods.get(f"{meta.get('namespace', 'default')}/{meta['name']}")
        if info is None or (meta.get("uid") and info.obj["metadata"].get("uid") != meta.get("uid")):
            return None
        return info

    def wait_known(self, pod: dict, deadline: float) -> PodInfo | None:
        """`known`, waiting (lock released) up to `deadline` (monotonic) for our informer to catch up with
        kube-scheduler's: a pod it schedules may be newer than our watch."""
        info = self.known(pod)
        while info is None and (left := deadline - time.monotonic()) > 0:
            self.lock.wait(min(left, 0.05))
            info = self.known(pod)
        return info

    def filter(self, info: PodInfo, names: list[str]) -> FilterVerdict:
        verdict = self._filter(info, names)
        if not verdict.nodes and not verdict.error and info.gang is not None:
            self.refused.add(info.key)
        else:
            self.incomplete.discard(info.key)
        return verdict

    def _filter(self, info: PodInfo, names: list[str]) -> FilterVerdict:
        key, gkey = info.key, info.gang
        if gkey is None:  # not our scheduler name: kube-scheduler's profile and ours disagree; no opinion
            return FilterVerdict(nodes=list(names))
        if info.node:
            return FilterVerdict(error=f"pod {key} is already bound to {info.node}")
        offered = self.offered[key] = names
        node = self.cache.assumed.get(key)
        if node is not None:
            if node in offered:
                return FilterVerdict.only(node)
            if key in self.posting or key in self._waiting(gkey):
                return FilterVerdict(error=f"pod {key} is being bound to {node}")
            # kube-scheduler's own plugins reject the node we reserved: re-plan the gang around it
            self.stats["replans"] += 1
            log.info("kube-scheduler rejects %s's reserved node %s: re-planning %s", key, node, gkey)
            self._release_movable(gkey)
        view = self.cache.view(gkey)
        if view is None:
            return FilterVerdict.none(names, f"pod {key} is not waiting for a node", unresolvable=True)
        if view.problem or view.info is None:
            self.incomplete.add(key)  # (or its PodGroup is missing or invalid): called back when that changes
            return FilterVerdict.none(names, view.problem or f"{gkey} cannot be scheduled", unresolvable=True)
        gang = view.info
        holder = self._held_for(gang)
        if holder is not None:
            return FilterVerdict.none(names, f"{gkey}: capacity is held for {holder} (higher priority) while the "
                                             f"pods it preempted terminate", unresolvable=False)
        result = self._place(gang, asking=key)
        if result.ok:
            self.refused.discard(key)
            node = self.cache.assumed.get(key)
            if node is not None and node in offered:
                return FilterVerdict.only(node)
            message = f"{gkey} is placed, but this pod found no room: {result.message()}"
            return FilterVerdict.none(names, message, unresolvable=False)
        return FilterVerdict.none(names, f"{gkey}: {result.message()}", unresolvable=result.code == Code.UNRESOLVABLE)

    def _place(self, gang: GangInfo, asking: str = "") -> GangResult:
        """Plan the gang whole and reserve it (for the filter of member `asking`, or ahead of any): each member
        assumed on its node, and members turned away earlier called back. A failed re-plan drops what is left."""
        gkey: GangKey = gang.key  # type: ignore[assignment]
        self._refresh_workload()
        result = self.core.schedule_gang(self._kept_to_offers(gang))
        if not result.ok:
            res = self.reservations.get(gkey)
            if res is not None and not res.open and len(gang.bound) < res.min_member:
                # a re-plan that failed: the members already at bind cannot start either
                self._drop(gkey, f"{gkey}: re-planned, it no longer fits: {result.message()}")
            return result
        if self.preemptor is not None:
            self.preemptor.settle(gang, result)  # placed: it holds nothing any more
        self.stats["gangs_planned"] += 1
        res = self.reservations.get(gkey)
        if res is None:
            res = self.reservations[gkey] = Reservation(gkey, gang.group.min_member, 0.0)
        res.expires = self.clock() + self.ttl
        for a in result.placed:
            self.cache.assume(a)
            res.pods.add(a.pod_key)
            if a.pod_key in self.refused and a.pod_key != asking:  # turned away earlier: call it back now
                self.refused.discard(a.pod_key)
                self.nudge(self.cache.pods[a.pod_key].obj, f"{gkey} is placed whole on {a.node_name}")
        return result

    def prioritize(self, info: PodInfo, names: list[str]) -> dict[str, int]:
        node = self.cache.assumed.get(info.key)
        return {node: 10} if node is not None else {}

    def _waiting(self, gkey: GangKey) -> dict[str, str]:
        res = self.reservations.get(gkey)
        return res.waiting if res is not None else {}

    def _release_movable(self, gkey: GangKey) -> None:
        res = self.reservations.get(gkey)
        if res is None:
            return
        for key in [k for k in res.pods if k not in res.waiting and k not in self.posting]:
            self.cache.forget(key)
            res.pods.discard(key)

    def _kept_to_offers(self, gang: GangInfo) -> GangInfo:
        """The gang with each member kube-scheduler has offered nodes to kept to those nodes (as required node
        affinity on its name), so the core never reserves a node kube-scheduler already turned down."""
        known = self.cache.state.index
        pods = []
        for p in gang.pods:
            offered = self.offered.get(p.key)
            if offered is not None and not self._offers_all(offered):
                allowed = set(offered)
                refused = [n for n in known if n not in allowed]
                p = replace(p, demand=replace(p.demand, affinity=_kept_to(p.demand.affinity, refused,
                                                                          [n for n in offered if n in known])))
            pods.append(p)
        return replace(gang, pods=pods)

    def _offers_all(self, offered: list[str]) -> bool:
        """Whether `offered` holds every node we know: the usual case. One set check per distinct list, then a
        comparison of the lists (C speed) while kube-scheduler keeps sending the same one and our nodes stay
        (the state's index is a new dict whenever they change)."""
        known, last = self.cache.state.index, self._offered_all
        if last is not None and last[1] is known and last[0] == offered:
            return True
        if known.keys() <= set(offered):
            self._offered_all = (offered, known)
            return True
        return False

    def _held_for(self, gang: GangInfo) -> GangKey | None:
        """A gang of higher priority whose preemption victims are still terminating: what they free is its."""
        if self.preemptor is None:
            return None
        for gkey in list(self.preemptor.holding):
            if gkey == gang.key:
                continue
            view = self.cache.view(gkey)
            if view is not None and view.info is not None and view.info.priority > gang.priority \
                    and self.preemptor.holds(view.info):
                return gkey
        return None

    def _refresh_workload(self) -> None:
        self._workload = refresh_workload(self.core, self.profile, self.cache, self._workload, self.clock())

    # ---- preempt ------------------------------------------------------------------------------------------------
    def preempt(self, info: PodInfo, candidates: dict[str, list[str]]) -> dict[str, list[str]]:
        """kube-scheduler's preemption candidates for the pod -> the victims to evict on those nodes: whole
        lower-priority gangs the core's search chose (`live.preemption` evicts every one of them, wherever they
        run, and holds what they free for the gang), or none."""
        gkey = info.gang
        if self.preemptor is None or gkey is None:
            return {}
        view = self.cache.view(gkey)
        if view is None or view.info is None or view.problem:
            return {}
        if gkey not in self.preemptor.holding:
            self._refresh_workload()
            with self.cache.state.trial():  # rolled back: only whether it fits is wanted
                result = self.core.schedule_gang(view.info)
            if result.ok:
                return {}  # it fits on our books: kube-scheduler's own plugins turned it down, not capacity
            self.preemptor.settle(view.info, result)
            self.stats["preemptions"] += gkey in self.preemptor.holding
        hold = self.preemptor.holding.get(gkey)
        if hold is None or hold.expired:
            return {}
        victims: dict[str, list[str]] = {}
        for key in sorted(hold.victims):
            v = self.cache.pods.get(key)
            if v is not None and v.node in candidates:
                victims.setdefault(v.node, []).append(v.obj["metadata"].get("uid", ""))
        return victims

    # ---- bind ---------------------------------------------------------------------------------------------------
    def bind(self, args: BindArgs, after_reply: Callable[[Callable[[], None]], None] | None = None) -> str | None:
        """kube-scheduler's bind call: wait at the gang's barrier, then post the Binding. None, or the error.

        The call that opens the barrier posts its own Binding first and releases its waiting mates only once it
        returns, or, given `after_reply` (the HTTP handler's), hands the release over to be called once its reply
        is sent: answering seven mates at once on one GIL would otherwise hold its answer up by milliseconds,
        while they have waited for the gang anyway."""
        key = args.key
        release: Callable[[], None] | None = None
        with self.lock:
            info = self.cache.pods.get(key)
            if info is None or (args.uid and info.obj["metadata"].get("uid") != args.uid):
                return f"pod {key} (uid {args.uid}) is not known"
            if info.node:
                return None if info.node == args.node else f"pod {key} is already bound to {info.node}"
            node = self.cache.assumed.get(key)
            res = self.reservations.get(info.gang) if info.gang is not None else None
            if node is None or res is None:
                return f"pod {key} has no reservation (it expired or was re-planned); it is scheduled again"
            if node != args.node:
                return f"pod {key} is reserved on {node}, not {args.node}; it is scheduled again"
            res.waiting[key] = node
            if not res.open and self._barrier_open(res) and len(res.waiting) > 1:
                res.held = True
                release = self._releaser(res)
            deadline = time.monotonic() + self.bind_wait
            while not res.failed and not (release or (self._barrier_open(res) and not res.held)):
                if res.held:  # open: the opener releases us whatever happens to its Binding
                    self.lock.wait(0.5)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats["barrier_timeouts"] += 1
                    self._drop(res.gang, self._shut_message(res))
                    break
                self.lock.wait(min(left, 0.5))
            res.waiting.pop(key, None)
            if res.failed:
                return res.failed
            self.posting.add(key)
            a = self.cache.state.assignments[key]
            req = BindRequest(args.namespace, args.name, info.obj["metadata"].get("uid", ""), node, a.devices,
                              res.gang)
        try:
            error = self._post(req)
        except BaseException:
            if release is not None:
                release()
            raise
        if release is not None:
            (after_reply or _now)(release)
        with self.lock:
            self.posting.discard(key)
            if error is None or (error.status == 409 and "already assigned" in error.message):
                self.stats["pods_bound"] += 1
                return None
            self.stats["bind_errors"] += 1
            if error.status == 404:
                self.cache.forget(key)
            # otherwise the reservation stays: kube-scheduler schedules the pod again and finds it
            return f"binding {key} to {node} failed: {error}"

    def _releaser(self, res: Reservation) -> Callable[[], None]:
        def release() -> None:
            with self.lock:
                res.held = False
                self.lock.notify_all()
        return release

    def _barrier_open(self, res: Reservation) -> bool:
        if not res.open:
            bound = len(self.cache.bound_members(res.gang))
            res.open = bound + len(res.waiting) >= res.min_member
        return res.open

    def _shut_message(self, res: Reservation) -> str:
        missing = sorted(res.pods - set(res.waiting))
        return (f"{res.gang}: only {len(res.waiting) + len(self.cache.bound_members(res.gang))} of "
                f"minMember={res.min_member} members reached binding within {self.bind_wait:.0f}s (kube-scheduler "
                f"did not place {', '.join(missing) or 'the others'}); nothing of the gang is bound")

    def _post(self, req: BindRequest) -> ApiError | None:
        error = None
        for attempt in range(self.bind_retries):
            error = self.post(req)
            if error is None or not error.retriable:
                return error
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
        return error


def _now(release: Callable[[], None]) -> None:
    release()


def _kept_to(terms: tuple, refused: list[str], offered: list[str]) -> tuple:
    """Required node-affinity terms that also keep a pod to `offered` (= off `refused`): NotIn each refused
    node's name in every term when that is shorter (or the pod has terms of its own), else one In term per
    offered node."""
    if terms or len(refused) <= len(offered):
        out = tuple(Requirement(NODE_NAME_FIELD, "NotIn", (n,), field=True) for n in refused)
        return tuple(t + out for t in terms) if terms else (out,)
    if not offered:  # nothing offered: a term no node matches
        return ((Requirement(NODE_NAME_FIELD, "In", ("",), field=True),),)
    return tuple((Requirement(NODE_NAME_FIELD, "In", (n,), field=True),) for n in offered)
