"""The extender's reservation book and verbs, on plain objects (no API server, no HTTP)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from gangsched.core import Scheduler
from gangsched.extender.protocol import BindArgs
from gangsched.extender.reservations import Book
from gangsched.extender.server import Extender
from gangsched.live import informer as inf
from gangsched.live.binder import binding_body
from gangsched.live.cache import Cache
from gangsched.live.giveback import GiveBack
from gangsched.live.kube import ApiError
from gangsched.live.translate import GPU_DEVICES_ANNOTATION
from gangsched.profile import load_profile
from gangsched.state import ClusterState
from tests.livekit import T0, Events, node, pod, podgroup

SCHED = "default-scheduler"


class Locked:
    """The book as the server drives it: every call under its lock (bind takes it itself)."""

    def __init__(self, book: Book) -> None:
        self.book = book

    def __getattr__(self, name: str):
        attr = getattr(self.book, name)
        if not callable(attr) or name == "bind":
            return attr

        def call(*args, **kwargs):
            with self.book.lock:
                return attr(*args, **kwargs)
        return call


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make(nodes: int = 2, gpus: int = 4, bind_wait: float = 2.0, fail: ApiError | None = None,
         plan_ahead: bool = True):
    state = ClusterState([])
    cache = Cache(state, SCHED)
    posted: list[dict] = []

    def post(req):
        posted.append(binding_body(req))
        return fail

    clock = Clock()
    book = Locked(Book(cache, Scheduler(state, load_profile("default")), load_profile("default"), post,
                       clock=clock, ttl=30.0, bind_wait=bind_wait, bind_retries=1, plan_ahead=plan_ahead))
    book.apply("nodes", inf.SYNC, [node(f"n{i}", gpus=gpus) for i in range(nodes)])
    book.apply("podgroups", inf.SYNC, [])
    book.apply("pods", inf.SYNC, [])
    book.apply("priorityclasses", inf.SYNC, [])
    book.tick()
    return book, posted, clock


def add(book: Book, *objs: dict) -> list[dict]:
    for o in objs:
        book.apply("podgroups" if o.get("kind") == "PodGroup" else "pods", "ADDED", o)
    book.tick()
    return list(objs)


def members(book: Book, group: str, n: int, gpus: int = 1) -> list[dict]:
    return add(book, *(pod(f"{group}-{i}", gpus=gpus, group=group, scheduler=SCHED) for i in range(n)))


def info(book: Book, p: dict):
    return book.known(p)


NAMES = ["n0", "n1"]


def test_incomplete_gang_gets_no_node_and_holds_nothing():
    book, _, _ = make()
    add(book, podgroup("g", 4))
    pods = members(book, "g", 3)
    verdict = book.filter(info(book, pods[0]), NAMES)
    assert verdict.nodes == [] and not verdict.failed
    assert verdict.unresolvable == dict.fromkeys(NAMES, "gang default/g: 3 of minMember=4 pods exist")
    assert not book.cache.assumed and not book.reservations


def test_complete_gang_is_reserved_whole_and_each_member_gets_exactly_its_node():
    book, _, _ = make()
    add(book, podgroup("g", 4))
    pods = members(book, "g", 4)
    first = book.filter(info(book, pods[0]), NAMES)
    assert len(first.nodes) == 1
    assert sorted(book.cache.assumed) == [f"default/g-{i}" for i in range(4)]  # the whole gang, at once
    for p in pods:
        key = f"default/{p['metadata']['name']}"
        verdict = book.filter(info(book, p), NAMES)
        assert verdict.nodes == [book.cache.assumed[key]]
        assert book.prioritize(info(book, p), NAMES) == {book.cache.assumed[key]: 10}
    assert book.stats["gangs_planned"] == 1


def test_interleaved_gangs_one_whole_the_other_nothing():
    book, _, _ = make(nodes=3, gpus=4)  # 12 GPUs, two gangs of 8
    add(book, podgroup("a", 8), podgroup("b", 8))
    a, b = members(book, "a", 8), members(book, "b", 8)
    for pa, pb in zip(a, b, strict=True):  # kube-scheduler asks about them interleaved
        book.filter(info(book, pa), ["n0", "n1", "n2"])
        verdict = book.filter(info(book, pb), ["n0", "n1", "n2"])
        assert verdict.nodes == [] and set(verdict.failed) == {"n0", "n1", "n2"}
    assert sorted(k.split("/")[1][0] for k in book.cache.assumed) == ["a"] * 8
    assert verdict.failed["n0"].startswith("gang default/b: 4/8 pods fit, minMember=8; ")


def test_a_rejected_reserved_node_is_replanned_within_the_offered_nodes():
    book, _, _ = make(nodes=3, gpus=4)
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    book.filter(info(book, pods[0]), ["n0", "n1", "n2"])
    reserved = book.cache.assumed["default/g-1"]
    offered = [n for n in ("n0", "n1", "n2") if n != reserved]  # kube-scheduler's plugins turned it down
    verdict = book.filter(info(book, pods[1]), offered)
    assert verdict.nodes and verdict.nodes[0] in offered
    assert book.cache.assumed["default/g-1"] == verdict.nodes[0]
    assert len(book.cache.assumed) == 2  # re-planned, nothing leaked
    assert int(book.cache.state.gpu_free.sum()) == (12 - 2) * 1000
    assert book.stats["replans"] == 1


def test_a_member_no_node_is_offered_to_gets_nothing_and_the_gang_nothing():
    book, _, _ = make()
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    verdict = book.filter(info(book, pods[0]), [])
    assert verdict.nodes == [] and not book.cache.assumed


def test_bind_waits_for_the_gang_then_posts_every_member_with_its_devices():
    book, posted, _ = make()
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2, gpus=2)
    for p in pods:
        book.filter(info(book, p), NAMES)
    nodes = dict(book.cache.assumed)
    results: dict[str, str | None] = {}

    def bind(i: int) -> None:
        results[f"g-{i}"] = book.bind(BindArgs(f"g-{i}", "default", pods[i]["metadata"]["uid"],
                                               nodes[f"default/g-{i}"]))

    first = threading.Thread(target=bind, args=(0,))
    first.start()
    deadline = time.monotonic() + 5
    while "default/g-0" not in book.reservations[next(iter(book.reservations))].waiting:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not posted  # the barrier holds the first member until its mate reaches bind
    bind(1)
    first.join(5)
    assert results == {"g-0": None, "g-1": None}
    assert sorted(b["metadata"]["name"] for b in posted) == ["g-0", "g-1"]
    for b in posted:
        devices = b["metadata"]["annotations"][GPU_DEVICES_ANNOTATION].split(",")
        assert len(devices) == 2 and b["target"]["name"] == nodes[f"default/{b['metadata']['name']}"]


def _first_at_barrier(bind_wait: float = 2.0):
    """A gang of 2 reserved, its first member's bind waiting at the barrier in a thread: (book, posted, bind of
    the second member, the thread, the first's result)."""
    book, posted, _ = make(bind_wait=bind_wait)
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    for p in pods:
        book.filter(info(book, p), NAMES)
    nodes = dict(book.cache.assumed)
    args = [BindArgs(f"g-{i}", "default", pods[i]["metadata"]["uid"], nodes[f"default/g-{i}"]) for i in (0, 1)]
    results: dict[str, str | None] = {}
    first = threading.Thread(target=lambda: results.update({"g-0": book.bind(args[0])}))
    first.start()
    res = book.reservations[next(iter(book.reservations))]
    deadline = time.monotonic() + 5
    while "default/g-0" not in res.waiting:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return book, posted, args[1], first, results


