"""The ``sluiceway worker`` command: one worker, run until the process is told to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

from sluiceway.config import Settings
from sluiceway.models.base import ModelKind
from sluiceway.runtime.memory import settle_heap
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.worker import Worker


def select_kinds(kinds: Sequence[ModelKind], names: str) -> list[ModelKind]:
    """The kinds named in a comma-separated list (all of them when it is empty)."""
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    if not wanted:
        return list(kinds)
    known = {kind.name: kind for kind in kinds}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(known)}")
    return [known[name] for name in wanted]


async def serve_until_signalled(settings: Settings, kinds: Sequence[ModelKind]) -> None:
    """Run one worker until SIGTERM or SIGINT, then stop gracefully (the ``worker`` command)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(settings, kinds, Metrics())
    await worker.start()  # leaves nothing registered if it fails
    # What start-up made (modules, models) lives as long as the process: out of the
    # collector's way, as on the API node.
    settle_heap()
    try:
        await stop.wait()
    finally:
        await worker.close()
