"""The collector's settings once a server process has started (``runtime/memory.py``)."""

from __future__ import annotations

import gc

from sluiceway.runtime.memory import YOUNG_GENERATION, settle_heap


def test_settling_the_heap_freezes_start_up_and_enlarges_only_the_young_generation() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    kept = object.__new__(type("Kept", (), {}))  # tracked by the collector, built at "start-up"
    try:
        settle_heap()
        assert gc.is_tracked(kept)
        assert all(found is not kept for found in gc.get_objects())  # frozen: never scanned
        assert gc.get_threshold() == (YOUNG_GENERATION, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
