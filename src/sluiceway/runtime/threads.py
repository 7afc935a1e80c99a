"""A model's own threads: where its lane runs the calls that block (ONNX Runtime, LiteRT).

One thread per compute slot, started on the first call and stopped when the lane drains. The
event loop hands each call over with ``run`` and awaits it; the thread times the call itself,
so the cost the scheduler learns is the compute alone, not the hop.

Why a lane's own threads and not the loop's default executor: with the deck open
(``slots.py``; ``Lane.batch_limit`` says when), calls wait here at the threads, and a thread
that ends a call starts the next at once, instead of waiting for the event loop to hear of the
end and hand it another. As many threads as slots keep the calls on deck waiting instead of
running beside the others (600 KB protocol requests at 4-8 clients: +1-10 % throughput,
``bench/oip``). A call waiting on deck was formed when a slot of the deck came free; with
calls of one job it is the call the loop would have formed a moment later, but a more urgent
job arriving meanwhile waits for it (one call per thread at most), and a job already on deck
runs even if its caller leaves, as in a started call.

A call made while no other model call computes in the process may run on every core
(``Model.runs_wide``): ``Computing`` counts the calls computing, every model's, and the thread
asks it as the call starts, so the choice is made with the freshest count there is.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

Call = Callable[[Sequence[Any]], list[Any]]


class Timed(NamedTuple):
    """A call made on a model's thread, as that thread measured it."""

    results: list[Any]
    seconds: float
    cpu: float | None
    """The thread's CPU seconds over the call; ``None`` for a wide call: others computed too."""
    wide: bool


class ModelThreads:
    """``count`` threads named after ``model``; ``run`` makes one call on one of them."""

    def __init__(self, model: str, count: int) -> None:
        self.model = model
        self.count = count
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, call: Call, payloads: Sequence[Any], wide: Call | None = None) -> Timed:
        """``call(payloads)`` on one of the threads, the seconds it took there (the compute
        alone: not the wait for a thread, which a call on deck has) and the CPU seconds that
        thread spent on it; ``wide(payloads)`` instead if given and no other model call
        computes as this one starts."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.count, thread_name_prefix=f"sluiceway-{self.model}"
            )
        context = contextvars.copy_context()  # the log lines' request id, as in to_thread
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, context.run, _timed, call, wide, payloads)

    def close(self) -> None:
        """Let the threads end once idle; a later call starts them again."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class Computing:
    """How many model calls are computing in this process now, every model's, and whether a
    call that starts alone tends to stay alone: only then does a call run on every core
    (``Model.runs_wide``).

    A wide call that another call joins shares the cores three ways or more, and its spinning
    threads take turns away from the newcomer: with two closed-loop clients, making every call
    that started alone wide took MobileNetV2 from 106 to 92 requests/s (``bench/oip``'s model,
    one 8 s round each, 2026-12-01), since the other client's request arrives during nearly
    every call. So the count also learns, over the last ten or so calls that started alone
    (wide or not), the share that no other call joined before they ended, and calls go wide
    only while most did.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # entered from the model threads and the event loop
        self.count = 0
        self._starts = 0
        self.stayed_alone = 1.0
        """The share of recent calls that started alone and ended before another started."""

    def enter(self) -> int | None:
        """A call starts computing; a mark for ``leave`` if it is the only one, else ``None``."""
        with self._lock:
            self.count += 1
            self._starts += 1
            return self._starts if self.count == 1 else None

    def leave(self, alone: int | None) -> None:
        """A call ends; ``alone`` is what its ``enter`` gave."""
        with self._lock:
            self.count -= 1
            if alone is not None:
                stayed = 1.0 if self._starts == alone else 0.0
                self.stayed_alone += (stayed - self.stayed_alone) * _ALONE_WEIGHT

    @property
    def allows_wide(self) -> bool:
        """Whether a call starting alone now may go wide."""
        return self.stayed_alone >= WIDE_STAYED_ALONE


_ALONE_WEIGHT = 0.1  # about the last ten calls that started alone
WIDE_STAYED_ALONE = 0.75
"""Calls go wide while at least this share of those that start alone stay alone."""

COMPUTING = Computing()
"""The process's one count: the cores are the process's, whichever model computes."""


def _timed(call: Call, wide: Call | None, payloads: Sequence[Any]) -> Timed:
    """``call(payloads)``, or ``wide(payloads)`` when alone, measured on the thread that ran
    it."""
    alone = COMPUTING.enter()
    try:
        started = time.perf_counter()
        if wide is not None and alone is not None and COMPUTING.allows_wide:
            results = wide(payloads)
            return Timed(results, time.perf_counter() - started, None, True)
        cpu = time.thread_time()
        results = call(payloads)
        return Timed(results, time.perf_counter() - started, time.thread_time() - cpu, False)
    finally:
        COMPUTING.leave(alone)
