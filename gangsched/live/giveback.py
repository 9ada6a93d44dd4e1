"""Giving back a gang left incomplete (as KAI-Scheduler's stale-gang eviction does).

A gang with members bound but fewer than minMember (counting members that already succeeded) wastes what
they hold: a member deleted, a binding refused for good, a scheduler killed mid-gang whose replacement could
not finish it. After the PodGroup's `scheduleTimeoutSeconds` (else the default) its bound members are
deleted, so the capacity goes back and the job's controller can start over. Only members the API server
shows bound count: a member whose binding keeps being refused is placed again and again, but never resets
the clock. A gang whose PodGroup was deleted or became invalid keeps the last minMember seen; with none seen,
it is incomplete while any member still waits, since none can be placed without its group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gangsched.live.cache import Cache, GangKey
from gangsched.live.podgroups import PODGROUP_API
from gangsched.live.ports import Recorder
from gangsched.model import PodGroup

log = logging.getLogger(__name__)

DeletePod = Callable[[dict], bool]  # the pod object -> deleted (or already gone)


class GiveBack:
    def __init__(self, cache: Cache, delete_pod: DeletePod, recorder: Recorder, default_timeout: float = 60.0,
                 sweep_every: float = 30.0):
        self.cache = cache
        self.delete_pod = delete_pod
        self.recorder = recorder
        self.default_timeout = default_timeout
        self.sweep_every = sweep_every
        self.since: dict[GangKey, float] = {}  # incomplete gang -> when first seen so
        self.evicted = 0
        self._swept: float | None = None  # when every gang was last looked at

    def check(self, now: float) -> None:
        """Time the incomplete gangs and give back those past their timeout. Looked at: the gangs whose PodGroup
        or members changed since the last status flush (`cache.dirty_groups`: so this runs before it) and those
        being timed; every gang at the first check and once every `sweep_every` seconds, so a change that went
        unmarked delays a give-back but never loses it. (Every gang at every cycle cost 0.3 s a cycle with
        100,000 pods bound.)"""
        cache = self.cache
        for gkey in [k for k in self.since if k not in cache.gangs]:
            del self.since[gkey]
        if self._swept is None or now - self._swept >= self.sweep_every:
            self._swept = now
            keys = [k for k, g in cache.gangs.items() if k.group and g.held]
        else:
            keys = list({GangKey(*ref.split("/", 1), True) for ref in cache.dirty_groups} | self.since.keys())
        for gkey in keys:  # (a list: evicting edits the gangs)
            gang = cache.gangs.get(gkey)
            bound = cache.bound_members(gkey) if gang is not None else []
            group = cache.groups.get(gkey.ref)
            have = len(bound) + cache.succeeded(gkey.ref)
            if gang is None or not bound or not self._incomplete(gkey, group, have, gang.pending):
                self.since.pop(gkey, None)
                continue
            start = self.since.setdefault(gkey, now)
            timeout = (group.timeout if isinstance(group, PodGroup) else None) or self.default_timeout
            if now - start >= timeout:
                self._evict(gkey, group, bound, timeout)
                del self.since[gkey]

    def _incomplete(self, gkey: GangKey, group: PodGroup | str | None, have: int, pending: set[str]) -> bool:
        if isinstance(group, PodGroup):
            return have < group.min_member
        need = self.cache.min_known.get(gkey.ref)
        return (need is not None and have < need) or bool(pending)

    def _evict(self, gkey: GangKey, group: PodGroup | str | None, bound: list[str], timeout: float) -> None:
        if isinstance(group, PodGroup):
            why = f"has {len(bound)} of minMember={group.min_member} pods bound"
        elif group is None:
            why = f"lost its PodGroup with {len(bound)} pods bound"
        else:
            why = f"has an invalid PodGroup ({group}) with {len(bound)} pods bound"
        msg = (f"{gkey} {why} and no replacement placed within {timeout:.0f}s; "
               f"deleting {', '.join(bound)} to free their resources")
        log.warning(msg)
        obj = self.cache.group_objs.get(gkey.ref)
        if obj is not None:
            self.recorder.record(obj, "PodGroup", "GangIncomplete", msg, api_version=PODGROUP_API)
        for key in bound:
            info = self.cache.pods.get(key)
            if info is None:
                continue
            self.recorder.record(info.obj, "Pod", "Preempted", msg)
            if self.delete_pod(info.obj):
                self.evicted += 1
