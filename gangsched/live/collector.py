"""CPython's garbage collector paced for a process that keeps a whole cluster in memory.

By default (thresholds 700, 10, 10) a young collection runs every 700 new containers and a full one every 100
young ones; filling the books after a restart makes millions (each pod's JSON is dozens of dicts and lists), and
every full collection walks all that is alive. At 100,000 pods that was 40 % of the fill's CPU
(benchmarks/README.md, "Restart at scale"). The books hold few reference cycles, and those short-lived ones
(a request's, an exception's) wait a little longer: young collections every 50,000 new containers. Once the
informers have synced and their lists are applied, what exists is frozen (`gc.freeze`): later collections,
full ones too, skip it, so their pauses no longer grow with the cluster.
Frozen objects are still freed as their last reference goes; only a cycle among them stays.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

THRESHOLDS = (50_000, 20, 10)


def pace() -> None:
    """Young collections every THRESHOLDS[0] new containers, instead of every 700."""
    gc.set_threshold(*THRESHOLDS)


def freeze_when(ready: Callable[[], bool], stop: threading.Event, every: float = 0.2) -> threading.Thread:
    """Freeze what exists once `ready()` (the informers synced and their lists applied), from a thread of its
    own, checking every `every` seconds."""

    def wait() -> None:
        while not stop.wait(every):
            if ready():
                gc.freeze()
                log.info("books filled: %d objects frozen out of the collector's way", gc.get_freeze_count())
                return

    thread = threading.Thread(target=wait, name="gc-freeze", daemon=True)
    thread.start()
    return thread