def test_the_bind_that_opens_the_barrier_is_answered_before_its_waiting_mates_post():
    # kube-scheduler's binding goroutine of the opener should not wait for its seven mates' answers: its own
    # Binding goes first, its mates are released once its reply is out (`after_reply`).
    book, posted, second, first, results = _first_at_barrier()
    later: list = []
    assert book.bind(second, after_reply=later.append) is None
    time.sleep(0.2)  # the waiting mate must not post while the opener's reply is still going out
    assert [b["metadata"]["name"] for b in posted] == ["g-1"] and first.is_alive()
    assert len(later) == 1
    later[0]()
    first.join(5)
    assert results == {"g-0": None}
    assert sorted(b["metadata"]["name"] for b in posted) == ["g-0", "g-1"]


def test_an_opener_held_up_posting_does_not_time_its_mates_out():
    # the mates wait for the opener's release however long its Binding takes: the barrier is open, the gang
    # must not be dropped half-bound
    book, posted, second, first, results = _first_at_barrier(bind_wait=0.2)
    later: list = []
    assert book.bind(second, after_reply=later.append) is None
    time.sleep(0.5)  # past bind_wait
    later[0]()
    first.join(5)
    assert results == {"g-0": None} and book.stats["barrier_timeouts"] == 0
    assert sorted(b["metadata"]["name"] for b in posted) == ["g-0", "g-1"]


