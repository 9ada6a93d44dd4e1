"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Expiry is judged by when *we* last saw the lease change (not by the holder's clock), so clock skew between
replicas cannot make two of them leader at once. Another replica may take over `lease_duration` after it saw
our last renewal land, which is after we sent it; `holds()` turns False `renew_deadline` after we sent it, on
our monotonic clock, whatever the renew thread is doing (a hung request included). So, with the write fence
(`KubeClient(fence=elector.holds)`), the old leader stops writing strictly before a new one can start; the
margin `lease_duration - renew_deadline` absorbs the rate difference of the two clocks and requests in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from gangsched.live.kube import ApiError, now_rfc3339

log = logging.getLogger(__name__)


class LeaseClient(Protocol):
    """What the elector needs of `KubeClient`: one request method that can skip the write fence."""

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = ..., limit: bool = ...,
                fenced: bool = ...) -> dict: ...


class LeaseLost(Exception):
    """No time left before the renew deadline: the attempt is given up without sending anything more."""


class LeaderElector:
    def __init__(self, client: LeaseClient, namespace: str, name: str, identity: str, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        # The Lease stores whole seconds, and others wait that long: it is the bound the deadline must beat.
        if not int(lease_duration) > renew_deadline > retry_period > 0:
            raise ValueError("leader election needs lease_duration (whole seconds) > renew_deadline > retry_period "
                             f"> 0, got {lease_duration} / {renew_deadline} / {retry_period}")
        self.client = client
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.clock = clock
        self._observed: tuple[str, str, str] | None = None  # (holder, renewTime, resourceVersion) last seen
        self._observed_at = 0.0
        self._lock = threading.Lock()
        self._leading = False  # acquired, and neither lost nor released since
        self._lost = False  # once lost, never leader again: the process is to exit (as kube-scheduler does)
        self._renewed_at = -float("inf")  # clock() when the last successful acquire/renew was *sent*
        self._on_lost: Callable[[], None] | None = None

    # ---- the fence ----------------------------------------------------------------------------------------------
    def holds(self) -> bool:
        """True only while the last successful acquire/renew was sent less than `renew_deadline` ago."""
        with self._lock:
            return self._leading and not self._lost and self.clock() - self._renewed_at < self.renew_deadline

    @property
    def leading(self) -> bool:
        return self.holds()

    def time_left(self) -> float:
        """Seconds until `holds()` turns False (<= 0: already False)."""
        with self._lock:
            if not self._leading or self._lost:
                return 0.0
            return self._renewed_at + self.renew_deadline - self.clock()

    # ---- one attempt --------------------------------------------------------------------------------------------
    def _spec(self, acquire_time: str | None) -> dict:
        now = now_rfc3339(micro=True)
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": acquire_time or now, "renewTime": now}

    def _request(self, deadline: float, method: str, path: str, body: Any = None) -> dict:
        # Never wait on a reply past the deadline: a renewal that lands later is worthless (holds() has
        # turned False by then) and a hung connection must not hold up the decision that we lost.
        left = deadline - self.clock()
        if left <= 0:
            raise LeaseLost
        return self.client.request(method, path, body, timeout=left, limit=False, fenced=False)

    def _renewed(self, sent_at: float) -> bool:
        with self._lock:
            if self._lost:  # a late success cannot bring back a lease we already gave up on
                return False
            self._renewed_at = max(self._renewed_at, sent_at)
            return True

    def try_acquire_or_renew(self) -> bool:
        """One GET + CAS update of the lease, all of it within the renew deadline (when leading) or within
        `renew_deadline` of now (when acquiring). True when the lease is ours, renewed as of the update's send."""
        with self._lock:
            leading = self._leading and not self._lost
            deadline = (self._renewed_at if leading else self.clock()) + self.renew_deadline
        try:
            return self._try(deadline)
        except LeaseLost:
            return False

    def _try(self, deadline: float) -> bool:
        try:
            lease = self._request(deadline, "GET", f"{self.path}/{self.name}")
        except ApiError as e:
            if e.status != 404:
                log.warning("lease get failed: %s", e)
                return False
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None)}
            sent_at = self.clock()
            try:
                self._request(deadline, "POST", self.path, body)
            except ApiError as e:
                log.info("lease create lost: %s", e)
                return False
            return self._renewed(sent_at)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        # Any write to the lease restarts the expiry clock, even one within the same renewTime microsecond.
        seen = (holder, spec.get("renewTime") or "", (lease.get("metadata") or {}).get("resourceVersion") or "")
        now = self.clock()
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and now < self._observed_at + duration:
            self._lose(f"lease taken over by {holder}")  # (a no-op while acquiring)
            return False  # someone else holds a lease that has not expired
        lease["spec"] = self._spec(spec.get("acquireTime") if holder == self.identity else None)
        if holder != self.identity:
            lease["spec"]["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + 1
        sent_at = self.clock()  # others time our renewal from when it lands, which is after this
        try:  # resourceVersion in the body makes this a compare-and-swap
            self._request(deadline, "PUT", f"{self.path}/{self.name}", lease)
        except ApiError as e:
            log.info("lease update lost: %s", e)
            return False
        return self._renewed(sent_at)

    # ---- the loops ----------------------------------------------------------------------------------------------
    def acquire(self, stop: threading.Event) -> bool:
        log.info("waiting to lead lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not stop.is_set():
            with self._lock:
                if self._lost:
                    return False
            if self.try_acquire_or_renew():
                with self._lock:
                    # Lead only if the update did not take the whole deadline; else renew it next round.
                    self._leading = not self._lost and self.clock() - self._renewed_at < self.renew_deadline
                    leading = self._leading
                if leading:
                    log.info("became leader")
                    return True
            stop.wait(self.retry_period)
        return False

    def check(self) -> bool:
        """holds(), and if the deadline has just passed, the loss declared (on_lost called). The watchdog's step."""
        if self.holds():
            return True
        with self._lock:
            expired = self._leading and not self._lost
        if expired:
            self._lose(f"no successful renewal for {self.renew_deadline:g}s")
        return False

    def _lose(self, why: str) -> None:
        with self._lock:
            if self._lost or not self._leading:
                return
            self._lost, self._leading = True, False
            on_lost = self._on_lost
        log.error("lost the lease: %s", why)
        if on_lost is not None:
            on_lost()

    def keep_renewing(self, stop: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew every `retry_period` until `stop` is set; `on_lost` is called once if the lease is lost.

        A watchdog thread calls `on_lost` the moment `holds()` turns False, even while the renew thread is
        stuck in a request. `stop` should be set only after the last write (bindings drain after a SIGTERM),
        or the fence turns those writes away `renew_deadline` later. Returns the renew thread."""
        self._on_lost = on_lost

        def renew() -> None:
            while not stop.wait(self.retry_period):
                with self._lock:
                    if self._lost or not self._leading:  # lost or released: never write the lease again
                        return
                self.try_acquire_or_renew()

        def watchdog() -> None:
            # Wakes when holds() is due to turn False (at the latest every retry_period, for injected clocks).
            while not stop.wait(max(0.0, min(self.time_left(), self.retry_period))):
                if not self.check():
                    return

        t = threading.Thread(target=renew, name="leader-renew", daemon=True)
        t.start()
        threading.Thread(target=watchdog, name="leader-watchdog", daemon=True).start()
        return t

    def release(self) -> None:
        """Hand the lease over at once on a clean shutdown instead of making the next leader wait it out."""
        with self._lock:
            if not self._leading or self._lost:
                return
            self._leading = False  # no write may go out after this point
        deadline = self.clock() + self.renew_deadline
        try:
            lease = self._request(deadline, "GET", f"{self.path}/{self.name}")
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                self._request(deadline, "PUT", f"{self.path}/{self.name}", lease)  # CAS: only if still ours
        except (ApiError, LeaseLost) as e:
            log.warning("lease release failed: %s", e or "timed out")
