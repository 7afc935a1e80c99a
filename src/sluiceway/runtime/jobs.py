"""The unit of work that crosses the dispatcher seam."""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass, field
from typing import Any


class Counting(enum.IntEnum):
    """What a job adds to its model's statistics (``runtime/stats.py``).

    Triton counts requests, and a protocol request of several rows is one job per row: its
    caller counts the request once (``Statistics.count_request``), its first job gives the
    queue and compute times, and the others only their share of the model call.
    """

    REQUEST = 0
    """The job is a whole request: its outcome and its times."""
    TIMES = 1
    """The first job of a request of several: its queue and compute times, not its outcome."""
    CALL = 2
    """Another job of such a request: counted in its model call only."""
    REMOTE = 3
    """A job a split-mode worker read: the API node that sent it counts its request (and
    observes its compute time), so the worker only times its model call, to send back with
    its answer (``split/worker.py``)."""


@dataclass(slots=True)
class Job:
    """One input for one model, with the key that decides what it may be batched with.

    ``key`` groups jobs that can share a model call (a restaurant's training-set hash for the
    kiosk KNN, the tensor shapes for a tensor model, ``""`` otherwise); ``spec`` is what a tenant
    model is loaded or fitted from when it is not cached yet (the training rows), so any worker
    can build it. Jobs without a ``spec`` run on the model's one shared instance.
    ``deadline`` is wall-clock epoch seconds, so it means the same on every machine.
    ``priority`` orders jobs before batch formation (higher first; ``batcher.py`` says how it
    combines with fairness); ``tenant`` is whom an admission quota counts the job against
    (``None``: its batching key, i.e. the restaurant for the kiosks).
    """

    model: str
    payload: Any
    deadline: float
    key: str = ""
    spec: Any = None
    id: str = field(default_factory=lambda: f"{random.getrandbits(128):032x}")
    """128 random bits, as unique as a uuid4 across processes and machines (split mode routes
    answers by it). Python's generator is seeded from the OS and reseeded in a forked child;
    ``os.urandom`` per job was a system call on every request."""
    priority: int = 0
    tenant: str | None = None
    counting: Counting = Counting.REQUEST
    """What the job adds to its model's statistics; local only, never sent to a worker (a
    worker sets ``REMOTE`` on the jobs it reads)."""

    def remaining(self, now: float | None = None) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - (time.time() if now is None else now)