def test_bind_barrier_that_never_fills_drops_the_whole_reservation():
    book, posted, _ = make(bind_wait=0.3)
    add(book, podgroup("g", 3))
    pods = members(book, "g", 3)
    book.filter(info(book, pods[0]), NAMES)
    node0 = book.cache.assumed["default/g-0"]
    error = book.bind(BindArgs("g-0", "default", pods[0]["metadata"]["uid"], node0))
    assert error and "only 1 of minMember=3 members reached binding" in error
    assert "default/g-1" in error and "default/g-2" in error
    assert not posted and not book.cache.assumed and not book.reservations
    assert int(book.cache.state.gpu_free.sum()) == 8 * 1000
    assert book.bind(BindArgs("g-1", "default", pods[1]["metadata"]["uid"], node0)).startswith(
        "pod default/g-1 has no reservation")


def test_bind_to_another_node_than_reserved_is_refused():
    book, posted, _ = make()
    pods = add(book, pod("solo", scheduler=SCHED))
    book.filter(info(book, pods[0]), NAMES)
    other = next(n for n in NAMES if n != book.cache.assumed["default/solo"])
    assert "is reserved on" in book.bind(BindArgs("solo", "default", pods[0]["metadata"]["uid"], other))
    assert not posted


def test_a_failed_binding_keeps_the_reservation_for_the_retry():
    book, posted, _ = make(fail=ApiError(500, "InternalError", "etcd hiccup"))
    pods = add(book, pod("solo", scheduler=SCHED))
    book.filter(info(book, pods[0]), NAMES)
    node0 = book.cache.assumed["default/solo"]
    assert "failed" in book.bind(BindArgs("solo", "default", pods[0]["metadata"]["uid"], node0))
    assert len(posted) == 1
    assert book.cache.assumed == {"default/solo": node0}
    assert book.filter(info(book, pods[0]), NAMES).nodes == [node0]


def test_an_unbound_reservation_expires():
    book, _, clock = make()
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    book.filter(info(book, pods[0]), NAMES)
    clock.now += 29
    book.tick()
    assert len(book.cache.assumed) == 2
    clock.now += 2
    book.tick()
    assert not book.cache.assumed and not book.reservations and book.stats["expired"] == 1


def test_a_member_deleted_before_binding_drops_the_reservation():
    book, _, _ = make()
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    book.filter(info(book, pods[0]), NAMES)
    book.apply("pods", "DELETED", pods[1])
    book.tick()
    assert not book.cache.assumed and not book.reservations


def test_bound_members_leave_the_book():
    book, _, _ = make()
    pods = add(book, pod("solo", scheduler=SCHED))
    book.filter(info(book, pods[0]), NAMES)
    bound = dict(pods[0], spec=dict(pods[0]["spec"], nodeName=book.cache.assumed["default/solo"]))
    book.apply("pods", "MODIFIED", bound)
    book.tick()
    assert not book.reservations and not book.cache.assumed


def test_pods_of_another_scheduler_get_no_opinion():
    book, _, _ = make()
    pods = add(book, pod("other", scheduler="someone-else"))
    assert book.filter(info(book, pods[0]), NAMES).nodes == NAMES


def test_preempt_names_whole_lower_priority_gangs_on_the_candidate_nodes():
    from gangsched.live.preemption import Preemptor

    book, _, clock = make(nodes=2, gpus=4)
    evictions = _Evictions()
    book.book.preemptor = Preemptor(book.cache, book.core, evictions, _NoEvents(), clock)
    book.apply("priorityclasses", "ADDED", {"metadata": {"name": "high"}, "value": 1000})
    add(book, podgroup("low", 8), podgroup("high", 2))
    low = [pod(f"low-{i}", group="low", scheduler=SCHED, node_name=f"n{i // 4}", devices=str(i % 4))
           for i in range(8)]
    add(book, *low)
    high = [pod(f"high-{i}", group="high", scheduler=SCHED, priorityClassName="high", priority=1000)
            for i in range(2)]
    add(book, *high)
    assert book.filter(info(book, high[0]), NAMES).failed  # no room
    victims = book.preempt(info(book, high[0]), {"n0": [low[0]["metadata"]["uid"]]})
    evicted = sorted(evictions.evicted)
    assert evicted == [f"low-{i}" for i in range(8)]  # the whole gang, on both nodes
    assert set(victims) == {"n0"}  # kube-scheduler only asked about n0: the victims there
    assert sorted(victims["n0"]) == sorted(p["metadata"]["uid"] for p in low[:4])


