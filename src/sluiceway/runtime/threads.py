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
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Call = Callable[[Sequence[Any]], list[Any]]


class ModelThreads:
    """``count`` threads named after ``model``; ``run`` makes one call on one of them."""

    def __init__(self, model: str, count: int) -> None:
        self.model = model
        self.count = count
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, call: Call, payloads: Sequence[Any]) -> tuple[list[Any], float, float]:
        """``call(payloads)`` on one of the threads, the seconds it took there (the compute
        alone: not the wait for a thread, which a call on deck has) and the CPU seconds that
        thread spent on it."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.count, thread_name_prefix=f"sluiceway-{self.model}"
            )
        context = contextvars.copy_context()  # the log lines' request id, as in to_thread
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, context.run, _timed, call, payloads)

    def close(self) -> None:
        """Let the threads end once idle; a later call starts them again."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _timed(call: Call, payloads: Sequence[Any]) -> tuple[list[Any], float, float]:
    """``call(payloads)``, the seconds it took and this thread's CPU seconds over it, measured
    on the thread that ran it."""
    started = time.perf_counter()
    cpu = time.thread_time()
    results = call(payloads)
    return results, time.perf_counter() - started, time.thread_time() - cpu
