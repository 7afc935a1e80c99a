"""Wide calls: a call made while no other model call computes runs on every core, and calls stay
on one core while others keep joining them (``runtime/threads.py``, ``Lane.may_go_wide``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from sluiceway.models.base import BatchPolicy, Model, ModelKind, ThreadedModel
from sluiceway.models.costs import CallCost, DeclaredCost
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.threads import COMPUTING, Computing, ModelThreads
from tests.fixtures.waiting import eventually


class WideModel(ThreadedModel):
    """A blocking model that can run wide: it records how each call ran; each call waits at the
    test's gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[str] = []

    @property
    def nbytes(self) -> int:
        return 100

    @property
    def runs_wide(self) -> bool:
        return True

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        return self._call("narrow", inputs)

    def infer_wide(self, inputs: Sequence[Any]) -> list[Any]:
        return self._call("wide", inputs)

    def _call(self, how: str, inputs: Sequence[Any]) -> list[Any]:
        self.calls.append(how)
        self.gate.wait(10)
        return [x * 2 for x in inputs]


class WideKind(ModelKind):
    """Calls declared to cost ``cost`` (by default 10 ms per job, nothing per call), whatever
    the calls measure: they take no time."""

    def __init__(
        self, name: str, policy: BatchPolicy | None = None, cost: CallCost | None = None
    ) -> None:
        self.name = name
        self.policy = policy or BatchPolicy(slots=2, max_batch=1)
        self.model = WideModel()
        self.cost = cost or DeclaredCost(0.0, 0.01)

    def call_cost(self) -> CallCost:
        return self.cost

    async def load(self, spec: Any) -> Model:
        return self.model


@pytest.fixture(autouse=True)
def fresh_count() -> Iterator[None]:
    """The count is the process's: start each test from calls that stayed alone."""
    COMPUTING.stayed_alone = 1.0
    yield
    COMPUTING.stayed_alone = 1.0


def job(model: str, value: int) -> Job:
    return Job(model=model, payload=value, deadline=time.time() + 10)


async def test_a_call_made_alone_goes_wide_and_one_made_beside_another_does_not() -> None:
    first, second = WideKind("first"), WideKind("second")
    metrics = Metrics()
    dispatcher = LocalDispatcher([first, second], 10**9, metrics)
    alone = asyncio.ensure_future(dispatcher.submit(job("first", 1)))
    await eventually(lambda: first.model.calls == ["wide"])
    # Another model's call starts while the first computes: the cores are shared, it stays on one.
    beside = asyncio.ensure_future(dispatcher.submit(job("second", 2)))
    await eventually(lambda: second.model.calls == ["narrow"])
    first.model.gate.set()
    second.model.gate.set()
    assert await asyncio.gather(alone, beside) == [2, 4]
    wide_calls = metrics.registry.get_sample_value
    assert wide_calls("sluiceway_wide_calls_total", {"model": "first"}) == 1
    assert wide_calls("sluiceway_wide_calls_total", {"model": "second"}) == 0
    await dispatcher.close()


async def test_a_short_call_or_one_with_jobs_waiting_for_another_slot_stays_on_one_core() -> None:
    quick, busy = WideKind("quick", cost=DeclaredCost(0.0, 0.0001)), WideKind("busy")
    dispatcher = LocalDispatcher([quick, busy], 10**9, Metrics())
    quick.model.gate.set()
    assert await dispatcher.submit(job("quick", 1)) == 2
    assert quick.model.calls == ["narrow"]
    # Two jobs at once: the first call starts with the second job waiting for the other slot.
    both = [asyncio.ensure_future(dispatcher.submit(job("busy", i))) for i in (1, 2)]
    await eventually(lambda: len(busy.model.calls) == 2)
    assert busy.model.calls == ["narrow", "narrow"]
    busy.model.gate.set()
    assert await asyncio.gather(*both) == [2, 4]
    await dispatcher.close()


async def test_a_batch_of_several_jobs_stays_on_one_core_unless_the_lane_has_one_slot() -> None:
    """Jobs that came together do more per second on one core each than in one wide call; a
    lane of one slot has no second slot to put them on."""
    batching_pays = DeclaredCost(0.01, 0.001)
    two = WideKind("two", BatchPolicy(slots=2, max_batch=8, split=False), batching_pays)
    one = WideKind("one", BatchPolicy(slots=1, max_batch=8), batching_pays)
    dispatcher = LocalDispatcher([two, one], 10**9, Metrics())
    for kind in (two, one):
        kind.model.gate.set()
        together = [asyncio.ensure_future(dispatcher.submit(job(kind.name, i))) for i in (1, 2, 3)]
        assert await asyncio.gather(*together) == [2, 4, 6]
    assert two.model.calls == ["narrow"]  # one call of all three, on one core
    assert one.model.calls == ["wide"]
    assert await dispatcher.submit(job("two", 4)) == 8
    assert two.model.calls == ["narrow", "wide"]  # a job alone goes wide
    await dispatcher.close()


async def test_in_a_lane_of_one_slot_a_call_formed_on_deck_goes_wide_too() -> None:
    """Its one thread starts it only once the running call has ended: it computes alone."""
    kind = WideKind("single", BatchPolicy(slots=1, max_batch=1))
    dispatcher = LocalDispatcher([kind], 10**9, Metrics())
    lane = dispatcher.lane("single")
    first = asyncio.ensure_future(dispatcher.submit(job("single", 1)))
    await eventually(lambda: kind.model.calls == ["wide"])
    second = asyncio.ensure_future(dispatcher.submit(job("single", 2)))
    await eventually(lambda: lane.depth == 0)  # formed, waiting on deck for the thread
    kind.model.gate.set()
    assert await asyncio.gather(first, second) == [2, 4]
    assert kind.model.calls == ["wide", "wide"]
    await dispatcher.close()


async def test_a_wide_call_reports_no_cpu_of_its_thread() -> None:
    model = WideModel()
    model.gate.set()
    threads = ModelThreads("wide", 1)
    timed = await threads.run(model.predict_batch, [1], model.infer_wide)
    assert timed.results == [2] and timed.wide and timed.cpu is None  # others computed too
    timed = await threads.run(model.predict_batch, [1])
    assert timed.results == [2] and not timed.wide and timed.cpu is not None
    threads.close()


def test_calls_stay_narrow_while_others_join_them_and_go_wide_again_once_alone() -> None:
    computing = Computing()
    assert computing.allows_wide
    for _ in range(5):  # every call that starts alone is joined by another before it ends
        first = computing.enter()
        second = computing.enter()
        assert first is not None and second is None
        computing.leave(second)
        computing.leave(first)
    assert not computing.allows_wide and computing.count == 0
    for _ in range(12):  # calls alone again, one after the other
        computing.leave(computing.enter())
    assert computing.allows_wide