class _Evictions:
    def __init__(self) -> None:
        self.evicted: list[str] = []

    def evict(self, pod: dict, message: str) -> bool:
        self.evicted.append(pod["metadata"]["name"])
        return True

    def nominate(self, pod: dict, node: str) -> None:
        pass

    def disrupt(self, group: dict, message: str) -> None:
        pass


class _NoEvents:
    def record(self, *args, **kwargs) -> None:
        pass


@pytest.mark.parametrize("verb,body", [("filter", {"Pod": {}}), ("filter", []), ("bind", {"PodName": "x"}),
                                       ("preempt", {"Pod": {"metadata": {"name": "p"}}, "NodeNameToMetaVictims":
                                                    {"n": {"Pods": [{}]}}}), ("nope", {})])
def test_bad_requests_get_a_one_line_error(verb, body):
    book, _, _ = make()
    code, out = Extender(book.book).handle(verb, body)
    assert code in (400, 404) and isinstance(out, str) and "\n" not in out and verb in out


def test_extender_verbs_round_trip_through_the_wire_types():
    book, _, _ = make()
    pods = add(book, pod("solo", scheduler=SCHED, gpus=2))
    ext = Extender(book.book)
    code, out = ext.handle("filter", {"Pod": pods[0], "NodeNames": NAMES})
    assert code == 200 and len(out["NodeNames"]) == 1 and out["Error"] == ""
    chosen = out["NodeNames"][0]
    code, out = ext.handle("prioritize", {"Pod": pods[0], "NodeNames": NAMES})
    assert code == 200 and out == [{"Host": chosen, "Score": 10}]  # the others score 0
    code, out = ext.handle("bind", {"PodName": "solo", "PodNamespace": "default",
                                    "PodUID": pods[0]["metadata"]["uid"], "Node": chosen})
    assert (code, out) == (200, {"Error": ""})
    text = ext.metrics.registry.get_sample_value(
        "gangsched_extender_request_duration_seconds_count", {"verb": "filter"})
    assert text == 1.0


def test_members_turned_away_are_called_back_when_their_gang_is_complete():
    book, _, _ = make()
    nudged: list[tuple[str, str]] = []
    book.book.nudge = lambda obj, message: nudged.append((obj["metadata"]["name"], message))
    add(book, podgroup("g", 3))
    pods = members(book, "g", 2)
    for p in pods:
        assert not book.filter(info(book, p), NAMES).nodes  # incomplete: kube-scheduler holds them back
    add(book, podgroup("h", 2), pod("h-0", group="h", scheduler=SCHED))  # another gang's member: not theirs
    assert not nudged
    # the last member arrives; kube-scheduler may reject it itself and never ask us: the others are called back
    add(book, pod("g-2", group="g", scheduler=SCHED))
    assert sorted(n for n, _ in nudged) == ["g-0", "g-1"]
    assert all("its minMember pods exist" in m for _, m in nudged)
    add(book, pod("g-3", group="g", scheduler=SCHED))
    assert len(nudged) == 2  # once each
    last = info(book, pods[0])
    assert book.filter(last, NAMES).nodes  # they come back: the gang is placed


class Statuses:
    def __init__(self) -> None:
        self.written: list[tuple[str, dict]] = []

    def write(self, key: str, status: dict, api: str = "") -> None:
        self.written.append((key, status))

    def phases(self, key: str) -> list[str]:
        return [s["phase"] for k, s in self.written if k == key]


def with_giveback(book: Locked, leading: list[bool] | None = None):
    """The book wired as `gangsched extender` wires it: give-back (timeout 60 s) and PodGroup status."""
    deleted: list[str] = []
    events = Events()
    statuses = Statuses()

    def delete(obj: dict) -> bool:
        deleted.append(obj["metadata"]["name"])
        return True

    b = book.book
    b.giveback = GiveBack(b.cache, delete, events, default_timeout=60.0)
    b.status = statuses
    if leading is not None:
        b.writes = lambda: leading[0]
    return deleted, events, statuses


