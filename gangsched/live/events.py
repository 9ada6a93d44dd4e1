"""Kubernetes Events that tell users why a pod or PodGroup waits, posted off the scheduling thread.

Events are advice, not state: they go through a bounded queue, and the same (object, reason, message) is
posted at most once per `dedupe_seconds` (kube-scheduler's broadcaster aggregates the same way), so an
unschedulable gang retried every second does not flood the API server.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid

from gangsched.live.kube import ApiError, KubeClient, now_rfc3339

log = logging.getLogger(__name__)
COMPONENT = "gangsched"


class EventRecorder:
    def __init__(self, client: KubeClient, dedupe_seconds: float = 30.0, capacity: int = 10_000):
        self.client = client
        self.dedupe_seconds = dedupe_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._recent: dict[tuple[str, str, str], float] = {}
        self.posted = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)

    def start(self) -> EventRecorder:
        self._thread.start()
        return self

    def record(self, obj: dict, kind: str, reason: str, message: str, warning: bool = True,
               api_version: str = "v1") -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}", reason, message)
        now = time.monotonic()
        if now - self._recent.get(key, -1e9) < self.dedupe_seconds:
            return
        if len(self._recent) > 50_000:
            self._recent = {k: t for k, t in self._recent.items() if now - t < self.dedupe_seconds}
        self._recent[key] = now
        ns = meta.get("namespace") or "default"
        ts = now_rfc3339()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:12]}", "namespace": ns},
            "involvedObject": {"kind": kind, "apiVersion": api_version, "namespace": ns, "name": meta.get("name"),
                               "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
            "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
        }
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self.client.request("POST", f"/api/v1/namespaces/{event['metadata']['namespace']}/events", event)
                self.posted += 1
            except ApiError as e:
                log.debug("event not posted: %s", e)

    def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
