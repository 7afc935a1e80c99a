"""How many cores a model call may use: the count behind wide calls (``Model.runs_wide``)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def opens_wide(wide: bool, threads: int) -> bool:
    """Whether a model asked for ``wide`` gets a wide runtime (a session or interpreter with a
    thread per core): not if a call already has every core."""
    return wide and usable_cores() > threads
