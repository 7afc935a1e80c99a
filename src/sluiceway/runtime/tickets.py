"""A queued job's ticket: its result's future, its arrival, its state in the queue."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from sluiceway.runtime.jobs import Job

if TYPE_CHECKING:  # a ticket names its key's batcher; the batcher module imports this one
    from sluiceway.runtime.batcher import Batcher

QUEUED, TAKEN, GONE = 0, 1, 2
"""A ticket's states: waiting in its key's queue, taken into a call, withdrawn or expired."""


class Ticket:
    """A queued job: its result's future, its arrival and whether it is still waiting."""

    __slots__ = ("arrived", "batcher", "future", "job", "state", "tenant")

    def __init__(
        self,
        job: Job,
        future: asyncio.Future[Any],
        batcher: Batcher | None,
        tenant: str | None,
    ) -> None:
        self.job = job
        self.future = future
        self.batcher = batcher
        """Its key's batcher; ``None`` for a job run on the spot, never queued."""
        self.tenant = tenant
        self.arrived = time.monotonic()
        self.state = QUEUED
