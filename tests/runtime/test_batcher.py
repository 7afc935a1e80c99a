"""The batcher through its public entry point, ``LocalDispatcher.submit``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from sluiceway.errors import DeadlineExceeded, Overloaded, QuotaExceeded
from sluiceway.models.base import BatchPolicy, Model, ModelKind, ThreadedModel
from sluiceway.models.costs import CallCost, DeclaredCost, LearnedCost
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.lane import Lane
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.planning import plan_take
from tests.fixtures.waiting import eventually


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
            if kind.held is not None:  # each call waits until the test ends it
                ends = asyncio.Event()
                kind.held.append(ends)
                await ends.wait()
            elif kind.gate is not None:
                await kind.gate.wait()
            else:
                await asyncio.sleep(kind.cost_s)
        finally:
            kind.running -= 1
        return [ValueError(f"odd {x}") if x == "bad" else x * 2 for x in inputs]


class DoublerKind(ModelKind):
    name = "double"

    def __init__(
        self,
        policy: BatchPolicy,
        cost_s: float = 0.02,
        load_s: float = 0.0,
        declared: CallCost | None = None,
    ) -> None:
        self.policy = policy
        self.cost_s = cost_s
        self.load_s = load_s
        self.declared = declared
        self.batches: list[list[Any]] = []
        self.running = 0
        self.peak = 0
        self.loads = 0
        # Set, calls (or loads) wait for it instead of taking their cost: the test decides when
        # they end, so what it asserts in between holds however slow the machine is.
        self.gate: asyncio.Event | None = None
        self.load_gate: asyncio.Event | None = None
        # Set, each call appends its own event and ends when the test sets it (in any order).
        self.held: list[asyncio.Event] | None = None

    def call_cost(self) -> CallCost:
        return self.declared if self.declared is not None else super().call_cost()

    async def load(self, spec: Any) -> Model:
        self.loads += 1
        if self.load_gate is not None:
            await self.load_gate.wait()
        else:
            await asyncio.sleep(self.load_s)
        if spec == "broken":
            raise RuntimeError("cannot load a broken spec")
        return Doubler(self)


def make(
    policy: BatchPolicy, metrics: Metrics | None = None, **kind_args: Any
) -> tuple[LocalDispatcher, DoublerKind]:
    kind = DoublerKind(policy, **kind_args)
    return LocalDispatcher([kind], 10**9, metrics or Metrics()), kind


def job(
    value: Any, key: str = "", timeout: float = 5.0, spec: Any = None, priority: int = 0
) -> Job:
    return Job(
        model="double",
        payload=value,
        key=key,
        spec=spec,
        deadline=time.time() + timeout,
        priority=priority,
    )


def counted(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": "double"})
    return 0.0 if value is None else value


# The kiosk's cost shape (a call costs 0.15 + 0.05 n), shrunk a hundredfold.
KIOSK_COST = DeclaredCost(0.0015, 0.0005)


async def test_each_caller_gets_its_own_result_in_order() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=64, split=False))
    results = await asyncio.gather(*(dispatcher.submit(job(i)) for i in range(50)))
    assert results == [i * 2 for i in range(50)]
    flattened = [x for batch in kind.batches for x in batch]
    assert flattened == list(range(50)), "jobs of one key run in arrival order"


async def test_batches_grow_while_slots_are_busy_and_respect_max_batch() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=8))
    first = asyncio.ensure_future(dispatcher.submit(job(0)))
    await eventually(lambda: kind.running == 1)
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
    # 8 jobs over 35 ms; a fill delay well beyond that, so a stall on a loaded machine cannot
    # close the batch early. Without the delay, 4 free slots would take them one by one.
    dispatcher, kind = make(BatchPolicy(slots=4, max_batch=16, max_delay_s=0.5))

    async def trickle(i: int) -> Any:
        await asyncio.sleep(i * 0.005)
        return await dispatcher.submit(job(i))

    await asyncio.gather(*(trickle(i) for i in range(8)))
    assert [len(batch) for batch in kind.batches] == [8]


async def test_expired_jobs_are_answered_504_and_never_computed() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=1), cost_s=0.2)
    first = asyncio.ensure_future(dispatcher.submit(job("slow")))
    await eventually(lambda: kind.running == 1)
    with pytest.raises(DeadlineExceeded):
        await dispatcher.submit(job("late", timeout=0.05))
    assert await first == "slowslow"
    # One key, one job a call: had "late" stayed queued, it would run before "next".
    assert await dispatcher.submit(job("next")) == "nextnext"
    assert ["late"] not in kind.batches
    assert dispatcher.lane("double").depth == 0


async def test_a_full_queue_refuses_without_waiting_for_room() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=1, max_queue=3))
    kind.gate = asyncio.Event()  # job 0's call runs until the gate opens
    accepted = [asyncio.ensure_future(dispatcher.submit(job(0)))]
    await eventually(lambda: kind.running == 1)  # job 0 runs; the next three fill the queue
    accepted += [asyncio.ensure_future(dispatcher.submit(job(i))) for i in range(1, 4)]
    await eventually(lambda: dispatcher.lane("double").depth == 3)
    # No room can appear while the gate is shut: a refusal that waited for room would hang
    # here, so the bound only turns a hang into a failure.
    with pytest.raises(Overloaded):
        await asyncio.wait_for(dispatcher.submit(job(99)), timeout=10)
    assert kind.running == 1 and not any(task.done() for task in accepted)
    kind.gate.set()
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
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=8))
    kind.load_gate = asyncio.Event()  # key "a" loads until the gate opens
    loading = asyncio.ensure_future(dispatcher.submit(job(1, key="a", spec="a")))
    await eventually(lambda: kind.loads == 1)
    other = asyncio.ensure_future(dispatcher.submit(job(2, key="b", spec="b")))
    # Key "b" needs its own load, and waits for the one slot that "a" is loading in.
    await eventually(lambda: dispatcher.lane("double").slots.waiting == 1)
    assert kind.loads == 1 and not other.done()
    kind.load_gate.set()
    assert await asyncio.gather(loading, other) == [2, 4]
    assert kind.loads == 2


async def test_close_drains_accepted_work() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=2), cost_s=0.02)
    pending = [asyncio.ensure_future(dispatcher.submit(job(i))) for i in range(6)]
    lane = dispatcher.lane("double")
    # All six accepted: queued, or taken into a call.
    await eventually(lambda: lane.depth + sum(len(batch) for batch in kind.batches) == 6)
    await dispatcher.close()
    assert not dispatcher.ready()
    assert [p.result() for p in pending] == [0, 2, 4, 6, 8, 10]


async def test_a_busy_slot_goes_next_to_the_key_with_most_waiting() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=64), cost_s=0.05)
    for key in ["lone", "crowd"]:  # models loaded: only batches compete below
        await dispatcher.submit(job(-1, key=key))
    kind.batches.clear()
    first = asyncio.ensure_future(dispatcher.submit(job(0, key="busy")))
    await eventually(lambda: kind.running == 1)  # the only slot is taken
    lone = asyncio.ensure_future(dispatcher.submit(job(100, key="lone")))
    slots = dispatcher.lane("double").slots
    await eventually(lambda: slots.waiting == 1)  # "lone" asks for the slot first...
    crowd = [dispatcher.submit(job(200 + i, key="crowd")) for i in range(5)]
    await asyncio.gather(first, lone, *crowd)
    assert kind.batches[1] == [200, 201, 202, 203, 204], "...but the crowd's batch is larger"
    assert kind.batches[2] == [100]


async def test_a_burst_is_spread_over_free_slots_when_that_ends_it_sooner() -> None:
    metrics = Metrics()
    dispatcher, kind = make(BatchPolicy(slots=64, max_batch=64), metrics, declared=KIOSK_COST)
    await dispatcher.submit(job(-1, key="r"))  # fitted: only batch formation is measured
    kind.batches.clear()
    results = await asyncio.gather(*(dispatcher.submit(job(i, key="r")) for i in range(20)))
    assert results == [i * 2 for i in range(20)]
    assert [len(batch) for batch in kind.batches] == [1] * 20, "20 calls of one, not one of 20"
    assert kind.peak == 20
    assert counted(metrics, "sluiceway_split_calls_total") == 19


async def test_without_free_slots_the_waiting_jobs_stay_one_batch() -> None:
    # A call costs 0.05 s and little per job: leaving jobs for the next slot to free (in 15 ms
    # or more) would end them later than one batch now.
    cost = DeclaredCost(0.05, 0.0005)
    dispatcher, kind = make(BatchPolicy(slots=3, max_batch=64), declared=cost, cost_s=0.05)
    for key in ["r", "x", "y", "z"]:
        await dispatcher.submit(job(-1, key=key))
    kind.batches.clear()
    busy = []
    for i, key in enumerate(["x", "y", "z"]):  # the three slots, freed 15 ms apart
        busy.append(asyncio.ensure_future(dispatcher.submit(job(100 + i, key=key))))
        await asyncio.sleep(0.015)
    burst = [dispatcher.submit(job(i, key="r")) for i in range(12)]
    await asyncio.gather(*busy, *burst)
    assert kind.batches[3] == list(range(12)), "the first freed slot takes the whole burst"
    assert len(kind.batches) == 4


async def test_keys_share_the_free_slots_by_their_waiting_jobs() -> None:
    dispatcher, kind = make(BatchPolicy(slots=8, max_batch=64), declared=KIOSK_COST, cost_s=0.05)
    for key in ["big", "small"]:
        await dispatcher.submit(job(-1, key=key))
    kind.batches.clear()
    await asyncio.gather(
        *(dispatcher.submit(job(i, key="big")) for i in range(30)),
        *(dispatcher.submit(job(1000 + i, key="small")) for i in range(10)),
    )
    first_wave = kind.batches[:8]
    assert kind.peak == 8
    assert sum(1 for batch in first_wave if batch[0] >= 1000) >= 2, "the small key got slots"
    assert sum(1 for batch in first_wave if batch[0] < 1000) >= 4, "the big key got more"
    assert sorted(x for batch in kind.batches for x in batch) == sorted(
        [*range(30), *range(1000, 1010)]
    )


async def test_a_crowd_arriving_at_busy_slots_is_left_for_the_next_ones_to_free() -> None:
    # The 16-slot convoy, at 4 slots: a key's 40 jobs arrive while every slot is busy. One call
    # of 40 would hold them on one slot while the others run calls of one. The lane's 43 jobs
    # (40 queued, 3 running) make about 11 a slot's share, so the crowd counts on four slots:
    # the one freed and the next three to free, and ends in four calls of 10.
    metrics = Metrics()
    policy = BatchPolicy(slots=4, max_batch=64)
    dispatcher, kind = make(policy, metrics, declared=KIOSK_COST)
    for key in ["a", "b", "c", "d", "r"]:
        await dispatcher.submit(job(-1, key=key))
    kind.batches.clear()
    kind.held = []
    busy = [
        asyncio.ensure_future(dispatcher.submit(job(100 + i, key=k))) for i, k in enumerate("abcd")
    ]
    await eventually(lambda: kind.running == 4)  # every slot busy until the test ends a call
    crowd = [asyncio.ensure_future(dispatcher.submit(job(i, key="r"))) for i in range(40)]
    lane = dispatcher.lane("double")
    await eventually(lambda: lane.depth == 40)
    for call in range(4):  # a, b, c, d end one by one; each freed slot goes to the crowd
        queued = lane.depth
        kind.held[call].set()
        await eventually(lambda: lane.depth < queued)  # noqa: B023
        if not lane.depth:
            break
    held, kind.held = kind.held, None  # later calls take no time
    for ends in held:
        ends.set()
    assert await asyncio.gather(*crowd) == [i * 2 for i in range(40)]
    await asyncio.gather(*busy)
    assert [len(batch) for batch in kind.batches[4:]] == [10, 10, 10, 10]
    assert counted(metrics, "sluiceway_deferred_calls_total") == 3


def test_the_plan_weighs_the_next_slots_to_free_against_one_large_batch() -> None:
    kiosk = DeclaredCost(0.15, 0.05)
    # 50 jobs, one slot now, three more freeing 50, 100 and 150 ms from now: a call of 14 now
    # and about 12 on each of the three ends them all by ~0.85 s instead of 2.65 s.
    assert plan_take(kiosk, 50, 1, [0.05, 0.1, 0.15]) == 14
    assert plan_take(kiosk, 50, 1, []) == 50, "no slot to free: one large batch"
    assert plan_take(kiosk, 50, 1, [2.5, 3.0]) == 50, "slots freeing too late are no help"
    assert plan_take(DeclaredCost(0.15, 0.0), 50, 1, [0.0, 0.0]) == 50, "a flat cost: one batch"
    assert plan_take(kiosk, 3, 1, [0.0, 0.0, 0.0]) == 1, "a proportional spread"


async def test_a_flat_cost_keeps_one_batch_even_with_free_slots() -> None:
    flat = DeclaredCost(0.01, 0.0)  # a GPU: splitting would finish no sooner
    dispatcher, kind = make(BatchPolicy(slots=16, max_batch=64), declared=flat)
    await dispatcher.submit(job(-1, key="r"))
    kind.batches.clear()
    await asyncio.gather(*(dispatcher.submit(job(i, key="r")) for i in range(10)))
    assert kind.batches == [list(range(10))]


async def test_jobs_withdrawn_while_queued_never_run_and_are_counted() -> None:
    metrics = Metrics()
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=64), metrics, cost_s=0.05)
    running = asyncio.ensure_future(dispatcher.submit(job(0)))
    await eventually(lambda: kind.running == 1)  # job 0 holds the only slot
    callers = [asyncio.ensure_future(dispatcher.submit(job(i))) for i in range(1, 11)]
    lane = dispatcher.lane("double")
    await eventually(lambda: lane.depth == 10)
    for caller in callers[:7]:  # their clients hang up while the jobs are queued
        caller.cancel()
    await eventually(lambda: lane.depth == 3)
    assert not running.done(), "withdrawn at once, not at batch formation"
    assert await running == 0
    assert await asyncio.gather(*callers[7:]) == [16, 18, 20]
    assert kind.batches == [[0], [8, 9, 10]]
    assert counted(metrics, "sluiceway_cancelled_total") == 7
    assert counted(metrics, "sluiceway_expired_total") == 0


async def test_a_started_call_runs_on_when_its_caller_leaves() -> None:
    metrics = Metrics()
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=64), metrics, cost_s=0.05)
    caller = asyncio.ensure_future(dispatcher.submit(job(5)))
    await eventually(lambda: kind.running == 1)
    caller.cancel()
    await dispatcher.close()
    assert kind.batches == [[5]]
    assert counted(metrics, "sluiceway_cancelled_total") == 0


async def test_priority_goes_first_within_a_key_and_across_keys() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=2), cost_s=0.02)
    for key in ["a", "b"]:
        await dispatcher.submit(job(-1, key=key))
    kind.batches.clear()
    first = asyncio.ensure_future(dispatcher.submit(job(0, key="a")))
    await eventually(lambda: kind.running == 1)  # the slot is busy; everything below queues
    crowd = [dispatcher.submit(job(10 + i, key="a")) for i in range(4)]
    urgent_in_a = dispatcher.submit(job(20, key="a", priority=3))
    urgent_b = dispatcher.submit(job(30, key="b", priority=5))
    await asyncio.gather(first, *crowd, urgent_in_a, urgent_b)
    assert kind.batches[1] == [30], "the highest priority beats a larger batch"
    assert kind.batches[2] == [20, 10], "within a key the urgent job leads the batch"
    assert kind.batches[3:] == [[11, 12], [13]]


async def test_an_overdue_key_goes_before_a_larger_batch() -> None:
    # A lone job may wait at most fair_wait_calls x its call's cost (0.01 s here) for a slot.
    policy = BatchPolicy(slots=1, max_batch=64, fair_wait_calls=1.0)
    dispatcher, kind = make(policy, declared=DeclaredCost(0.01, 0.0), cost_s=0.05)
    for key in ["lone", "crowd"]:
        await dispatcher.submit(job(-1, key=key))
    kind.batches.clear()
    first = asyncio.ensure_future(dispatcher.submit(job(0, key="busy")))
    await eventually(lambda: kind.running == 1)  # the only slot is taken for 0.05 s
    lone = asyncio.ensure_future(dispatcher.submit(job(100, key="lone")))
    await asyncio.sleep(0.02)  # time passes, not synchronisation: "lone" turns overdue
    crowd = [dispatcher.submit(job(200 + i, key="crowd")) for i in range(5)]
    await asyncio.gather(first, lone, *crowd)
    assert kind.batches[1] == [100]
    assert kind.batches[2] == [200, 201, 202, 203, 204]


async def test_fairness_off_lets_the_larger_batch_go_first() -> None:
    policy = BatchPolicy(slots=1, max_batch=64, fair_wait_calls=0.0)
    dispatcher, kind = make(policy, declared=DeclaredCost(0.01, 0.0), cost_s=0.05)
    for key in ["lone", "crowd"]:
        await dispatcher.submit(job(-1, key=key))
    kind.batches.clear()
    first = asyncio.ensure_future(dispatcher.submit(job(0, key="busy")))
    await eventually(lambda: kind.running == 1)
    lone = asyncio.ensure_future(dispatcher.submit(job(100, key="lone")))
    await asyncio.sleep(0.02)  # time passes: "lone" would be overdue, were fairness on
    crowd = [dispatcher.submit(job(200 + i, key="crowd")) for i in range(5)]
    await asyncio.gather(first, lone, *crowd)
    assert kind.batches[1:] == [[200, 201, 202, 203, 204], [100]]


async def test_a_tenant_over_its_quota_is_refused_and_others_are_not() -> None:
    metrics = Metrics()
    policy = BatchPolicy(slots=1, max_batch=64, tenant_quota=2)
    dispatcher, kind = make(policy, metrics, cost_s=0.05)
    running = asyncio.ensure_future(dispatcher.submit(job(0, key="other")))
    await eventually(lambda: kind.running == 1)
    queued = [asyncio.ensure_future(dispatcher.submit(job(i, key="flood"))) for i in (1, 2)]
    await eventually(lambda: dispatcher.lane("double").depth == 2)
    with pytest.raises(QuotaExceeded):
        await dispatcher.submit(job(3, key="flood"))
    assert await dispatcher.submit(job(4, key="calm")) == 8
    assert await asyncio.gather(running, *queued) == [0, 2, 4]
    assert await dispatcher.submit(job(5, key="flood")) == 10, "its quota frees as jobs run"
    assert counted(metrics, "sluiceway_quota_rejected_total") == 1


async def test_a_tenants_jobs_in_calls_count_towards_its_quota() -> None:
    # Counting only queued jobs let a flooding tenant refill its queue while its last batch
    # ran, and so hold several slots at once (bench/burst/flood).
    metrics = Metrics()
    dispatcher, kind = make(BatchPolicy(slots=2, max_batch=1, tenant_quota=2), metrics)
    kind.gate = asyncio.Event()
    running = [asyncio.ensure_future(dispatcher.submit(job(i, key="flood"))) for i in (1, 2)]
    await eventually(lambda: kind.running == 2)
    assert dispatcher.lane("double").depth == 0, "both are in calls, none queued"
    with pytest.raises(QuotaExceeded, match="2 double jobs of this tenant are not answered"):
        await dispatcher.submit(job(3, key="flood"))
    kind.gate.set()
    assert await asyncio.gather(*running) == [2, 4]
    assert await dispatcher.submit(job(4, key="flood")) == 8, "answered jobs free the quota"
    assert counted(metrics, "sluiceway_quota_rejected_total") == 1


class ThreadRecorder(ThreadedModel):
    """A blocking model (as ONNX Runtime is) that records the thread of each call."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    @property
    def nbytes(self) -> int:
        return 100

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        self.threads.append(threading.get_ident())
        return [x * 2 for x in inputs]


