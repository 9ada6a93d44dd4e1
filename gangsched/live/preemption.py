"""Live preemption: evict the victims the core's search picked, and hold what they free for the preemptor.

Victims get kube-scheduler's `DisruptionTarget` condition (reason `PreemptionByScheduler`, which Job
controllers and training operators read) and a `Preempted` Event naming the preemptor, then are deleted
gracefully (their `terminationGracePeriodSeconds` respected). A native PodGroup (scheduling.k8s.io/v1beta1)
evicted whole gets the same condition, which its API defines for this (kube-scheduler 1.37 does not write it
yet). The preemptor's members get `status.nominatedNodeName`, as kube-scheduler writes it, before the
evictions. While the victims terminate the gang *holds*: the pass places no gang of lower priority (see
`cycle.run_pass`), so what the victims free goes to it. The hold ends when the gang is placed, is gone, or its
victims have not gone within `hold_seconds`. A restarted scheduler finds the nominations on the pods and holds
again; the victims it finds terminating are still accounted until they go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gangsched.core import GangResult, Scheduler
from gangsched.framework import GangInfo
from gangsched.live.cache import Cache, GangKey
from gangsched.live.kube import NOT_LEADER, ApiError, KubeClient, now_rfc3339
from gangsched.live.podgroups import NATIVE_API
from gangsched.live.ports import Recorder
from gangsched.preempt import find_victims
from gangsched.result import Code, Status

log = logging.getLogger(__name__)


class Evictor(Protocol):
    def evict(self, pod: dict, message: str) -> bool: ...

    def nominate(self, pod: dict, node: str) -> None: ...

    def disrupt(self, group: dict, message: str) -> None: ...


@dataclass
class Hold:
    victims: frozenset[str]  # pod keys
    until: float
    expired: bool = False  # kept (not dropped) so a nomination still on the pods is not taken up again


class Preemptor:
    def __init__(self, cache: Cache, core: Scheduler, evictor: Evictor, recorder: Recorder,
                 clock: Callable[[], float], hold_seconds: float = 120.0):
        self.cache, self.core, self.evictor, self.recorder, self.clock = cache, core, evictor, recorder, clock
        self.hold_seconds = hold_seconds
        self.holding: dict[GangKey, Hold] = {}
        self.evicted = 0

    def holds(self, gang: GangInfo) -> bool:
        gkey: GangKey = gang.key  # type: ignore[assignment]
        hold = self.holding.get(gkey)
        if hold is None and any(p.nominated for p in self._waiting(gkey)):  # nominated before a restart
            hold = self.holding[gkey] = Hold(frozenset(), self.clock() + self.hold_seconds)
        if hold is None or hold.expired:
            return False
        if self.clock() > hold.until:
            log.warning("%s: its victims did not go within %.0fs; it no longer holds capacity", gkey,
                        self.hold_seconds)
            hold.expired = True
            return False
        return True

    def settle(self, gang: GangInfo, result: GangResult) -> Status | None:
        """After the gang's attempt: drop its hold once placed; preempt if it did not fit. The status to report
        instead of the attempt's, if preemption has something to say."""
        gkey: GangKey = gang.key  # type: ignore[assignment]
        if result.ok:
            self.holding.pop(gkey, None)
            return None
        if result.code != Code.UNSCHEDULABLE or gkey in self.holding:
            return None
        allowed = not any(p.never_preempts for p in self._waiting(gkey))
        found = find_victims(self.core, gang, self.cache.running_below(gang.priority), allowed)
        if not found.ok:
            return Status(result.code, f"{result.message()}; preemption: {found.status.message}")
        needs = ", ".join(f"{n} x {d}" for d, n in _shapes(gang).items())
        why = f"preempted by {gkey} (priority {gang.priority}), which needs {needs}"
        # Nominations first: a scheduler killed half-way then finds them and holds the capacity again.
        waiting = {p.obj["metadata"]["name"]: p for p in self._waiting(gkey)}
        for a in found.placement:
            info = waiting.get(a.pod_key.split("/", 1)[1])
            if info is not None:
                self.evictor.nominate(info.obj, a.node_name)
        for key in found.victim_pods:
            info = self.cache.pods.get(key)
            if info is not None and self.evictor.evict(info.obj, why):
                self.evicted += 1
                self.recorder.record(info.obj, "Pod", "Preempted", why)
        for unit in found.victims:  # a native PodGroup evicted whole says so, as its pods do
            group = self.cache.group_objs.get(str(unit.gang.key)) if unit.whole else None
            if group is not None and group.get("apiVersion") == NATIVE_API:
                self.evictor.disrupt(group, why)
        self.holding[gkey] = Hold(frozenset(found.victim_pods), self.clock() + self.hold_seconds)
        gangs = sorted({_label(str(u.gang.key)) for u in found.victims})
        past = sum(u.gang.pdb_violations for u in found.victims if u.whole)
        budgets = f", {past} of them past a PodDisruptionBudget" if past else ""
        return Status(Code.UNSCHEDULABLE, f"{result.message()}; preempting {len(found.victim_pods)} pod(s) of "
                                          f"{', '.join(gangs)} (lower priority){budgets} to make room")

    def forget(self, gkey: GangKey) -> None:
        self.holding.pop(gkey, None)

    def _waiting(self, gkey: GangKey) -> list:
        gang = self.cache.gangs.get(gkey)
        return [self.cache.pods[k] for k in gang.pending if k in self.cache.pods] if gang else []


