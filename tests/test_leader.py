"""LeaderElector against an in-memory Lease store and an injected clock: no API server, no sleeping on time."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from gangsched.live.kube import ApiError
from gangsched.live.leader import LeaderElector

LEASES = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class LeaseStore:
    """The API server's part: one Lease, compare-and-swap on resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.rv = 0
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, body: Any) -> dict:
        with self.lock:
            if method == "GET":
                if self.lease is None:
                    raise ApiError(404, "NotFound")
                return copy.deepcopy(self.lease)
            if method == "POST":
                if self.lease is not None:
                    raise ApiError(409, "AlreadyExists")
            elif method == "PUT":
                if self.lease is None or body["metadata"].get("resourceVersion") != str(self.rv):
                    raise ApiError(409, "Conflict")
            else:
                raise AssertionError(method)
            self.rv += 1
            self.lease = copy.deepcopy(body)
            self.lease["metadata"]["resourceVersion"] = str(self.rv)
            return copy.deepcopy(self.lease)

    def holder(self) -> str:
        return ((self.lease or {}).get("spec") or {}).get("holderIdentity") or ""


class StubClient:
    """Stands in for KubeClient: records each call with the clock reading and the timeout it was given."""

    def __init__(self, store: LeaseStore, clock: Clock):
        self.store, self.clock = store, clock
        self.calls: list[dict] = []
        self.latency = 0.0  # clock seconds each request takes
        self.block: threading.Event | None = None  # set: requests wait on it (a hung connection)
        self.entered = threading.Event()

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0, limit: bool = True,
                fenced: bool = True) -> dict:
        self.calls.append({"method": method, "path": path, "at": self.clock(), "timeout": timeout,
                           "limit": limit, "fenced": fenced})
        if self.block is not None:
            self.entered.set()
            self.block.wait()  # ignores `timeout` on purpose: the worst a connection can do
        self.clock.t += self.latency
        return self.store.handle(method, path, body)


def elector(store: LeaseStore, clock: Clock, identity: str = "a", **kw: Any) -> tuple[LeaderElector, StubClient]:
    client = StubClient(store, clock)
    kw = {"lease_duration": 15.0, "renew_deadline": 10.0, "retry_period": 2.0, **kw}
    return LeaderElector(client, "ns", "gangsched", identity, clock=clock, **kw), client


def leader(store: LeaseStore, clock: Clock, **kw: Any) -> tuple[LeaderElector, StubClient]:
    el, client = elector(store, clock, **kw)
    assert el.acquire(threading.Event())
    return el, client


def test_holds_only_until_the_renew_deadline_after_the_last_success():
    store, clock = LeaseStore(), Clock()
    el, _ = elector(store, clock)
    assert not el.holds()
    assert el.acquire(threading.Event())
    assert store.holder() == "a" and el.holds()
    clock.t += 9.999
    assert el.holds()
    clock.t += 0.001  # exactly renew_deadline after the acquire was sent
    assert not el.holds() and el.time_left() <= 0


def test_renewal_extends_from_when_the_update_was_sent_not_when_it_returned():
    store, clock = LeaseStore(), Clock(0.0)
    el, client = leader(store, clock)
    clock.t = 7.0
    client.latency = 1.0  # GET answered at 8, PUT sent at 8, answered at 9
    assert el.try_acquire_or_renew()
    assert [c["at"] for c in client.calls[-2:]] == [7.0, 8.0]
    clock.t = 17.999
    assert el.holds()
    clock.t = 18.0
    assert not el.holds()


def test_renewal_timeouts_never_exceed_the_time_left():
    store, clock = LeaseStore(), Clock(0.0)
    el, client = leader(store, clock)
    client.calls.clear()
    clock.t = 7.0
    client.latency = 1.5
    assert el.try_acquire_or_renew()
    get, put = client.calls
    assert get["method"] == "GET" and get["timeout"] == pytest.approx(3.0)  # deadline 10 - now 7
    assert put["method"] == "PUT" and put["timeout"] == pytest.approx(1.5)  # deadline 10 - now 8.5
    for call in (get, put):
        assert call["timeout"] <= 10.0 - call["at"]
        assert call["fenced"] is False and call["limit"] is False  # the lease itself bypasses fence and limiter


