"""PodGroup status, as scheduler-plugins' coscheduling reports it (so `kubectl get podgroups` reads the same), and
for Kubernetes' own PodGroups (scheduling.k8s.io/v1beta1) the condition kube-scheduler sets."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from gangsched.live.kube import ApiError, KubeClient, now_rfc3339
from gangsched.live.ports import StatusSink
from gangsched.live.translate import NATIVE_PODGROUP_API
from gangsched.model import PodGroup

log = logging.getLogger(__name__)

PODGROUP_API = "scheduling.x-k8s.io/v1alpha1"
NATIVE_API = NATIVE_PODGROUP_API
SCHEDULED = "PodGroupInitiallyScheduled"  # kube-scheduler's condition: True once, and never back


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


def native_status(obj: dict, group: PodGroup, members: list[Any], assumed: int, unschedulable: str) -> dict | None:
    """The status of a native PodGroup as kube-scheduler 1.37 writes it (schedule_one_podgroup.go): condition
    PodGroupInitiallyScheduled True (reason Scheduled) once minCount pods are placed, else False (reason
    Unschedulable, the FailedScheduling message) after a failed attempt; once True it stays. Other conditions
    (DisruptionTarget) are kept. None if nothing changes."""
    old = obj.get("status") or {}
    conditions = [c for c in old.get("conditions") or [] if isinstance(c, dict)]
    current = next((c for c in conditions if c.get("type") == SCHEDULED), None)
    if current is not None and current.get("status") == "True":
        return None
    placed = sum(1 for p in members if p.node is not None) + assumed  # bound, finished ones too
    if placed >= group.min_member:
        want = {"status": "True", "reason": "Scheduled", "message": ""}
    elif unschedulable:
        want = {"status": "False", "reason": "Unschedulable", "message": unschedulable[:32768]}
    else:
        return None
    want = {"type": SCHEDULED, **want, "observedGeneration": (obj.get("metadata") or {}).get("generation", 0)}
    if current is not None and all(current.get(k) == v for k, v in want.items()):
        return None
    same = current is not None and current.get("status") == want["status"]
    want["lastTransitionTime"] = current["lastTransitionTime"] if same else now_rfc3339()  # type: ignore[index]
    return {"conditions": [want if c is current else c for c in conditions] + ([] if current else [want])}


def flush_status(cache: Any, sink: StatusSink, told: Callable[[str], str] = lambda key: "") -> None:
    """Write the status of each PodGroup whose members changed since the last flush (`cache.dirty_groups` of a
    `live.cache.Cache`); `told(key)`: the latest unschedulable message of a native group's gang. Shared by
    `gangsched run` and `gangsched extender`."""
    for key in cache.dirty_groups:
        obj, group = cache.group_objs.get(key), cache.groups.get(key)
        if obj is None or isinstance(group, str) or group is None:
            continue
        members = [cache.pods[k] for k in cache.group_members.get(key, ()) if k in cache.pods]
        assumed = sum(1 for p in members if p.key in cache.assumed and p.node is None)
        if obj.get("apiVersion") == NATIVE_API:
            status = native_status(obj, group, members, assumed, told(key))
            if status is not None:
                sink.write(key, status, api=NATIVE_API)
            continue
        status = group_status(obj, group, members, assumed)
        if status is not None:
            sink.write(key, status)
    cache.dirty_groups.clear()


class StatusWriter:
    """Merge-patches PodGroup status from its own thread; a newer status for a group replaces a queued one."""

    def __init__(self, client: KubeClient):
        self.client = client
        self._pending: dict[str, tuple[str, dict]] = {}
        self._last: dict[str, dict] = {}  # last status written per group
        self._cond = threading.Condition()
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="podgroup-status", daemon=True)

    def start(self) -> StatusWriter:
        self._thread.start()
        return self

    def write(self, key: str, status: dict, api: str = PODGROUP_API) -> None:
        last = self._last.get(key)
        if last is not None and "scheduleStartTime" in status and "scheduleStartTime" in last:
            status["scheduleStartTime"] = last["scheduleStartTime"]  # the watch has not shown our write yet
        if status == last:
            return
        self._last[key] = status
        with self._cond:
            self._pending[key] = (api, status)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                key, (api, status) = self._pending.popitem()
            ns, name = key.split("/", 1)
            try:
                # a native PodGroup is a built-in type: a strategic merge keeps the conditions others wrote
                # meanwhile (preemption's DisruptionTarget); scheduler-plugins' is a CRD, merge patch only
                kind = "strategic-merge-patch" if api == NATIVE_API else "merge-patch"
                self.client.request("PATCH", f"/apis/{api}/namespaces/{ns}/podgroups/{name}/status",
                                    {"status": status}, content_type=f"application/{kind}+json")
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