def bound_by_watch(book: Locked, p: dict, node_name: str, phase: str = "Pending") -> None:
    book.apply("pods", "MODIFIED", dict(p, spec=dict(p["spec"], nodeName=node_name), status={"phase": phase}))


def test_a_gang_half_bound_after_a_binding_failed_for_good_gives_back_its_bound_members():
    book, _, clock = make()
    deleted, events, statuses = with_giveback(book)
    add(book, podgroup("g", 3))
    pods = members(book, "g", 3)
    book.filter(info(book, pods[0]), NAMES)
    nodes = dict(book.cache.assumed)
    refused = ApiError(403, "Forbidden", "admission webhook denied the binding")
    book.book.post = lambda req: refused if req.name == "g-2" else None
    results: dict[str, str | None] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, book.bind(BindArgs(
        f"g-{i}", "default", pods[i]["metadata"]["uid"], nodes[f"default/g-{i}"])))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results[0] is None and results[1] is None and "Forbidden" in results[2]
    for i in (0, 1):  # the watch shows the two that were bound
        bound_by_watch(book, pods[i], nodes[f"default/g-{i}"])
    book.tick()
    assert statuses.phases("default/g")[-1] == "Scheduled"  # g-2 still reserved for kube-scheduler's retry
    for _ in range(3):  # which the webhook refuses again and again: only members bound count
        (node_name,) = book.filter(info(book, pods[2]), NAMES).nodes  # kube-scheduler's retry: filter, bind
        assert "Forbidden" in book.bind(BindArgs("g-2", "default", pods[2]["metadata"]["uid"], node_name))
        clock.now += 19
        book.tick()
    assert not deleted
    clock.now += 4
    book.tick()
    assert sorted(deleted) == ["g-0", "g-1"]  # below minMember for the timeout: what they hold goes back
    assert any(reason == "GangIncomplete" and "2 of minMember=3 pods bound" in msg
               for _, _, reason, msg in events.items)


def test_podgroup_status_follows_the_gang_in_extender_mode():
    book, _, _ = make()
    _, _, statuses = with_giveback(book)
    add(book, podgroup("g", 2))
    assert statuses.phases("default/g") == ["Pending"]
    pods = members(book, "g", 2)
    book.filter(info(book, pods[0]), NAMES)
    book.tick()
    assert statuses.phases("default/g")[-1] == "Scheduled"  # reserved whole
    for p in pods:
        bound_by_watch(book, p, book.cache.assumed[f"default/{p['metadata']['name']}"], phase="Running")
    book.tick()
    assert statuses.phases("default/g")[-1] == "Running"
    assert statuses.written[-1][1]["running"] == 2


def test_a_replica_whose_kube_scheduler_does_not_lead_writes_nothing_until_it_does():
    book, _, clock = make()
    leading = [False]
    deleted, _, statuses = with_giveback(book, leading)
    add(book, podgroup("g", 3))
    a, b = members(book, "g", 2)
    bound_by_watch(book, a, "n0")  # bound by the leader, whose gang is now incomplete
    bound_by_watch(book, b, "n1")
    clock.now += 120
    book.tick()
    assert not statuses.written and not deleted
    leading[0] = True
    book.tick()
    assert statuses.phases("default/g") == ["Scheduling"]  # the changes kept meanwhile are written now
    clock.now += 61
    book.tick()
    assert sorted(deleted) == ["g-0", "g-1"]  # its own timeout, counted from when it leads


def test_lease_follower_leads_while_the_kube_scheduler_beside_it_holds_the_lease():
    from gangsched.extender.run import LeaseFollower

    class Leases:
        holder: str | None = "other-host_1b4e28ba-2fa1-11d2-883f-0016d3cca427"

        def request(self, method: str, path: str, body=None, **kw) -> dict:
            assert (method, path) == ("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/"
                                             "kube-scheduler")
            if self.holder is None:
                raise ApiError(404, "NotFound", "leases.coordination.k8s.io \"kube-scheduler\" not found")
            return {"spec": {"holderIdentity": self.holder}}

    leases = Leases()
    f = LeaseFollower(leases, "kube-system/kube-scheduler", hostname="sched-0")  # type: ignore[arg-type]
    assert not f.read() and not f()
    leases.holder = "sched-0_6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    assert f.read() and f()
    leases.holder = "sched-0x_6ba7b810-9dad-11d1-80b4-00c04fd430c8"  # a prefix is not our hostname
    assert not f.read()
    leases.holder = None
    assert not f.read()


