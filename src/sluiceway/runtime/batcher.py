"""Dynamic batching: one queue per (model, key), sharing its model's compute slots.

A ``Batcher`` is one batching key's queue and the task that drives it into model calls, on
its model's ``Lane`` (``lane.py``: slots, queue bound, cost). A batcher is work-conserving: as
soon as a slot is free it takes the jobs waiting for its key into model calls, so batches grow
exactly when the slots are busy and a lone request never waits for company, unless a fill
delay is configured. How many calls its waiting jobs become, over free slots and over the next
slots to free, is ``planning.py``'s.

Who gets a freed slot (the claim, compared in this order):
1. **priority**: the highest ``Job.priority`` at the head of a key's queue. Priority is strict
   across levels: fairness never lets a lower level pass a higher one (deadlines still bound
   every job: an expired one is answered 504 unrun). Within a key, jobs are queued by
   priority, then arrival, so a batch takes the most urgent first.
2. **fairness**: a key whose head job has waited ``fair_wait_calls`` × the cost of its own
   next call is overdue; overdue keys go before the others, the longest-waiting first. So no
   key waits much more than that (plus the time for a slot to free) behind larger ones.
3. **batch size**: otherwise the key with the most jobs waiting (up to a batch) goes first:
   the most requests served per slot-second. Among equals the earliest asker wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from sluiceway.errors import DeadlineExceeded
from sluiceway.models.base import Model
from sluiceway.runtime.planning import plan_calls
from sluiceway.runtime.slots import Claim
from sluiceway.runtime.threads import COMPUTING
from sluiceway.runtime.tickets import QUEUED, Ticket

if TYPE_CHECKING:  # a batcher serves its lane; the lane module imports this one
    from sluiceway.runtime.lane import Lane

logger = logging.getLogger(__name__)

_NOTHING: Claim = (-math.inf, 0.0, 0.0)


class Batcher:
    """The queue of one batching key and the task that drives it."""

    def __init__(self, lane: Lane, key: str) -> None:
        self.lane = lane
        self.key = key
        self._queue: deque[Ticket] = deque()  # by priority (highest first), then arrival
        self._live = 0  # tickets in the queue still waiting
        self._driver: asyncio.Task[None] | None = None
        self._filled = asyncio.Event()

    def put(self, ticket: Ticket) -> None:
        queue = self._queue
        priority = ticket.job.priority
        if queue and queue[-1].job.priority < priority:
            at = len(queue) - 1
            while at > 0 and queue[at - 1].job.priority < priority:
                at -= 1
            queue.insert(at, ticket)
        else:
            queue.append(ticket)
        self._live += 1
        if self._live >= self.lane.policy.max_batch:
            self._filled.set()
        if self._driver is None and not self.run_now():
            self._driver = asyncio.create_task(self._drive(), name=f"batcher {self.key}")

    def run_now(self) -> bool:
        """Run a lone job on the spot, inline, when the driver would do nothing else: its model
        is loaded, runs inline and costs less than ``Lane.inline_below_s``, a slot is free and
        nobody waits for one, and no fill delay applies. The driver's task, its model lookup
        and its slot wait cost a tiny model's request more than the call itself; the job is
        taken, counted and answered exactly as the driver would (a batch of one: nothing else
        was waiting for its key)."""
        lane = self.lane
        if self._live != 1:
            return False
        head = self._head()
        if head is not None:
            # The same test as for a job arriving with nothing queued; a yes takes the slot.
            model = lane._spot_model(head.job)
            if model is None:
                return False
            try:
                batches = self._take(1)
            except BaseException:
                lane.slots.release()
                raise
            if batches:
                self._run_inline(model, batches[0])  # gives the slot back
            else:  # expired or withdrawn: answered by ``_take``
                lane.slots.release()
        if self._live:  # not a call to make here: the driver takes the job
            return False
        self._queue.clear()
        lane._retire(self)
        return True

    def _head(self) -> Ticket | None:
        """The first job still waiting; drops the withdrawn and abandoned ones before it."""
        queue = self._queue
        while queue:
            ticket = queue[0]
            if ticket.state == QUEUED:
                if not ticket.future.done():
                    return ticket
                # Abandoned without a withdraw (a split-mode worker cancels the future).
                self.lane._leave(ticket, ticket.job.deadline <= time.time())
            queue.popleft()
        return None

    def _claim(self) -> Claim:
        """This key's claim on a freed slot: (priority, overdue, age or batch); see above."""
        head = self._head()
        if head is None:
            return _NOTHING
        lane = self.lane
        batch = min(self._live, lane.policy.max_batch)
        age = time.monotonic() - head.arrived
        fair = lane.policy.fair_wait_calls
        if fair > 0 and age >= fair * lane.cost.seconds(batch):
            return (head.job.priority, 1.0, age)
        return (head.job.priority, 0.0, batch)

    async def _drive(self) -> None:
        lane = self.lane
        try:
            while (head := self._head()) is not None:
                try:
                    model = await lane._resolve(head.job)
                except Exception as error:  # the load failed: every waiting job learns why
                    self._fail_all(error)
                    break
                lane.threaded = model.runs_inline
                await lane.slots.acquire(self._claim)
                if lane.policy.max_delay_s > 0:
                    await self._fill()
                calls, jobs = self._calls()
                batches = self._take(calls, jobs)
                for batch in batches:
                    if model.runs_inline and lane.cost.seconds(len(batch)) < lane.inline_below_s:
                        self._run_inline(model, batch)
                    else:
                        wide = lane.may_go_wide(model, len(batch), len(batches))
                        lane._spawn(self._run(model, batch, wide), f"batch {lane.model}")
                for _ in range(calls - len(batches)):
                    lane.slots.release()
        except Exception as error:  # a bug here must not leave callers waiting forever
            logger.exception("batcher for %s crashed", lane.model)
            self._fail_all(error)
        finally:
            self._driver = None
            if self._live == 0:
                self._queue.clear()
                lane._retire(self)

    def _calls(self) -> tuple[int, int]:
        """How many calls to make now (1 for the slot held, plus free slots a split takes) and
        how many jobs they take (the rest wait for the next slots to free, ``Lane.take_now``)."""
        lane = self.lane
        waiting = self._live
        limit = lane.batch_limit()
        if not lane.policy.split or lane.policy.max_delay_s > 0 or waiting <= 1:
            return 1, limit
        calls = 1
        free = lane.slots.free
        if free:
            share = free * waiting // max(lane.depth, waiting)
            wanted = plan_calls(lane.cost, waiting, 1 + share) - 1
            extra = lane.slots.take_free(wanted)
            if extra:
                lane._splits.inc(extra)
            calls += extra
        return calls, min(calls * limit, lane.take_now(waiting, calls))

    async def _fill(self) -> None:
        """Wait up to the fill delay, counted from the oldest job's arrival, for a full batch."""
        head = self._head()
        if head is None or self._live >= self.lane.policy.max_batch:
            return
        wait = head.arrived + self.lane.policy.max_delay_s - time.monotonic()
        if wait <= 0:
            return
        self._filled.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._filled.wait(), wait)

    def _take(self, calls: int, limit: int | None = None) -> list[list[Ticket]]:
        """Pop up to ``calls`` batches of live jobs (``limit`` in all, by default full ones),
        as even as can be, most urgent first; answer expired ones 504 and drop withdrawn ones."""
        lane = self.lane
        if limit is None:
            limit = calls * lane.batch_limit()
        taken: list[Ticket] = []
        now = time.time()
        started = time.monotonic()
        observe = lane._queue_seconds.observe
        queue = self._queue
        while queue and len(taken) < limit:
            ticket = queue.popleft()
            if ticket.state != QUEUED:
                continue
            expired = ticket.job.deadline <= now
            if ticket.future.done():  # abandoned without a withdraw
                lane._leave(ticket, expired)
                continue
            if expired:
                lane._leave(ticket, True)
                ticket.future.set_exception(
                    DeadlineExceeded(f"deadline passed before {lane.model} could run it")
                )
                continue
            lane._leave(ticket)
            observe(started - ticket.arrived)
            taken.append(ticket)
        if not taken:
            return []
        count = min(calls, len(taken))
        size, larger = divmod(len(taken), count)
        batches = []
        start = 0
        for index in range(count):
            stop = start + size + (1 if index < larger else 0)
            batches.append(taken[start:stop])
            start = stop
        return batches

    def _fail_all(self, error: Exception) -> None:
        lane = self.lane
        while self._queue:
            ticket = self._queue.popleft()
            if ticket.state != QUEUED:
                continue
            lane._leave(ticket, None)
            lane._answered(ticket)
            if not ticket.future.done():
                ticket.future.set_exception(error)

    async def _run(self, model: Model, batch: list[Ticket], wide: bool = False) -> None:
        """One model call; a blocking model's call goes to a worker thread, timed there, so its
        cost is the compute alone and not the hop (which decides ``_run_inline``), and runs on
        every core there if ``wide`` and no other call computes (``Lane.may_go_wide``)."""
        lane = self.lane
        payloads = [ticket.job.payload for ticket in batch]
        started = time.perf_counter()
        results: list[Any] | Exception
        took: float | None = None
        cpu: float | None = None
        call = id(batch)
        lane._ends[call] = time.monotonic() + lane.cost.seconds(len(batch))
        lane._running += len(batch)
        try:
            if model.runs_inline:
                wide_call = model.infer_wide if wide else None
                timed = await lane.threads.run(model.infer_inline, payloads, wide_call)
                results, took = timed.results, timed.seconds
                if timed.wide:
                    lane.wide_calls.inc()
                elif model.computes_on_caller:
                    cpu = timed.cpu
            else:
                alone = COMPUTING.enter()  # its own threads compute: no call goes wide meanwhile
                try:
                    results = await model.infer(payloads)
                finally:
                    COMPUTING.leave(alone)
        except Exception as error:
            results = error
        finally:
            del lane._ends[call]
            lane._running -= len(batch)
            lane.slots.release()
        took = time.perf_counter() - started if took is None else took
        self.lane.finish(batch, results, took, cpu)

    def _run_inline(self, model: Model, batch: list[Ticket]) -> None:
        """``_run`` on the event loop's thread, for a call expected to be shorter than a hop to
        a worker thread and back (``Lane.run_inline``)."""
        self.lane.run_inline(model, batch)