class RecorderKind(ModelKind):
    name = "double"

    def __init__(self) -> None:
        self.policy = BatchPolicy(slots=1, max_batch=4)
        self.model = ThreadRecorder()

    async def load(self, spec: Any) -> Model:
        return self.model


@pytest.mark.parametrize("inline_below_s", [0.0, 0.005])
async def test_a_call_known_to_be_tiny_runs_on_the_event_loop(inline_below_s: float) -> None:
    kind = RecorderKind()
    dispatcher = LocalDispatcher([kind], 10**9, Metrics(), inline_below_s=inline_below_s)
    for value in range(4):
        assert await dispatcher.submit(job(value)) == value * 2
    loop_thread = threading.get_ident()
    first, *later = kind.model.threads
    # Unknown at first (a guessed 10 ms per item), so the first call goes to a thread; once its
    # cost is measured (microseconds here), calls under the threshold run on the loop's thread.
    assert first != loop_thread
    if inline_below_s:
        assert later == [loop_thread] * 3
    else:
        assert loop_thread not in later


async def test_a_model_that_gains_nothing_from_batching_runs_one_job_per_call() -> None:
    proportional = DeclaredCost(0.0, 0.001)
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=8), cost_s=0.01, declared=proportional)
    assert await asyncio.gather(*(dispatcher.submit(job(i)) for i in range(12))) == [
        i * 2 for i in range(12)
    ]
    assert [len(batch) for batch in kind.batches] == [1] * 12
    batched, kind = make(BatchPolicy(slots=1, max_batch=8), cost_s=0.01, declared=KIOSK_COST)
    await asyncio.gather(*(batched.submit(job(i)) for i in range(12)))
    assert max(len(batch) for batch in kind.batches) > 1


