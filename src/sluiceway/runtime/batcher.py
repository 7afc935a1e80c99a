"""Dynamic batching: one queue per (model, key), sharing the model's compute slots.

A ``Lane`` is everything the runtime runs for one model: its compute slots, its queue bound
and one ``Batcher`` per batching key. A batcher is work-conserving: as soon as a slot is free it
takes every job waiting for its key (up to the batch limit) into one model call, so batches grow
exactly when the slots are busy and a lone request never waits for company, unless a fill delay
is configured. When keys compete for slots, the one with the most jobs waiting goes first
(``slots.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sluiceway.models.base import BatchPolicy, Model
from sluiceway.runtime.errors import DeadlineExceeded, Overloaded
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.slots import ComputeSlots

logger = logging.getLogger(__name__)

Resolver = Callable[[Job], Awaitable[Model]]


class _Pending:
    __slots__ = ("arrived", "future", "job")

    def __init__(self, job: Job, future: asyncio.Future[Any]) -> None:
        self.job = job
        self.future = future
        self.arrived = time.monotonic()


class Lane:
    """One model's compute slots, queue bound and batchers (one per batching key)."""

    def __init__(self, model: str, policy: BatchPolicy, resolve: Resolver, metrics: Metrics):
        self.model = model
        self.policy = policy
        self.slots = ComputeSlots(policy.slots)
        self._resolve = resolve
        self._batchers: dict[str, Batcher] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._depth = 0
        self._depth_gauge = metrics.queue_depth.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self._batch_seconds = metrics.batch_seconds.labels(model)
        self._rejected = metrics.rejected.labels(model)
        self.expired = metrics.expired.labels(model)

    @property
    def depth(self) -> int:
        """Jobs accepted and not yet taken into a model call."""
        return self._depth

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job and return the future of its result; raise ``Overloaded`` when full."""
        if self._depth >= self.policy.max_queue:
            self._rejected.inc()
            raise Overloaded(f"{self.model} queue is full ({self.policy.max_queue} jobs)")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batcher = self._batchers.get(job.key)
        if batcher is None:
            batcher = self._batchers[job.key] = Batcher(self, job.key)
        batcher.put(_Pending(job, future))
        self._set_depth(self._depth + 1)
        return future

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._depth_gauge.set(depth)

    def _retire(self, batcher: Batcher) -> None:
        if self._batchers.get(batcher.key) is batcher:
            del self._batchers[batcher.key]

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every accepted job has been answered (for a graceful stop)."""
        while True:
            drivers = [b._driver for b in self._batchers.values() if b._driver is not None]
            running = [*self._tasks, *drivers]
            if not running:
                return
            await asyncio.wait(running)


class Batcher:
    """The queue of one batching key and the task that drives it."""

    def __init__(self, lane: Lane, key: str) -> None:
        self.lane = lane
        self.key = key
        self._queue: deque[_Pending] = deque()
        self._driver: asyncio.Task[None] | None = None
        self._filled = asyncio.Event()

    def _waiting_jobs(self) -> float:
        """This key's claim on a free slot: the batch it would run now."""
        return min(len(self._queue), self.lane.policy.max_batch)

    def put(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if len(self._queue) >= self.lane.policy.max_batch:
            self._filled.set()
        if self._driver is None:
            self._driver = asyncio.create_task(self._drive(), name=f"batcher {self.key}")

    async def _drive(self) -> None:
        lane = self.lane
        try:
            while self._queue:
                try:
                    model = await lane._resolve(self._queue[0].job)
                except Exception as error:  # the load failed: every waiting job learns why
                    self._fail_all(error)
                    break
                await lane.slots.acquire(self._waiting_jobs)
                if lane.policy.max_delay_s > 0:
                    await self._fill()
                batch = self._take()
                if batch:
                    lane._spawn(self._run(model, batch), f"batch {lane.model}")
                else:
                    lane.slots.release()
        except Exception as error:  # a bug here must not leave callers waiting forever
            logger.exception("batcher for %s crashed", lane.model)
            self._fail_all(error)
        finally:
            self._driver = None
            if not self._queue:
                lane._retire(self)

    async def _fill(self) -> None:
        """Wait up to the fill delay, counted from the oldest job's arrival, for a full batch."""
        if not self._queue or len(self._queue) >= self.lane.policy.max_batch:
            return
        wait = self._queue[0].arrived + self.lane.policy.max_delay_s - time.monotonic()
        if wait <= 0:
            return
        self._filled.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._filled.wait(), wait)

    def _take(self) -> list[_Pending]:
        """Pop up to one batch of live jobs; answer expired ones and skip abandoned ones."""
        lane = self.lane
        batch: list[_Pending] = []
        now = time.time()
        popped = 0
        while self._queue and len(batch) < lane.policy.max_batch:
            pending = self._queue.popleft()
            popped += 1
            expired = pending.job.deadline <= now
            if pending.future.done():  # the caller gave up (deadline or disconnect)
                if expired:
                    lane.expired.inc()
                continue
            if expired:
                lane.expired.inc()
                pending.future.set_exception(
                    DeadlineExceeded(f"deadline passed before {lane.model} could run it")
                )
                continue
            batch.append(pending)
        lane._set_depth(lane.depth - popped)
        return batch

    def _fail_all(self, error: Exception) -> None:
        lane = self.lane
        lane._set_depth(lane.depth - len(self._queue))
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(error)

    async def _run(self, model: Model, batch: list[_Pending]) -> None:
        lane = self.lane
        started = time.perf_counter()
        results: list[Any]
        try:
            results = await model.infer([pending.job.payload for pending in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{lane.model} gave {len(results)} results for {len(batch)}")
        except Exception as error:
            logger.exception("%s failed on a batch of %d", lane.model, len(batch))
            results = [error] * len(batch)
        finally:
            lane.slots.release()
        lane._batch_seconds.observe(time.perf_counter() - started)
        lane._batch_size.observe(len(batch))
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
