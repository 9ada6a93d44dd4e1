"""The extender's reservation book and verbs, on plain objects (no API server, no HTTP)."""

from __future__ import annotations

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
from gangsched.live.kube import ApiError
from gangsched.live.translate import GPU_DEVICES_ANNOTATION
from gangsched.profile import load_profile
from gangsched.state import ClusterState
from tests.livekit import T0, node, pod, podgroup

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


def make(nodes: int = 2, gpus: int = 4, bind_wait: float = 2.0, fail: ApiError | None = None):
    state = ClusterState([])
    cache = Cache(state, SCHED)
    posted: list[dict] = []

    def post(req):
        posted.append(binding_body(req))
        return fail

    clock = Clock()
    book = Locked(Book(cache, Scheduler(state, load_profile("default")), load_profile("default"), post,
                       clock=clock, ttl=30.0, bind_wait=bind_wait, bind_retries=1))
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


def test_members_turned_away_are_called_back_when_their_gang_is_placed():
    book, _, _ = make()
    nudged: list[tuple[str, str]] = []
    book.book.nudge = lambda obj, message: nudged.append((obj["metadata"]["name"], message))
    add(book, podgroup("g", 3))
    pods = members(book, "g", 2)
    for p in pods:
        assert not book.filter(info(book, p), NAMES).nodes  # incomplete: kube-scheduler holds them back
    last = add(book, pod("g-2", group="g", scheduler=SCHED))[0]
    assert book.filter(info(book, last), NAMES).nodes
    assert sorted(n for n, _ in nudged) == ["g-0", "g-1"]  # not g-2, which is being scheduled right now
    assert all("is placed whole on" in m for _, m in nudged)