def test_no_request_once_the_deadline_has_passed():
    store, clock = LeaseStore(), Clock(0.0)
    el, client = leader(store, clock)
    client.calls.clear()
    clock.t = 10.0
    assert not el.try_acquire_or_renew()
    assert client.calls == []


def test_a_late_success_cannot_resurrect_a_lost_lease():
    store, clock = LeaseStore(), Clock(0.0)
    el, client = leader(store, clock)
    lost: list[int] = []
    el._on_lost = lambda: lost.append(1)
    clock.t = 9.0
    client.latency = 2.0  # the PUT is sent at 11: past the deadline, so it is not sent at all
    assert not el.try_acquire_or_renew()
    assert not el.check() and lost == [1]
    assert not el.check() and lost == [1]  # once
    clock.t = 20.0
    client.latency = 0.0
    el.try_acquire_or_renew()  # as the acquire path would: the lease may still be ours on the server...
    assert not el.holds()  # ...but this process never leads again


def test_a_hung_renewal_cannot_keep_holds_true_past_the_renew_deadline():
    store, clock = LeaseStore(), Clock(0.0)
    el, client = leader(store, clock, retry_period=0.01)  # the renew loop's real-time wait: keep it short
    client.block = threading.Event()
    stop, lost = threading.Event(), threading.Event()
    calls: list[int] = []

    def on_lost() -> None:
        calls.append(1)
        lost.set()

    renewer = el.keep_renewing(stop, on_lost)
    try:
        assert client.entered.wait(5), "the renew loop never sent its renewal"
        hung = client.calls[-1]
        assert hung["timeout"] <= 10.0 - hung["at"]
        clock.t = 9.99
        assert el.holds() and not lost.is_set()
        clock.t = 10.0  # the renewal is still hung
        assert not el.holds()
        assert lost.wait(5), "on_lost was not called while the renewal hung"
        client.block.set()  # the hung request now succeeds, far too late
        renewer.join(5)
        assert not renewer.is_alive()
        assert not el.holds() and calls == [1]
    finally:
        stop.set()
        client.block.set()


def test_a_takeover_seen_on_renewal_is_a_loss_at_once():
    store, clock = LeaseStore(), Clock(0.0)
    el, _ = leader(store, clock)
    lost: list[int] = []
    el._on_lost = lambda: lost.append(1)
    store.lease["spec"]["holderIdentity"] = "b"  # e.g. we were paused for longer than the lease
    store.rv += 1
    store.lease["metadata"]["resourceVersion"] = str(store.rv)
    clock.t = 1.0
    assert not el.try_acquire_or_renew()
    assert not el.holds() and lost == [1]
    assert store.holder() == "b"


def test_the_old_leader_stops_before_another_replica_can_take_over():
    store, clock = LeaseStore(), Clock(0.0)
    a, _ = leader(store, clock)
    b, _ = elector(store, clock, identity="b")
    clock.t = 0.5
    assert not b.try_acquire_or_renew()  # b sees a's fresh lease; a's renewals then hang for good
    b_since = None
    while clock.t < 30.0:
        clock.t = round(clock.t + 0.25, 2)
        if b_since is None and b.try_acquire_or_renew():
            b_since = clock.t
        if b_since is not None:
            assert not a.holds(), f"both lead at t={clock.t}"
    assert b_since is not None and b_since >= 0.5 + 15.0
    assert store.holder() == "b"


def test_release_hands_the_lease_over_and_stops_writing():
    store, clock = LeaseStore(), Clock(0.0)
    a, client = leader(store, clock)
    a.release()
    assert store.holder() == "" and not a.holds()
    assert client.calls[-1]["method"] == "PUT" and client.calls[-1]["fenced"] is False
    b, _ = elector(store, clock, identity="b")
    clock.t = 0.1
    assert b.acquire(threading.Event())  # without waiting out the 15 s


def test_invalid_timings_are_refused():
    with pytest.raises(ValueError):
        elector(LeaseStore(), Clock(), lease_duration=10.0, renew_deadline=10.0)
    with pytest.raises(ValueError):
        elector(LeaseStore(), Clock(), renew_deadline=2.0, retry_period=2.0)