def test_members_of_a_complete_gang_that_does_not_fit_are_not_called_back_on_every_change():
    book, _, _ = make(nodes=1, gpus=4)
    nudged: list[str] = []
    book.book.nudge = lambda obj, message: nudged.append(obj["metadata"]["name"])
    add(book, podgroup("big", 2))
    pods = members(book, "big", 2, gpus=4)  # 8 GPUs wanted, 4 exist
    for p in pods:
        assert not book.filter(info(book, p), NAMES[:1]).nodes
    touched = dict(pods[0], metadata=dict(pods[0]["metadata"], annotations={"x": "1"}))
    book.apply("pods", "MODIFIED", touched)  # (a nudge's own status write shows up like this)
    book.tick()
    assert not nudged  # a call-back would only be turned away again: no loop of writes


# ---- plan-ahead ------------------------------------------------------------------------------------------------
def plan_all(book: Locked) -> int:
    """Run the planner's steps until none is due, as the event thread does: the number of steps that planned."""
    steps = 0
    while book.plan_step():
        steps += 1
        assert steps < 100
    return steps


def test_a_complete_gang_is_reserved_ahead_and_each_first_filter_is_a_lookup():
    book, _, _ = make()
    add(book, podgroup("g", 4))
    pods = members(book, "g", 4)
    assert plan_all(book) == 1
    assert sorted(book.cache.assumed) == [f"default/g-{i}" for i in range(4)] and book.stats["planned_ahead"] == 1
    for p in pods:
        key = f"default/{p['metadata']['name']}"
        assert book.filter(info(book, p), NAMES).nodes == [book.cache.assumed[key]]
    assert book.stats["gangs_planned"] == 1  # no filter planned


def test_an_incomplete_gang_is_not_planned_ahead():
    book, _, _ = make()
    add(book, podgroup("g", 4))
    members(book, "g", 3)
    assert plan_all(book) == 0
    assert not book.cache.assumed and not book.reservations


def test_the_higher_priority_gang_is_planned_ahead_and_the_other_not_when_only_one_fits():
    book, _, _ = make(nodes=3, gpus=4)  # 12 GPUs, two gangs of 8
    book.apply("priorityclasses", "ADDED", {"metadata": {"name": "high"}, "value": 1000})
    add(book, podgroup("low", 8), podgroup("high", 8))
    members(book, "low", 8)  # first come, but lower
    add(book, *(pod(f"high-{i}", group="high", scheduler=SCHED, priorityClassName="high", priority=1000,
                    created=T0 - 50) for i in range(8)))
    assert plan_all(book) == 2  # high placed, low tried and missed
    assert sorted(k.split("/")[1].split("-")[0] for k in book.cache.assumed) == ["high"] * 8
    assert book.stats["ahead_misses"] == 1
    assert plan_all(book) == 0  # nothing changed: low is not tried again in a loop


def test_the_planner_plans_one_gang_per_step_and_the_next_steps_finish_the_rest():
    book, _, _ = make(nodes=2, gpus=8)
    for g in "abc":
        add(book, podgroup(g, 2))
        members(book, g, 2)
    assert book.plan_step() and len(book.reservations) == 1  # the lock can be released between gangs
    assert book.plan_step() and len(book.reservations) == 2
    assert book.plan_step() and len(book.reservations) == 3
    assert not book.plan_step()


def test_the_event_thread_plans_every_gang_soon_not_one_per_idle_tick():
    from gangsched.extender.run import pump

    book, _, _ = make(nodes=2, gpus=8)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    for g in "abcd":
        events.put(("podgroups", "ADDED", podgroup(g, 2)))
        for i in range(2):
            events.put(("pods", "ADDED", pod(f"{g}-{i}", group=g, scheduler=SCHED)))
    thread = threading.Thread(target=pump, args=(book.book, events, stop), kwargs={"tick": 5.0, "plan_for": 0.0})
    thread.start()
    try:
        deadline = time.monotonic() + 4.0  # below one idle tick of 5 s: one gang per tick would take 15 s
        while len(book.reservations) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(book.reservations) == 4
    finally:
        stop.set()
        thread.join()


def test_a_filter_before_the_planner_plans_the_gang_itself():
    book, _, _ = make()
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    assert len(book.filter(info(book, pods[0]), NAMES).nodes) == 1  # kube-scheduler was quicker
    assert plan_all(book) == 0 and book.stats["gangs_planned"] == 1


