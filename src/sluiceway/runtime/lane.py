"""A model's lane: its compute slots, queue bound, call cost and one batcher per key.

A ``Lane`` is everything the runtime runs for one model: its compute slots, its queue bound,
its call cost (``models/costs.py``) and one ``Batcher`` per batching key (``batcher.py``:
who gets a freed slot; ``planning.py``: how many calls a key's jobs become). It admits jobs,
counts them and answers a finished call's jobs; it also says how many of a key's jobs a call
starting now takes when every slot is busy (``take_now``).

A model whose calls block (``Model.runs_inline``: ONNX Runtime, LiteRT) runs them on the
lane's own threads (``threads.py``), one per slot. While its calls are of one job (``gate.py``
says batching gains nothing), the lane opens its slots' deck (``slots.py``): as many calls
again wait at the threads, so a thread that ends a call starts the next without the event
loop. With batching on, the deck stays closed: a call formed early would take fewer jobs.

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
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sluiceway.errors import DeadlineExceeded, Overloaded, QuotaExceeded
from sluiceway.models.base import BatchPolicy, Model
from sluiceway.models.costs import CallCost, LearnedCost
from sluiceway.runtime.batcher import Batcher
from sluiceway.runtime.gate import BatchGate
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.planning import take_now
from sluiceway.runtime.slots import ComputeSlots
from sluiceway.runtime.threads import ModelThreads
from sluiceway.runtime.tickets import GONE, QUEUED, TAKEN, Ticket

logger = logging.getLogger(__name__)

Resolver = Callable[[Job], Awaitable[Model]]

WIDE_ABOVE_S = 0.002
"""The shortest expected call that may run on every core. ONNX Runtime's threads split
each operator, at a cost per operator that a short call does not earn back; MobileNetV2's
13 ms call ran 1.7x as fast on two threads as on one (``Model.runs_wide``)."""


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
        self.gate = BatchGate(policy.max_batch, cost if cost is not None else LearnedCost())
        self.cost: CallCost = self.gate.cost
        self.inline_below_s = inline_below_s
        """A call whose expected cost is below this runs on the event loop's thread, when the
        model can (``Model.runs_inline``): a hop to a worker thread and back costs more."""
        self.loaded = loaded
        """A job's model if it is loaded now, without waiting (``Batcher.run_now``)."""
        self.slots = ComputeSlots(policy.slots, deck=policy.slots)
        self.threaded = False
        """Whether the model's calls run on the lane's threads (set by its batchers once the
        model is loaded); only then may the deck open."""
        self.threads = ModelThreads(model, policy.slots)
        self._resolve = resolve
        self._batchers: dict[str, Batcher] = {}
        self._tenants: dict[str, int] = {}
        self._ends: dict[int, float] = {}  # a running call's predicted end, by its batch's id
        self._running = 0  # jobs in running calls
        self._tasks: set[asyncio.Task[None]] = set()
        self._depth = 0
        metrics.count_queued(model, self)  # sluiceway_queue_depth reads ``depth`` when scraped
        self._batch_size = metrics.batch_size.labels(model)
        self._batch_seconds = metrics.batch_seconds.labels(model)
        self._queue_seconds = metrics.queue_seconds.labels(model)
        self._rejected = metrics.rejected.labels(model)
        self._quota_rejected = metrics.quota_rejected.labels(model)
        self._splits = metrics.splits.labels(model)
        self._deferred = metrics.deferred.labels(model)
        self.wide_calls = metrics.wide_calls.labels(model)
        self._cancelled = metrics.cancelled.labels(model)
        self.expired = metrics.expired.labels(model)

    def batch_limit(self) -> int:
        """The most jobs one call takes now (``gate.py``); calls of one open a threaded deck."""
        limit = self.gate.limit()
        self.slots.open_deck(self.threaded and (limit == 1 or self.gate.unbatched))
        return limit

    def may_go_wide(self, model: Model, n: int, calls: int) -> bool:
        """Whether a call of ``n`` jobs, formed now with ``calls - 1`` others, may run on
        every core if it turns out to be the only call computing (``threads.py``): the model
        offers it, the call is long enough for per-operator threads to pay
        (``WIDE_ABOVE_S``), and it is the lane's only call, with no job left waiting for
        another slot (that call would share the cores with it).

        A lane of several slots makes only calls of one job wide: jobs that came together run
        more per second as calls side by side, one core each, than as one call on every core
        (MobileNetV2 in a tight loop on 2 cores: 362 against 290 images/s, ``bench/oip``'s
        ceiling), and the lane's planner splits them over the slots when that finishes them
        sooner. In ``bench/oip`` at two clients, a batch of both requests went wide whenever
        they arrived together, and the server answered 18 % fewer requests than with every
        call on one core. A lane of one slot (a repository's default) has no second slot to
        split onto: any call of it may go wide, and jobs may wait meanwhile; so may a call
        formed on deck while the last one runs, since its one thread starts it only once that
        call has ended.
        """
        if not model.runs_wide or calls > 1 or self.cost.seconds(n) < WIDE_ABOVE_S:
            return False
        return self.policy.slots == 1 or (n == 1 and not self._ends and self._depth == 0)

    def take_now(self, waiting: int, calls: int) -> int:
        """How many of a key's ``waiting`` jobs its ``calls`` calls starting now should take:
        its share of the lane's jobs when every slot is busy (``planning.take_now``); a call
        that leaves jobs for the next slots to free is counted as deferred."""
        take = take_now(
            self.cost, self.policy.slots, waiting, calls, self._depth + self._running, self._ends
        )
        if take < waiting:
            self._deferred.inc()
        return take

    def waiting(self) -> list[Job]:
        """The queued jobs, key by key, each key's in the order its calls take them."""
        return [
            ticket.job
            for batcher in self._batchers.values()
            for ticket in batcher._queue
            if ticket.state == QUEUED
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
            model = self._spot_model(job)
            if model is not None:
                ticket = Ticket(job, future, None, tenant)
                self._run_on_the_spot(model, ticket)
                return ticket
            batcher = self._batchers[job.key] = Batcher(self, job.key)
        ticket = Ticket(job, future, batcher, tenant)
        self._depth += 1
        batcher.put(ticket)
        return ticket

    def _spot_model(self, job: Job) -> Model | None:
        """``job``'s model, with a slot taken for it, when the job may run on the spot: nothing
        of its key is queued, and what ``Batcher.run_now`` asks holds (the model is loaded,
        runs inline and costs less than ``inline_below_s``, a slot is free and nobody waits
        for one, no fill delay). Then the job needs no batcher, queue or driver: it is answered
        as ``run_now`` answers it, a batch of one taken at once."""
        if (
            self.loaded is None
            or self.inline_below_s <= 0
            or self.policy.max_delay_s > 0
            or self.slots.take_free(1) == 0
        ):
            return None
        try:
            model = self.loaded(job)
            if model is not None and not (
                model.runs_inline and self.cost.seconds(1) < self.inline_below_s
            ):
                model = None
        except BaseException:
            self.slots.release()
            raise
        if model is None:
            self.slots.release()
        return model

    def _run_on_the_spot(self, model: Model, ticket: Ticket) -> None:
        """Run a job, never queued, in a call of its own on the slot ``_spot_model`` took; a job
        whose deadline has passed is failed unrun (``Batcher._take``'s counts and errors)."""
        if ticket.job.deadline <= time.time():
            ticket.state = GONE
            self._answered(ticket)
            self.expired.inc()
            self.slots.release()
            ticket.future.set_exception(
                DeadlineExceeded(f"deadline passed before {self.model} could run it")
            )
            return
        ticket.state = TAKEN
        self._queue_seconds.observe(time.monotonic() - ticket.arrived)
        self.run_inline(model, [ticket])

    def run_inline(self, model: Model, batch: list[Ticket]) -> None:
        """One model call on the event loop's thread, for a call expected to be shorter than a
        hop to a worker thread and back (``inline_below_s``); gives its slot back."""
        started = time.perf_counter()
        results: list[Any] | Exception
        try:
            results = model.infer_inline([ticket.job.payload for ticket in batch])
        except Exception as error:
            results = error
        finally:
            self.slots.release()
        self.finish(batch, results, time.perf_counter() - started)

    def withdraw(self, ticket: Ticket, *, expired: bool = False) -> None:
        """Its caller stopped waiting: a queued job is removed unrun and counted (as expired
        or cancelled); one already in a model call runs on."""
        if ticket.state != QUEUED:
            return
        self._leave(ticket, expired)
        if not ticket.future.done():
            ticket.future.cancel()

    def expire(self, ticket: Ticket) -> None:
        """Its deadline passed: a queued job is removed unrun and counted as expired; its
        caller gets ``DeadlineExceeded`` either way (a call already started runs on)."""
        if ticket.state == QUEUED:
            self._leave(ticket, True)
        if not ticket.future.done():
            ticket.future.set_exception(
                DeadlineExceeded(f"{self.model} did not answer before the deadline")
            )

    def _leave(self, ticket: Ticket, expired: bool | None = None) -> None:
        """A ticket stops being queued: taken into a call (``expired=None``) or dropped."""
        ticket.state = TAKEN if expired is None else GONE
        if ticket.batcher is not None:  # a job run on the spot was never queued
            ticket.batcher._live -= 1
        self._depth -= 1
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

    def finish(
        self,
        batch: list[Ticket],
        results: list[Any] | Exception,
        took: float,
        cpu: float | None = None,
    ) -> None:
        """Count a finished call (``took`` s, ``cpu`` of it on its thread) and answer its jobs."""
        lane = self
        if not isinstance(results, Exception) and len(results) != len(batch):
            results = RuntimeError(f"{lane.model} gave {len(results)} results for {len(batch)}")
        if isinstance(results, Exception):
            error = results
            logger.error("%s failed on a batch of %d", lane.model, len(batch), exc_info=error)
            results = [error] * len(batch)
        lane._batch_seconds.observe(took)
        lane._batch_size.observe(len(batch))
        lane.gate.observe(len(batch), took, cpu)
        for ticket, result in zip(batch, results, strict=True):
            lane._answered(ticket)
            if ticket.future.done():
                continue
            if isinstance(result, BaseException):
                ticket.future.set_exception(result)
            else:
                ticket.future.set_result(result)

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
                break
            await asyncio.wait(running)
        self.threads.close()  # idle now; a later call starts them again
