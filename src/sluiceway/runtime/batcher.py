"""Dynamic batching: one queue per (model, key), sharing the model's compute slots.

A ``Lane`` is everything the runtime runs for one model: its compute slots, its queue bound,
its call cost (``models/costs.py``) and one ``Batcher`` per batching key. A batcher is
work-conserving: as soon as a slot is free it takes the jobs waiting for its key into model
calls, so batches grow exactly when the slots are busy and a lone request never waits for
company, unless a fill delay is configured.

How a key's waiting jobs become calls (``split``). Holding one slot, a batcher may also take
free slots nobody waits for, at most its share of them (free slots × its waiting jobs / the
lane's waiting jobs, so one restaurant of a burst does not take every slot). With c slots the
soonest its n jobs can finish is ``cost(⌈n/c⌉)``; it makes the fewest calls that finish within
10% of that. With the kiosk's cost (0.15 + 0.05·n s) and plenty of free slots a burst of 50
becomes 50 calls of one (0.2 s each instead of one call of 2.6 s); with no free slot it stays
one large batch (the throughput regime); a nearly flat cost (a GPU) keeps one batch; a
proportional cost (a CPU) spreads over every free slot. A model with a fill delay is never
split: the delay says its calls should be full.

With every slot busy, a key may still hold far more than a slot's share of the lane's jobs
(queued and running over slots): a restaurant whose kiosks were all answered by one call come
back together. One call of them all would run long on one slot while the others run small,
costly calls, answer them together again and keep the convoy going. So a key counts on as
many slots as it has shares, the one it holds and the next to free (running calls' predicted
ends, from the cost), and the call now takes only what ``plan_take`` leaves it so that all its
jobs end soonest; the rest claim the next slots. A flat cost, or slots freeing too late, keep
one large batch.

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

A caller that stops waiting (deadline, client disconnect) withdraws its job: it is removed
before batch formation and counted; a call already started runs on. An optional per-tenant
quota refuses a tenant's jobs beyond ``tenant_quota`` admitted and not yet answered, queued or
in a call (``QuotaExceeded``, a 429), before the shared queue fills. Counting the jobs in calls
too is what bounds a flooding tenant's share of the slots: counting only the queued ones let it
refill its queue while its last batch ran and hold several slots at once, where a tenant of
that many clients holds one (``bench/burst/flood``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sluiceway.errors import DeadlineExceeded, Overloaded, QuotaExceeded
from sluiceway.models.base import BatchPolicy, Model
from sluiceway.models.costs import NO_GAIN, CallCost, LearnedCost, per_item_ratio
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.slots import Claim, ComputeSlots

logger = logging.getLogger(__name__)

Resolver = Callable[[Job], Awaitable[Model]]

# A split's calls may finish this much later than the soonest the free slots allow: the
# few calls it saves leave slots for the next arrivals.
_SPLIT_TOLERANCE = 0.1
_NOTHING: Claim = (-math.inf, 0.0, 0.0)

_QUEUED, _TAKEN, _GONE = 0, 1, 2


def plan_calls(cost: CallCost, n: int, slots: int) -> int:
    """How many calls ``n`` jobs should become with ``slots`` slots: the fewest that finish
    within ``_SPLIT_TOLERANCE`` of the soonest possible, ``cost(⌈n / slots⌉)``."""
    if n <= 1 or slots <= 1:
        return 1
    smallest = -(-n // slots)
    if cost.per_item_s <= 0:
        return 1  # a flat cost: splitting finishes no sooner
    target = cost.seconds(smallest) * (1 + _SPLIT_TOLERANCE)
    size = max(smallest, int((target - cost.per_call_s) / cost.per_item_s))
    return min(slots, -(-n // min(size, n)))


def plan_take(cost: CallCost, n: int, calls: int, later: list[float]) -> int:
    """How many of ``n`` jobs the ``calls`` calls starting now should take, when the rest may
    wait for slots that free ``later`` (seconds from now, ascending): so that all ``n`` finish
    soonest (each slot's calls ending together, ``a + b·size`` after it frees), using the
    fewest later slots within ``_SPLIT_TOLERANCE`` of that. A flat cost takes all now."""
    a, b = cost.per_call_s, cost.per_item_s
    if b <= 0 or not later or n <= calls:
        return n
    ends = [a + n * b / calls]  # ends[k]: when all n finish using the first k later slots
    waited = 0.0
    for k, start in enumerate(later, 1):
        waited += start
        end = a + (n * b + waited) / (calls + k)
        if end - a - start < b:  # that slot would get less than one job
            break
        ends.append(end)
    soonest = min(ends)
    used = next(k for k, end in enumerate(ends) if end <= soonest * (1 + _SPLIT_TOLERANCE))
    end = ends[used]
    left = sum(max(1, int((end - a - start) / b + 1e-9)) for start in later[:used])
    return max(calls, n - left)


class Ticket:
    """A queued job: its result's future, its arrival and whether it is still waiting."""

    __slots__ = ("arrived", "batcher", "future", "job", "state", "tenant")

    def __init__(
        self, job: Job, future: asyncio.Future[Any], batcher: Batcher, tenant: str | None
    ) -> None:
        self.job = job
        self.future = future
        self.batcher = batcher
        self.tenant = tenant
        self.arrived = time.monotonic()
        self.state = _QUEUED


class Lane:
    """One model's compute slots, queue bound, call cost and batchers (one per batching key)."""

    def __init__(
        self,
        model: str,
        policy: BatchPolicy,
        resolve: Resolver,
        metrics: Metrics,
        cost: CallCost | None = None,
        inline_below_s: float = 0.0,
        loaded: Callable[[Job], Model | None] | None = None,
    ):
        self.model = model
        self.policy = policy
        self.cost: CallCost = cost if cost is not None else LearnedCost()
        self.inline_below_s = inline_below_s
        """A call whose expected cost is below this runs on the event loop's thread, when the
        model can (``Model.runs_inline``): a hop to a worker thread and back costs more."""
        self.loaded = loaded
        """A job's model if it is loaded now, without waiting (``Batcher.run_now``)."""
        self._unbatched = False  # the cost said batching gains nothing (``batch_limit``)
        self.slots = ComputeSlots(policy.slots)
        self._resolve = resolve
        self._batchers: dict[str, Batcher] = {}
        self._tenants: dict[str, int] = {}
        self._ends: dict[int, float] = {}  # a running call's predicted end, by its batch's id
        self._running = 0  # jobs in running calls
        self._tasks: set[asyncio.Task[None]] = set()
        self._depth = 0
        self._depth_gauge = metrics.queue_depth.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self._batch_seconds = metrics.batch_seconds.labels(model)
        self._queue_seconds = metrics.queue_seconds.labels(model)
        self._rejected = metrics.rejected.labels(model)
        self._quota_rejected = metrics.quota_rejected.labels(model)
        self._splits = metrics.splits.labels(model)
        self._deferred = metrics.deferred.labels(model)
        self._cancelled = metrics.cancelled.labels(model)
        self.expired = metrics.expired.labels(model)

    def batch_limit(self) -> int:
        """The most jobs one call takes now: the policy's max batch, or 1 while the learned
        cost says batching gains (almost) nothing (``costs.NO_GAIN``). Calls of one use the
        free slots at once instead of stacking jobs on one, so latency is that of batching
        off. Once the window of observed calls holds a single size again the cost is not
        known again, and the gain is measured afresh by a call of two (a probe, so that a
        full batch does not hold its jobs back every window of calls)."""
        max_batch = self.policy.max_batch
        if max_batch > 1:
            ratio = per_item_ratio(self.cost, max_batch)
            if ratio is None:
                return 2 if self._unbatched else max_batch
            self._unbatched = ratio >= NO_GAIN
            if self._unbatched:
                return 1
        return max_batch

    def take_now(self, waiting: int, calls: int) -> int:
        """How many of a key's ``waiting`` jobs its ``calls`` calls starting now should take.

        When every slot is busy, the lane's jobs (queued and running) finish soonest if each
        call carries about its share of them, ``jobs / slots``: a call of far more holds its
        jobs on one slot for a long time while the other slots run small, costly calls. So a
        key with more than ``calls`` shares waiting counts on that many slots, the held ones
        and the next to free (running calls' predicted ends, from the cost), and leaves for the
        later ones what ``plan_take`` says finishes all of its jobs soonest. With scarce slots
        (few, or as many jobs per slot as the key has) it keeps one large batch."""
        shares = self.policy.slots * waiting // (self._depth + self._running)
        if shares <= calls or not self._ends:
            return waiting
        now = time.monotonic()
        later = [
            max(end - now, 0.0) for end in heapq.nsmallest(shares - calls, self._ends.values())
        ]
        take = plan_take(self.cost, waiting, calls, later)
        if take < waiting:
            self._deferred.inc()
        return take

    def waiting(self) -> list[Job]:
        """The queued jobs, key by key, each key's in the order its calls take them."""
        return [
            ticket.job
            for batcher in self._batchers.values()
            for ticket in batcher._queue
            if ticket.state == _QUEUED
        ]

    @property
    def depth(self) -> int:
        """Jobs accepted and not yet taken into a model call (nor withdrawn)."""
        return self._depth

    def submit(self, job: Job) -> Ticket:
        """Queue a job and return its ticket; raise ``Overloaded`` when full, ``QuotaExceeded``
        when the job's tenant has its quota of jobs not yet answered."""
        policy = self.policy
        if self._depth >= policy.max_queue:
            self._rejected.inc()
            raise Overloaded(f"{self.model} queue is full ({policy.max_queue} jobs)")
        tenant = None
        if policy.tenant_quota:
            tenant = job.tenant if job.tenant is not None else job.key
            held = self._tenants.get(tenant, 0)
            if held >= policy.tenant_quota:
                self._quota_rejected.inc()
                raise QuotaExceeded(
                    f"{held} {self.model} jobs of this tenant are not answered yet "
                    f"(quota {policy.tenant_quota}); retry later"
                )
            self._tenants[tenant] = held + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batcher = self._batchers.get(job.key)
        if batcher is None:
            batcher = self._batchers[job.key] = Batcher(self, job.key)
        ticket = Ticket(job, future, batcher, tenant)
        self._set_depth(self._depth + 1)
        batcher.put(ticket)
        return ticket

    def withdraw(self, ticket: Ticket, *, expired: bool = False) -> None:
        """Its caller stopped waiting: a queued job is removed unrun and counted (as expired
        or cancelled); one already in a model call runs on."""
        if ticket.state != _QUEUED:
            return
        self._leave(ticket, expired)
        if not ticket.future.done():
            ticket.future.cancel()

    def expire(self, ticket: Ticket) -> None:
        """Its deadline passed: a queued job is removed unrun and counted as expired; its
        caller gets ``DeadlineExceeded`` either way (a call already started runs on)."""
        if ticket.state == _QUEUED:
            self._leave(ticket, True)
        if not ticket.future.done():
            ticket.future.set_exception(
                DeadlineExceeded(f"{self.model} did not answer before the deadline")
            )

    def _leave(self, ticket: Ticket, expired: bool | None = None) -> None:
        """A ticket stops being queued: taken into a call (``expired=None``) or dropped."""
        ticket.state = _TAKEN if expired is None else _GONE
        ticket.batcher._live -= 1
        self._set_depth(self._depth - 1)
        if expired is not None:  # a job taken into a call counts for its tenant until answered
            self._answered(ticket)
        if expired is True:
            self.expired.inc()
        elif expired is False:
            self._cancelled.inc()

    def _answered(self, ticket: Ticket) -> None:
        """The job no longer counts towards its tenant's quota."""
        tenant = ticket.tenant
        if tenant is not None:
            ticket.tenant = None  # once only, whichever way the job ends
            left = self._tenants[tenant] - 1
            if left:
                self._tenants[tenant] = left
            else:
                del self._tenants[tenant]

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
        if (
            self._live != 1
            or lane.loaded is None
            or lane.inline_below_s <= 0
            or lane.policy.max_delay_s > 0
            or lane.slots.take_free(1) == 0
        ):
            return False
        batches: list[list[Ticket]] = []
        try:
            head = self._head()
            model = lane.loaded(head.job) if head is not None else None
            if (
                model is not None
                and model.runs_inline
                and lane.cost.seconds(1) < lane.inline_below_s
            ):
                batches = self._take(1)
        except BaseException:
            lane.slots.release()
            raise
        if not batches and self._live:  # not a call to make here: the driver takes the job
            lane.slots.release()
            return False
        if batches and model is not None:
            self._run_inline(model, batches[0])  # gives the slot back
        else:
            lane.slots.release()
        if self._live == 0:
            self._queue.clear()
            lane._retire(self)
        return True

    def _head(self) -> Ticket | None:
        """The first job still waiting; drops the withdrawn and abandoned ones before it."""
        queue = self._queue
        while queue:
            ticket = queue[0]
            if ticket.state == _QUEUED:
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
                await lane.slots.acquire(self._claim)
                if lane.policy.max_delay_s > 0:
                    await self._fill()
                calls, jobs = self._calls()
                batches = self._take(calls, jobs)
                for batch in batches:
                    if model.runs_inline and lane.cost.seconds(len(batch)) < lane.inline_below_s:
                        self._run_inline(model, batch)
                    else:
                        lane._spawn(self._run(model, batch), f"batch {lane.model}")
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
            if ticket.state != _QUEUED:
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
            if ticket.state != _QUEUED:
                continue
            lane._leave(ticket, None)
            lane._answered(ticket)
            if not ticket.future.done():
                ticket.future.set_exception(error)

    async def _run(self, model: Model, batch: list[Ticket]) -> None:
        """One model call; a blocking model's call goes to a worker thread, timed there, so its
        cost is the compute alone and not the hop (which decides ``_run_inline``)."""
        lane = self.lane
        payloads = [ticket.job.payload for ticket in batch]
        started = time.perf_counter()
        results: list[Any] | Exception
        took: float | None = None
        call = id(batch)
        lane._ends[call] = time.monotonic() + lane.cost.seconds(len(batch))
        lane._running += len(batch)
        try:
            if model.runs_inline:
                results, took = await asyncio.to_thread(_timed, model.infer_inline, payloads)
            else:
                results = await model.infer(payloads)
        except Exception as error:
            results = error
        finally:
            del lane._ends[call]
            lane._running -= len(batch)
            lane.slots.release()
        self._finish(batch, results, time.perf_counter() - started if took is None else took)

    def _run_inline(self, model: Model, batch: list[Ticket]) -> None:
        """``_run`` on the event loop's thread, for a call expected to be shorter than a hop to
        a worker thread and back (``Lane.inline_below_s``)."""
        started = time.perf_counter()
        results: list[Any] | Exception
        try:
            results = model.infer_inline([ticket.job.payload for ticket in batch])
        except Exception as error:
            results = error
        finally:
            self.lane.slots.release()
        self._finish(batch, results, time.perf_counter() - started)

    def _finish(self, batch: list[Ticket], results: list[Any] | Exception, took: float) -> None:
        """Count a finished call (``took`` seconds) and hand each job its result."""
        lane = self.lane
        if not isinstance(results, Exception) and len(results) != len(batch):
            results = RuntimeError(f"{lane.model} gave {len(results)} results for {len(batch)}")
        if isinstance(results, Exception):
            error = results
            logger.error("%s failed on a batch of %d", lane.model, len(batch), exc_info=error)
            results = [error] * len(batch)
        lane._batch_seconds.observe(took)
        lane._batch_size.observe(len(batch))
        lane.cost.observe(len(batch), took)
        for ticket, result in zip(batch, results, strict=True):
            lane._answered(ticket)
            if ticket.future.done():
                continue
            if isinstance(result, BaseException):
                ticket.future.set_exception(result)
            else:
                ticket.future.set_result(result)


def _timed(call: Callable[[list[Any]], list[Any]], payloads: list[Any]) -> tuple[list[Any], float]:
    """``call(payloads)`` and the seconds it took, measured on the thread that ran it."""
    started = time.perf_counter()
    results = call(payloads)
    return results, time.perf_counter() - started