def test_an_expired_reservation_planned_ahead_is_not_planned_again_until_its_gang_changes():
    book, _, clock = make()
    add(book, podgroup("g", 2))
    members(book, "g", 2)
    assert plan_all(book) == 1
    clock.now += 31  # kube-scheduler never came for it
    book.tick()
    assert not book.reservations and book.stats["expired"] == 1
    for _ in range(3):
        book.tick()
        assert plan_all(book) == 0
    assert not book.cache.assumed
    add(book, pod("g-2", group="g", scheduler=SCHED))  # its controller adds a member
    assert plan_all(book) == 1 and len(book.cache.assumed) == 3


def test_a_parked_gang_is_still_planned_when_kube_scheduler_asks():
    book, _, clock = make()
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    plan_all(book)
    clock.now += 31
    book.tick()
    assert len(book.filter(info(book, pods[1]), NAMES).nodes) == 1
    assert len(book.cache.assumed) == 2 and book.stats["gangs_planned"] == 2


def test_a_gang_that_did_not_fit_is_planned_ahead_once_capacity_is_freed_and_its_members_called_back():
    book, _, _ = make(nodes=1, gpus=4)
    nudged: list[tuple[str, str]] = []
    book.book.nudge = lambda obj, message: nudged.append((obj["metadata"]["name"], message))
    running = add(book, pod("busy", gpus=2, scheduler=SCHED, node_name="n0", devices="0,1", phase="Running"))
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2, gpus=2)
    assert plan_all(book) == 1 and not book.cache.assumed  # tried, no room
    assert not book.filter(info(book, pods[0]), NAMES[:1]).nodes  # turned away: kube-scheduler holds it back
    book.apply("pods", "DELETED", running[0])
    book.tick()
    assert plan_all(book) == 1 and len(book.cache.assumed) == 2
    assert [n for n, _ in nudged] == ["g-0"] and "is placed whole" in nudged[0][1]


def test_without_plan_ahead_nothing_is_planned_before_a_filter():
    book, _, _ = make(plan_ahead=False)
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    assert plan_all(book) == 0 and not book.cache.assumed
    assert len(book.filter(info(book, pods[0]), NAMES).nodes) == 1
    assert book.stats["gangs_planned"] == 1 and len(book.cache.assumed) == 2


def test_a_gang_planned_ahead_is_kept_to_the_nodes_kube_scheduler_offered_its_members():
    book, _, _ = make(nodes=2, gpus=4)
    add(book, podgroup("g", 2))
    pods = members(book, "g", 1)
    assert not book.filter(info(book, pods[0]), ["n1"]).nodes  # incomplete; kube-scheduler's plugins allow n1 only
    add(book, pod("g-1", group="g", scheduler=SCHED))
    assert plan_all(book) == 1
    assert book.cache.assumed["default/g-0"] == "n1"


def test_a_reserved_node_rejected_after_planning_ahead_is_replanned_by_the_filter():
    book, _, _ = make(nodes=3, gpus=4)
    add(book, podgroup("g", 2))
    pods = members(book, "g", 2)
    plan_all(book)
    reserved = book.cache.assumed["default/g-1"]
    offered = [n for n in ("n0", "n1", "n2") if n != reserved]
    verdict = book.filter(info(book, pods[1]), offered)
    assert verdict.nodes and verdict.nodes[0] in offered and book.stats["replans"] == 1
    assert len(book.cache.assumed) == 2 and int(book.cache.state.gpu_free.sum()) == (12 - 2) * 1000


def test_a_replica_whose_kube_scheduler_does_not_lead_plans_nothing_ahead():
    book, _, _ = make()
    leading = [False]
    book.book.writes = lambda: leading[0]
    add(book, podgroup("g", 2))
    members(book, "g", 2)
    assert plan_all(book) == 0 and not book.cache.assumed  # it would only hold capacity no one asks for
    leading[0] = True
    assert plan_all(book) == 1


def test_a_gang_whose_plan_raises_does_not_stop_the_planner(monkeypatch):
    book, _, _ = make()
    add(book, podgroup("g", 2))
    members(book, "g", 2)

    def broken(gang):
        raise RuntimeError("boom")

    monkeypatch.setattr(book.core, "schedule_gang", broken)
    assert plan_all(book) == 1 and book.stats["ahead_misses"] == 1  # logged, not raised into the event thread
    assert not book.cache.assumed
