"""The batcher through its public entry point, ``LocalDispatcher.submit``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from sluiceway.models.base import BatchPolicy, Model, ModelKind
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.runtime.errors import DeadlineExceeded, Overloaded
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.metrics import Metrics


class Doubler(Model):
    """Doubles numbers, taking ``cost_s`` per call; records every batch and concurrency."""

    def __init__(self, kind: DoublerKind) -> None:
        self.kind = kind

    @property
    def nbytes(self) -> int:
        return 100

    async def infer(self, inputs: Sequence[Any]) -> list[Any]:
        kind = self.kind
        kind.batches.append(list(inputs))
        kind.running += 1
        kind.peak = max(kind.peak, kind.running)
        try:
            await asyncio.sleep(kind.cost_s)
        finally:
            kind.running -= 1
        return [ValueError(f"odd {x}") if x == "bad" else x * 2 for x in inputs]


class DoublerKind(ModelKind):
    name = "double"

    def __init__(self, policy: BatchPolicy, cost_s: float = 0.02, load_s: float = 0.0) -> None:
        self.policy = policy
        self.cost_s = cost_s
        self.load_s = load_s
        self.batches: list[list[Any]] = []
        self.running = 0
        self.peak = 0
        self.loads = 0

    async def load(self, spec: Any) -> Model:
        self.loads += 1
        await asyncio.sleep(self.load_s)
        if spec == "broken":
            raise RuntimeError("cannot load a broken spec")
        return Doubler(self)


def make(policy: BatchPolicy, **kind_args: Any) -> tuple[LocalDispatcher, DoublerKind]:
    kind = DoublerKind(policy, **kind_args)
    return LocalDispatcher([kind], 10**9, Metrics()), kind


def job(value: Any, key: str = "", timeout: float = 5.0, spec: Any = None) -> Job:
    return Job(model="double", payload=value, key=key, spec=spec, deadline=time.time() + timeout)


async def test_each_caller_gets_its_own_result_in_order() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=64))
    results = await asyncio.gather(*(dispatcher.submit(job(i)) for i in range(50)))
    assert results == [i * 2 for i in range(50)]
    flattened = [x for batch in kind.batches for x in batch]
    assert flattened == list(range(50)), "jobs of one key run in arrival order"


async def test_batches_grow_while_slots_are_busy_and_respect_max_batch() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=8))
    first = asyncio.ensure_future(dispatcher.submit(job(0)))
    await asyncio.sleep(0.005)
    await asyncio.gather(first, *(dispatcher.submit(job(i)) for i in range(1, 30)))
    sizes = [len(batch) for batch in kind.batches]
    assert sizes[0] == 1, "work-conserving: the first job runs at once, alone"
    assert max(sizes) == 8
    assert all(size <= 8 for size in sizes)
    assert sum(sizes) == 30


async def test_slot_limit_caps_concurrent_model_calls() -> None:
    dispatcher, kind = make(BatchPolicy(slots=3, max_batch=1))
    await asyncio.gather(*(dispatcher.submit(job(i, key=str(i % 6))) for i in range(24)))
    assert kind.peak == 3


async def test_keys_never_share_a_batch() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=64))
    await asyncio.gather(*(dispatcher.submit(job(i, key=str(i % 3))) for i in range(30)))
    for batch in kind.batches:
        assert len({x % 3 for x in batch}) == 1


async def test_fill_delay_gathers_a_batch_from_a_trickle() -> None:
    dispatcher, kind = make(BatchPolicy(slots=4, max_batch=16, max_delay_s=0.1))

    async def trickle(i: int) -> Any:
        await asyncio.sleep(i * 0.005)
        return await dispatcher.submit(job(i))

    await asyncio.gather(*(trickle(i) for i in range(8)))
    assert [len(batch) for batch in kind.batches] == [8]


async def test_expired_jobs_are_answered_504_and_never_computed() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=1), cost_s=0.2)
    first = asyncio.ensure_future(dispatcher.submit(job("slow")))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):
        await dispatcher.submit(job("late", timeout=0.05))
    assert await first == "slowslow"
    await asyncio.sleep(0.05)
    assert ["late"] not in kind.batches
    assert dispatcher.lane("double").depth == 0


async def test_full_queue_is_refused_fast() -> None:
    dispatcher, _ = make(BatchPolicy(slots=1, max_batch=1, max_queue=3), cost_s=0.1)
    accepted = [asyncio.ensure_future(dispatcher.submit(job(0)))]
    await asyncio.sleep(0.01)  # job 0 is running; the next three fill the queue
    accepted += [asyncio.ensure_future(dispatcher.submit(job(i))) for i in range(1, 4)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    with pytest.raises(Overloaded):
        await dispatcher.submit(job(99))
    assert time.perf_counter() - started < 0.05
    assert await asyncio.gather(*accepted) == [0, 2, 4, 6], "accepted work is never lost"


async def test_one_bad_item_fails_alone() -> None:
    dispatcher, _ = make(BatchPolicy(slots=1, max_batch=8))
    results = await asyncio.gather(
        *(dispatcher.submit(job(x)) for x in [1, "bad", 3]), return_exceptions=True
    )
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError)


async def test_a_failed_load_fails_its_jobs_and_is_retried_next_time() -> None:
    dispatcher, kind = make(BatchPolicy(slots=2, max_batch=8))
    outcomes = await asyncio.gather(
        *(dispatcher.submit(job(i, key="k", spec="broken")) for i in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert kind.loads == 1, "concurrent jobs of one key share one load"
    with pytest.raises(RuntimeError):
        await dispatcher.submit(job(1, key="k", spec="broken"))
    assert kind.loads == 2


async def test_a_load_holds_a_slot() -> None:
    dispatcher, _ = make(BatchPolicy(slots=1, max_batch=8), load_s=0.1, cost_s=0.01)
    loading = asyncio.ensure_future(dispatcher.submit(job(1, key="a")))
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    await dispatcher.submit(job(2, key="b-already-loaded-never"))
    # key "b" needs its own load, which waits for the slot "a" is loading in.
    assert time.perf_counter() - started >= 0.08
    assert await loading == 2


async def test_close_drains_accepted_work() -> None:
    dispatcher, _ = make(BatchPolicy(slots=1, max_batch=2), cost_s=0.02)
    pending = [asyncio.ensure_future(dispatcher.submit(job(i))) for i in range(6)]
    await asyncio.sleep(0)
    await dispatcher.close()
    assert not dispatcher.ready()
    assert [p.result() for p in pending] == [0, 2, 4, 6, 8, 10]


async def test_a_busy_slot_goes_next_to_the_key_with_most_waiting() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=64), cost_s=0.05)
    for key in ["lone", "crowd"]:  # models loaded: only batches compete below
        await dispatcher.submit(job(-1, key=key))
    kind.batches.clear()
    first = asyncio.ensure_future(dispatcher.submit(job(0, key="busy")))
    await asyncio.sleep(0.01)  # the only slot is taken
    lone = asyncio.ensure_future(dispatcher.submit(job(100, key="lone")))
    await asyncio.sleep(0.005)  # "lone" asks for the slot first...
    crowd = [dispatcher.submit(job(200 + i, key="crowd")) for i in range(5)]
    await asyncio.gather(first, lone, *crowd)
    assert kind.batches[1] == [200, 201, 202, 203, 204], "...but the crowd's batch is larger"
    assert kind.batches[2] == [100]
