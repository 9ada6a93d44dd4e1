"""The collector's pace: young collections far apart, and the books frozen out of its way once filled."""

from __future__ import annotations

import gc
import threading

from gangsched.live import collector


def test_the_books_are_frozen_once_ready_and_not_before() -> None:
    before = gc.get_threshold()
    ready, stop = threading.Event(), threading.Event()
    try:
        collector.pace()
        assert gc.get_threshold() == collector.THRESHOLDS
        gc.unfreeze()
        thread = collector.freeze_when(ready.is_set, stop, every=0.01)
        thread.join(0.1)
        assert thread.is_alive() and gc.get_freeze_count() == 0
        ready.set()
        thread.join(5)
        assert not thread.is_alive() and gc.get_freeze_count() > 0
    finally:
        stop.set()
        gc.unfreeze()
        gc.set_threshold(*before)