def test_a_model_without_gain_is_probed_again_with_calls_of_two() -> None:
    async def resolve(job: Job) -> Model:
        raise AssertionError("not called")

    lane = Lane("double", BatchPolicy(slots=2, max_batch=8), resolve, Metrics(), LearnedCost())
    assert lane.batch_limit() == 8  # nothing measured: batch
    lane.cost.observe(1, 0.006)
    lane.cost.observe(8, 0.054)  # a CPU image model: 8 cost more than 8 alone
    assert lane.batch_limit() == 1
    for _ in range(64):  # the window forgets the call of 8
        lane.cost.observe(1, 0.006)
    assert lane.batch_limit() == 2  # a probe, not a full batch
    lane.cost.observe(2, 0.012)
    assert lane.batch_limit() == 1
    for _ in range(64):
        lane.cost.observe(1, 0.006)
    lane.cost.observe(2, 0.007)  # now a call of two costs little more than one
    assert lane.batch_limit() == 8


async def test_a_lone_tiny_job_is_answered_on_the_spot_and_counted() -> None:
    kind = RecorderKind()
    metrics = Metrics()
    dispatcher = LocalDispatcher([kind], 10**9, metrics, inline_below_s=0.005)
    assert await dispatcher.submit(job(0)) == 0  # measures the cost (on a thread)
    lane = dispatcher.lane("double")
    ticket = lane.submit(job(3))
    # Answered within submit: no batcher task, no wait for a slot, the slot given back.
    assert ticket.future.done() and ticket.future.result() == 6
    assert lane.depth == 0 and lane.slots.free == 1
    assert dispatcher.statistics.of("double").execution_count == 2  # two calls
    # With the slot taken, a job waits for the driver as before.
    await lane.slots.acquire()
    waiting = lane.submit(job(4))
    assert not waiting.future.done() and lane.depth == 1
    lane.slots.release()
    assert await waiting.future == 8
    # A model whose calls are not known to be tiny never runs on the spot.
    slow = LocalDispatcher([RecorderKind()], 10**9, Metrics(), inline_below_s=0.0)
    assert await slow.submit(job(0)) == 0
    queued = slow.lane("double").submit(job(5))
    assert not queued.future.done()
    assert await queued.future == 10


async def test_a_lone_tiny_job_past_its_deadline_is_failed_unrun_on_the_spot() -> None:
    kind = RecorderKind()
    metrics = Metrics()
    dispatcher = LocalDispatcher([kind], 10**9, metrics, inline_below_s=0.005)
    assert await dispatcher.submit(job(0)) == 0  # measures the cost (on a thread)
    with pytest.raises(DeadlineExceeded, match="before double could run it"):
        await dispatcher.submit(job(1, timeout=-1))
    assert kind.model.threads[1:] == []  # never called
    lane = dispatcher.lane("double")
    assert lane.depth == 0 and lane.slots.free == 1
    assert metrics.registry.get_sample_value("sluiceway_expired_total", {"model": "double"}) == 1
    stats = dispatcher.statistics.of("double")
    assert (stats.success.count, stats.fail.count, stats.inference_count) == (1, 1, 1)
    assert await dispatcher.submit(job(2)) == 4  # the slot was given back
