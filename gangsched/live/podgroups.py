"""PodGroup status, as scheduler-plugins' coscheduling reports it, so `kubectl get podgroups` reads the same."""

from __future__ import annotations

import logging
import threading
from typing import Any

from gangsched.live.kube import ApiError, KubeClient, now_rfc3339
from gangsched.model import PodGroup

log = logging.getLogger(__name__)

PODGROUP_API = "scheduling.x-k8s.io/v1alpha1"


def group_status(obj: dict, group: PodGroup, members: list[Any], assumed: int) -> dict | None:
    """The status the PodGroup should have, or None if it already has it. `members` are PodInfo."""
    running = sum(1 for p in members if p.phase == "Running")
    succeeded = sum(1 for p in members if p.phase == "Succeeded")
    failed = sum(1 for p in members if p.phase == "Failed")
    bound = sum(1 for p in members if p.node is not None and p.phase not in ("Succeeded", "Failed")) + assumed
    need = group.min_member
    if succeeded >= need:
        phase = "Finished"
    elif failed and running + succeeded + bound - running < need and not assumed:
        phase = "Failed"
    elif running + succeeded >= need:
        phase = "Running"
    elif bound + succeeded >= need:
        phase = "Scheduled"
    elif bound:
        phase = "Scheduling"
    else:
        phase = "Pending"
    old = obj.get("status") or {}
    status: dict[str, Any] = {"phase": phase, "running": running, "succeeded": succeeded, "failed": failed}
    owner = next((f"{p.key.split('/', 1)[0]}/{ref['name']}" for p in members
                  for ref in p.obj["metadata"].get("ownerReferences") or [] if ref.get("controller")), None)
    if owner:
        status["occupiedBy"] = owner
    if phase != "Pending" and not old.get("scheduleStartTime"):
        status["scheduleStartTime"] = now_rfc3339()
    if all(old.get(k, 0 if k in ("running", "succeeded", "failed") else None) == v for k, v in status.items()):
        return None
    return status


class StatusWriter:
    """Merge-patches PodGroup status from its own thread; a newer status for a group replaces a queued one."""

    def __init__(self, client: KubeClient):
        self.client = client
        self._pending: dict[str, dict] = {}
        self._last: dict[str, dict] = {}  # last status written per group
        self._cond = threading.Condition()
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="podgroup-status", daemon=True)

    def start(self) -> StatusWriter:
        self._thread.start()
        return self

    def write(self, key: str, status: dict) -> None:
        last = self._last.get(key)
        if last is not None and "scheduleStartTime" in status and "scheduleStartTime" in last:
            status["scheduleStartTime"] = last["scheduleStartTime"]  # the watch has not shown our write yet
        if status == last:
            return
        self._last[key] = status
        with self._cond:
            self._pending[key] = status
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                key, status = self._pending.popitem()
            ns, name = key.split("/", 1)
            try:
                self.client.request("PATCH", f"/apis/{PODGROUP_API}/namespaces/{ns}/podgroups/{name}/status",
                                    {"status": status}, content_type="application/merge-patch+json")
                self.written += 1
            except ApiError as e:
                if e.status != 404:
                    log.warning("PodGroup %s status not written: %s", key, e)

    def close(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
