"""Queue-sort plugins and the gang queue they order.

The queue holds whole gangs. `GangQueue.pop_order` sorts them by the profile's queue-sort key; a gang that
has waited longer than `starvation_seconds` jumps ahead of everything and, while it cannot be placed, no
gang behind it may be (a reservation): the cluster drains until it fits, so big gangs never starve behind
a stream of small ones.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from gangsched.framework import GangInfo


class PriorityFifo:
    """Higher priority first, then first come first served (kube-scheduler's PrioritySort)."""

    name = "priority-fifo"

    def key(self, gang: GangInfo, now: float) -> tuple[Any, ...]:
        return (-gang.priority, gang.enqueued, gang.group.key)


class Fifo:
    name = "fifo"

    def key(self, gang: GangInfo, now: float) -> tuple[Any, ...]:
        return (gang.enqueued, gang.group.key)


class ShortestFirst:
    """Shortest known run time first (gangs without one last), by total GPU time: duration x GPUs."""

    name = "shortest-first"

    def key(self, gang: GangInfo, now: float) -> tuple[Any, ...]:
        work = float("inf") if gang.duration is None else gang.duration * max(gang.gpu_milli, 1)
        return (-gang.priority, work, gang.enqueued, gang.group.key)


class SmallestFirst:
    """Fewest GPUs first: small gangs fill holes (starvation protection keeps big ones moving)."""

    name = "smallest-first"

    def key(self, gang: GangInfo, now: float) -> tuple[Any, ...]:
        return (-gang.priority, gang.gpu_milli, gang.enqueued, gang.group.key)


QUEUE_SORTS = {cls.name: cls for cls in (PriorityFifo, Fifo, ShortestFirst, SmallestFirst)}


class GangQueue:
    def __init__(self, sort: Any, starvation_seconds: float | None = None, backfill: bool = True):
        self.sort = sort
        self.starvation_seconds = starvation_seconds
        self.backfill = backfill
        self.pending: dict[Hashable, GangInfo] = {}

    def add(self, gang: GangInfo) -> None:
        self.pending[gang.key] = gang

    def remove(self, key: Hashable) -> GangInfo | None:
        return self.pending.pop(key, None)

    def __len__(self) -> int:
        return len(self.pending)

    def starving(self, gang: GangInfo, now: float) -> bool:
        return self.starvation_seconds is not None and now - gang.enqueued >= self.starvation_seconds

    def pop_order(self, now: float) -> list[GangInfo]:
        """Gangs in the order to try them: those with members already holding nodes (a restart mid-binding, a
        replacement pod) first, since what they hold is useless until they complete; then starving ones,
        oldest first; then the queue-sort order."""
        return sorted(self.pending.values(),
                      key=lambda g: (not g.bound, not self.starving(g, now),
                                     g.enqueued if self.starving(g, now) else 0.0,
                                     self.sort.key(g, now)))

    def blocks(self, gang: GangInfo, now: float) -> bool:
        """After this gang failed, may nothing behind it be tried?"""
        return not self.backfill or self.starving(gang, now)