def _label(key: str) -> str:
    """A victim's name in messages: its PodGroup, or a lone pod (see `Cache.running_below`)."""
    return f"pod {key[4:]}" if key.startswith("pod:") else f"gang {key}"


def _shapes(gang: GangInfo) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in gang.pods:
        d = p.demand
        what = f"{d.gpu_count} nvidia.com/gpu" if d.gpu_count else f"{d.request('cpu')}m cpu"
        out[what] = out.get(what, 0) + 1
    return out


class ApiEvictor:
    """The API server's side: the DisruptionTarget condition, a graceful delete, status.nominatedNodeName."""

    def __init__(self, client: KubeClient):
        self.client = client

    def evict(self, pod: dict, message: str) -> bool:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta.get('namespace', 'default')}/pods/{meta['name']}"
        condition = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                     "message": message, "lastTransitionTime": now_rfc3339()}
        try:
            self.client.request("PATCH", f"{path}/status", {"status": {"conditions": [condition]}},
                                content_type="application/strategic-merge-patch+json")
            # no gracePeriodSeconds: the pod's own terminationGracePeriodSeconds applies
            self.client.request("DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                                 "preconditions": {"uid": meta.get("uid")}})
            return True
        except ApiError as e:
            if e.status in (404, 409):
                return False  # gone already, or re-created: not ours to evict
            if e.reason != NOT_LEADER:
                log.warning("evicting %s/%s failed: %s", meta.get("namespace"), meta["name"], e)
            return False

    def disrupt(self, group: dict, message: str) -> None:
        """The native PodGroup's DisruptionTarget condition, by strategic merge: its other conditions stay."""
        meta = group["metadata"]
        condition = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                     "message": message[:32768], "lastTransitionTime": now_rfc3339(),
                     "observedGeneration": meta.get("generation", 0)}
        try:
            self.client.request("PATCH", f"/apis/{NATIVE_API}/namespaces/{meta.get('namespace', 'default')}/"
                                f"podgroups/{meta['name']}/status", {"status": {"conditions": [condition]}},
                                content_type="application/strategic-merge-patch+json")
        except ApiError as e:
            if e.status != 404 and e.reason != NOT_LEADER:
                log.warning("DisruptionTarget on PodGroup %s not written: %s", meta["name"], e)

    def nominate(self, pod: dict, node: str) -> None:
        meta = pod["metadata"]
        try:
            self.client.request("PATCH", f"/api/v1/namespaces/{meta.get('namespace', 'default')}/pods/"
                                f"{meta['name']}/status", {"status": {"nominatedNodeName": node}},
                                content_type="application/strategic-merge-patch+json")
        except ApiError as e:
            if e.status != 404 and e.reason != NOT_LEADER:
                log.warning("nominating %s for %s failed: %s", meta["name"], node, e)
