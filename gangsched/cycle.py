"""One scheduling pass, shared by the simulator, the live scheduler and the extender.

queue order -> for each gang: `Scheduler.schedule_gang` (all-or-nothing in one state trial: committed when
the gang is placed, rolled back otherwise) -> starvation blocking. Adapters decide only what "ready" means
(a gang in retry backoff is not) and what to do with each result (bind, post an Event, back off).

Blocking (a reservation of the cluster for the gang at the head of the line): with `backfill: false` any
gang that does not fit stops the pass, and a starving gang always does, even while it waits out a backoff,
so gangs behind it cannot take what it is waiting for. A gang that can never fit (UNRESOLVABLE: a
nodeSelector no node matches, more GPUs than the cluster has) blocks nothing: reserving the cluster for it
would stall everyone for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gangsched.core import GangResult, Scheduler
from gangsched.framework import GangInfo
from gangsched.queue import GangQueue
from gangsched.result import Code, Status

log = logging.getLogger(__name__)

# Given a gang, None if it may be tried now, else the status it waits under (its last attempt's).
Ready = Callable[[GangInfo], Status | None]
OnResult = Callable[[GangInfo, GangResult, bool], None]  # (gang, result, starving)


def _always(_: GangInfo) -> Status | None:
    return None


def run_pass(scheduler: Scheduler, queue: GangQueue, now: float, *, ready: Ready = _always,
             on_result: OnResult | None = None, holds: Callable[[GangInfo], bool] | None = None
             ) -> list[GangResult]:
    """Try the queue's gangs in order; placed gangs leave the queue. Returns every attempt's result.

    `holds(gang)`: the gang has capacity set aside for it (victims of its preemption are terminating): while it
    waits, no gang of lower priority is placed, so what the victims free goes to it."""
    holds = holds or (lambda _: False)
    results = []
    floor: int | None = None  # gangs below this priority wait for a preemptor that holds capacity
    for gang in queue.pop_order(now):
        if floor is not None and gang.priority < floor:
            continue
        waiting = ready(gang)
        if waiting is not None:
            if holds(gang):
                floor = gang.priority if floor is None else max(floor, gang.priority)
            if waiting.code != Code.UNRESOLVABLE and queue.blocks(gang, now):
                break  # it still holds the line while it backs off
            continue
        try:
            result = scheduler.schedule_gang(gang)
        except Exception as e:  # one bad gang must not stop the pass; its trial was rolled back
            log.exception("scheduling gang %s failed", gang.key)
            result = GangResult(gang, Status.error(f"internal error: {type(e).__name__}: {e}"))
        results.append(result)
        starving = queue.starving(gang, now)
        if result.ok:
            queue.remove(gang.key)
        if on_result is not None:
            on_result(gang, result, starving)
        if not result.ok and holds(gang):
            floor = gang.priority if floor is None else max(floor, gang.priority)
        if result.code in (Code.UNSCHEDULABLE, Code.ERROR) and queue.blocks(gang, now):
            break
    return results
