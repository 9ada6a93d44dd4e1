"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Expiry is judged by when *we* last saw the lease change (not by the holder's clock), so clock skew between
replicas cannot make two of them leader at once. A leader that cannot renew within `renew_deadline` stops
leading (the caller exits), strictly before another replica may take over after `lease_duration`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gangsched.live.kube import ApiError, KubeClient, now_rfc3339

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0):
        self.client = client
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self.leading = False

    def _spec(self, acquire_time: str | None) -> dict:
        now = now_rfc3339(micro=True)
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": acquire_time or now, "renewTime": now}

    def try_acquire_or_renew(self) -> bool:
        try:
            lease = self.client.request("GET", f"{self.path}/{self.name}", limit=False)
        except ApiError as e:
            if e.status != 404:
                log.warning("lease get failed: %s", e)
                return False
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None)}
            try:
                self.client.request("POST", self.path, body, limit=False)
                return True
            except ApiError:
                return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        seen = (holder, spec.get("renewTime") or "")
        now = time.monotonic()
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # someone else holds a lease that has not expired
        lease["spec"] = self._spec(spec.get("acquireTime") if holder == self.identity else None)
        if holder != self.identity:
            lease["spec"]["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + 1
        try:  # resourceVersion in the body makes this a compare-and-swap
            self.client.request("PUT", f"{self.path}/{self.name}", lease, limit=False)
            return True
        except ApiError as e:
            log.info("lease update lost: %s", e)
            return False

    def acquire(self, stop: threading.Event) -> bool:
        log.info("waiting to lead lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not stop.is_set():
            if self.try_acquire_or_renew():
                self.leading = True
                log.info("became leader")
                return True
            stop.wait(self.retry_period)
        return False

    def keep_renewing(self, stop: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        def loop() -> None:
            last_ok = time.monotonic()
            while not stop.wait(self.retry_period):
                if self.try_acquire_or_renew():
                    last_ok = time.monotonic()
                elif time.monotonic() - last_ok > self.renew_deadline:
                    self.leading = False
                    log.error("lost the lease (no renewal for %.0fs)", self.renew_deadline)
                    on_lost()
                    return
        t = threading.Thread(target=loop, name="leader-renew", daemon=True)
        t.start()
        return t

    def release(self) -> None:
        """Hand the lease over at once on a clean shutdown instead of making the next leader wait it out."""
        if not self.leading:
            return
        try:
            lease = self.client.request("GET", f"{self.path}/{self.name}", limit=False)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                self.client.request("PUT", f"{self.path}/{self.name}", lease, limit=False)
        except ApiError as e:
            log.warning("lease release failed: %s", e)
        self.leading = False
