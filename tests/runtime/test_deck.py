"""The deck: a blocking model's next calls wait at its threads, so a thread that ends a call
starts the next without a round trip through the event loop (``runtime/lane.py``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

from sluiceway.models.base import BatchPolicy, Model, ModelKind, ThreadedModel
from sluiceway.models.costs import LearnedCost
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.lane import Lane
from sluiceway.runtime.metrics import Metrics
from tests.fixtures.waiting import eventually


class GatedModel(ThreadedModel):
    """A blocking model (as ONNX Runtime is): each call waits at the test's gate; it records
    the batches it started, from its own threads."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.started = threading.Condition()

    @property
    def nbytes(self) -> int:
        return 100

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        with self.started:
            self.batches.append(len(inputs))
            self.started.notify_all()
        self.gate.wait(10)
        return [x * 2 for x in inputs]


class GatedKind(ModelKind):
    name = "double"

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self.model = GatedModel()

    async def load(self, spec: Any) -> Model:
        return self.model


def job(value: int) -> Job:
    return Job(model="double", payload=value, deadline=time.time() + 10)


async def test_a_thread_that_ends_a_call_starts_the_next_without_the_event_loop() -> None:
    kind = GatedKind(BatchPolicy(slots=2, max_batch=1))
    dispatcher = LocalDispatcher([kind], 10**9, Metrics())
    lane = dispatcher.lane("double")
    answers = [asyncio.ensure_future(dispatcher.submit(job(i))) for i in range(4)]
    # Two calls run (one per thread) and the other two wait on deck: nothing is left queued.
    await eventually(lambda: len(kind.model.batches) == 2 and lane.depth == 0)
    assert lane.slots.capacity == 4 and lane.slots.free == 0
    # Stop the event loop's thread until all four calls have started: only the model's own
    # threads can start calls three and four.
    with kind.model.started:
        kind.model.gate.set()
        all_started = kind.model.started.wait_for(lambda: len(kind.model.batches) == 4, 10)
    assert all_started, f"only {len(kind.model.batches)} calls started while the loop was busy"
    assert await asyncio.gather(*answers) == [0, 2, 4, 6]
    await dispatcher.close()


async def test_with_batching_on_the_deck_stays_closed_and_jobs_wait_for_a_whole_batch() -> None:
    kind = GatedKind(BatchPolicy(slots=2, max_batch=8))
    dispatcher = LocalDispatcher([kind], 10**9, Metrics())
    lane = dispatcher.lane("double")
    first = [asyncio.ensure_future(dispatcher.submit(job(i))) for i in range(2)]
    await eventually(lambda: sum(kind.model.batches) == 2)
    later = [asyncio.ensure_future(dispatcher.submit(job(i))) for i in range(2, 14)]
    await eventually(lambda: lane.depth == 12)
    assert lane.slots.capacity == 2, "no call is formed early while batches may grow"
    kind.model.gate.set()
    assert await asyncio.gather(*first, *later) == [i * 2 for i in range(14)]
    assert max(kind.model.batches[2:]) > 1
    await dispatcher.close()


def test_the_deck_opens_once_the_cost_says_batching_gains_nothing() -> None:
    async def resolve(job: Job) -> Model:
        raise AssertionError("not called")

    lane = Lane("double", BatchPolicy(slots=2, max_batch=8), resolve, Metrics(), LearnedCost())
    lane.threaded = True
    assert lane.batch_limit() == 8 and lane.slots.capacity == 2  # nothing measured: batch
    lane.cost.observe(1, 0.006)
    lane.cost.observe(8, 0.054)  # a CPU image model: 8 cost more than 8 alone
    assert lane.batch_limit() == 1 and lane.slots.capacity == 4
    for _ in range(64):
        lane.cost.observe(1, 0.006)
    lane.cost.observe(2, 0.007)  # a call of two now costs little more than one: batch again
    assert lane.batch_limit() == 8 and lane.slots.capacity == 2
    lane.threaded = False  # a model that runs on the loop or awaits: never a deck
    lane.cost.observe(8, 0.054)
    assert lane.batch_limit() == 1 and lane.slots.capacity == 2


class WaitingModel(ThreadedModel):
    """Computes on the calling thread (``computes_on_caller``): each call burns CPU in
    proportion to its size, then waits a fixed while without computing, as a call on a busy
    CPU waits for the other slot, the event loop or the GIL."""

    def __init__(self, on_caller: bool) -> None:
        self.on_caller = on_caller
        self.batches: list[int] = []

    @property
    def nbytes(self) -> int:
        return 100

    @property
    def computes_on_caller(self) -> bool:
        return self.on_caller

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        self.batches.append(len(inputs))
        until = time.thread_time() + 0.01 * len(inputs)
        while time.thread_time() < until:
            pass
        time.sleep(0.02)
        return [x * 2 for x in inputs]


class WaitingKind(GatedKind):
    def __init__(self, on_caller: bool) -> None:
        self.policy = BatchPolicy(slots=1, max_batch=8)
        self.model = WaitingModel(on_caller)  # type: ignore[assignment]


async def test_a_call_s_waits_are_not_taken_for_a_cost_that_batching_spares() -> None:
    async def learn(on_caller: bool) -> Lane:
        kind = WaitingKind(on_caller)
        dispatcher = LocalDispatcher([kind], 10**9, Metrics())
        lane = dispatcher.lane("double")
        for size in (1, 4, 2, 6, 1, 3):  # bursts: calls of several sizes to learn from
            answers = await asyncio.gather(*(dispatcher.submit(job(i)) for i in range(size)))
            assert answers == [i * 2 for i in range(size)]
        await dispatcher.close()
        return lane

    # Durations (10 ms of CPU per item plus 20 ms waited per call) say batching pays.
    by_duration = await learn(on_caller=False)
    assert by_duration.batch_limit() == 8
    # The CPU the calls took says it does not: calls of one, and the deck opens.
    by_cpu = await learn(on_caller=True)
    assert by_cpu.gate.cpu_cost.known
    assert by_cpu.batch_limit() == 1 and by_cpu.slots.capacity == 2


def test_once_unbatched_a_lane_batches_again_only_for_a_clear_gain() -> None:
    async def resolve(job: Job) -> Model:
        raise AssertionError("not called")

    lane = Lane("double", BatchPolicy(slots=2, max_batch=8), resolve, Metrics(), LearnedCost())
    lane.cost.observe(1, 0.010)
    lane.cost.observe(8, 0.080)  # no gain: calls of one
    assert lane.batch_limit() == 1
    for _ in range(64):  # the window forgets the call of 8: a probe of two follows
        lane.cost.observe(1, 0.010)
    assert lane.batch_limit() == 2
    lane.cost.observe(2, 0.0190)  # 5 % cheaper than two calls of one: 0.91 at batch 8
    assert lane.batch_limit() == 1, "a gain within a call's noise is not taken"
    fresh = Lane("double", BatchPolicy(slots=2, max_batch=8), resolve, Metrics(), LearnedCost())
    fresh.cost.observe(1, 0.010)
    fresh.cost.observe(2, 0.0190)
    assert fresh.batch_limit() == 8, "a batching lane keeps batching at that gain"
