"""A saturated owner's partition gets a second consumer: joined late, left again, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import numpy as np

from sluiceway.config import Settings
from sluiceway.kinds import build_kinds
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.command import select_kinds
from sluiceway.split.dispatcher import RedisDispatcher
from sluiceway.split.helping import Helping, decode_backlog, encode_backlog
from sluiceway.split.keys import Keys
from sluiceway.split.wire import WorkerRecord
from sluiceway.split.worker import Worker
from tests.conftest import fast_settings
from tests.fixtures.kiosk import expected, knn_job, restaurant
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer

KNN = {f"knn:{p}": "knn" for p in range(4)}
LIVE = {name: WorkerRecord(("knn",), 0.0) for name in ("a", "b", "c")}


def test_a_backlog_is_joined_only_once_it_has_lasted_as_long_as_a_fit() -> None:
    helping = Helping("b", help_after_s=2.0)
    reports = {"a": {"knn:0": 50}}
    assert helping.plan(10.0, LIVE, reports, {}, KNN, ["knn:1"]) == []
    assert helping.plan(11.0, LIVE, reports, {}, KNN, ["knn:1"]) == []
    assert helping.plan(12.0, LIVE, reports, {}, KNN, ["knn:1"]) == ["knn:0"]
    assert helping.helped == ["knn:0"]


def test_a_break_in_the_reports_restarts_the_wait() -> None:
    helping = Helping("b", help_after_s=2.0)
    helping.plan(10.0, LIVE, {"a": {"knn:0": 50}}, {}, KNN, [])
    helping.plan(11.0, LIVE, {}, {}, KNN, [])
    assert helping.plan(12.0, LIVE, {"a": {"knn:0": 50}}, {}, KNN, []) == []


def test_two_hot_partitions_go_to_two_free_workers_biggest_first() -> None:
    reports = {"a": {"knn:0": 10, "knn:2": 90}}
    plans = {}
    for name in ("b", "c"):
        helping = Helping(name, help_after_s=1.0)
        helping.plan(0.0, LIVE, reports, {}, KNN, [])
        plans[name] = helping.plan(1.0, LIVE, reports, {}, KNN, [])
    assert sorted(plans.values()) == [["knn:0"], ["knn:2"]]


def test_every_free_worker_helps_when_there_is_one_hot_partition() -> None:
    reports = {"a": {"knn:0": 90}}
    for name in ("b", "c"):
        helping = Helping(name, help_after_s=1.0)
        helping.plan(0.0, LIVE, reports, {}, KNN, [])
        assert helping.plan(1.0, LIVE, reports, {}, KNN, []) == ["knn:0"]


def test_a_worker_with_a_backlog_of_its_own_joins_nobody() -> None:
    helping = Helping("b", help_after_s=1.0)
    reports = {"a": {"knn:0": 50}, "b": {"knn:1": 5}}
    helping.plan(0.0, LIVE, reports, {"knn:1": 5}, KNN, ["knn:1"])
    assert helping.plan(1.0, LIVE, reports, {"knn:1": 5}, KNN, ["knn:1"]) == []
    assert helping.helped == []


def test_a_worker_whose_own_backlog_paused_for_a_beat_still_joins_nobody() -> None:
    # b's own partition was backlogged a beat ago: its slots are busy with its own restaurant,
    # so helping would only split its batches (and draw helpers onto its partition in turn).
    helping = Helping("b", help_after_s=1.0)
    hot, both = {"a": {"knn:0": 50}}, {"a": {"knn:0": 50}, "b": {"knn:1": 5}}
    helping.plan(0.0, LIVE, hot, {}, KNN, ["knn:1"])
    helping.plan(0.5, LIVE, both, {"knn:1": 5}, KNN, ["knn:1"])
    assert helping.plan(1.0, LIVE, hot, {}, KNN, ["knn:1"]) == [], "a's backlog is ripe, b busy"
    assert helping.plan(1.5, LIVE, hot, {}, KNN, ["knn:1"]) == ["knn:0"], (
        "free for as long as a fit: it joins"
    )


def test_the_hot_partitions_go_to_the_workers_without_a_recent_backlog() -> None:
    # b reported a backlog half a beat ago and c did not: every worker computes that c helps both
    # of a's hot partitions, so b is not counted on (and joins neither).
    early = {"a": {"knn:0": 90, "knn:2": 10}, "b": {"knn:1": 5}}
    later = {"a": {"knn:0": 90, "knn:2": 10}}
    plans = {}
    for name, own in (("b", {"knn:1": 5}), ("c", {})):
        helping = Helping(name, help_after_s=1.0)
        helping.plan(0.0, LIVE, later, {}, KNN, [])
        helping.plan(0.5, LIVE, early, own, KNN, [])
        plans[name] = sorted(helping.plan(1.0, LIVE, later, {}, KNN, []))
    assert plans == {"b": [], "c": ["knn:0", "knn:2"]}


def test_a_worker_whose_read_ahead_filled_takes_on_no_new_partition_but_keeps_its_own() -> None:
    live = {name: LIVE[name] for name in ("a", "b")}  # b is the only one who could help
    helping = Helping("b", help_after_s=1.0)
    hot = {"a": {"knn:0": 50}}
    helping.plan(0.0, live, hot, {}, KNN, [])
    assert helping.plan(1.0, live, hot, {}, KNN, [], full=True) == [], "no room to spare"
    assert helping.plan(1.5, live, hot, {}, KNN, []) == ["knn:0"]
    more = {"a": {"knn:0": 50, "knn:2": 50}}
    helping.plan(2.0, live, more, {}, KNN, [], full=True)
    assert helping.plan(3.0, live, more, {}, KNN, [], full=True) == []
    assert helping.helped == ["knn:0"]
    assert helping.plan(3.5, live, more, {}, KNN, []) == ["knn:2"], "room again: it joins"


def test_a_helper_leaves_once_the_owner_stops_reporting_for_as_long() -> None:
    helping = Helping("b", help_after_s=1.0)
    hot = {"a": {"knn:0": 50}}
    helping.plan(0.0, LIVE, hot, {}, KNN, [])
    assert helping.plan(1.0, LIVE, hot, {}, KNN, []) == ["knn:0"]
    helping.plan(1.5, LIVE, {}, {}, KNN, [])
    assert helping.helped == ["knn:0"], "one quiet beat is not the end of a backlog"
    helping.plan(2.5, LIVE, {}, {}, KNN, [])
    assert helping.helped == []


def test_a_helper_with_a_backlog_of_its_own_keeps_helping_while_the_owner_reports() -> None:
    helping = Helping("b", help_after_s=1.0)
    hot = {"a": {"knn:0": 50}}
    helping.plan(0.0, LIVE, hot, {}, KNN, [])
    helping.plan(1.0, LIVE, hot, {}, KNN, [])
    both = {"a": {"knn:0": 50}, "b": {"knn:1": 5}}
    assert helping.plan(2.0, LIVE, both, {"knn:1": 5}, KNN, ["knn:1"]) == []
    assert helping.helped == ["knn:0"], "dropping and rejoining each beat would flap"


def test_a_partition_left_lately_is_joined_again_at_once() -> None:
    helping = Helping("b", help_after_s=1.0)
    hot = {"a": {"knn:0": 50}}
    helping.plan(0.0, LIVE, hot, {}, KNN, [])
    helping.plan(1.0, LIVE, hot, {}, KNN, [])
    helping.plan(2.5, LIVE, {}, {}, KNN, [])
    assert helping.helped == []
    assert helping.plan(3.0, LIVE, hot, {}, KNN, []) == ["knn:0"], "its model is still fitted"


def test_reports_of_dead_workers_and_unserved_models_are_ignored() -> None:
    helping = Helping("b", help_after_s=1.0)
    reports = {"gone": {"knn:0": 50}, "a": {"other:0": 50}}
    helping.plan(0.0, LIVE, reports, {}, KNN, [])
    assert helping.plan(1.0, LIVE, reports, {}, KNN, []) == []


def test_help_after_zero_turns_helping_off() -> None:
    helping = Helping("b", help_after_s=0.0)
    assert helping.plan(5.0, LIVE, {"a": {"knn:0": 50}}, {}, KNN, []) == []


def test_a_backlog_record_round_trips_and_junk_reads_as_none() -> None:
    assert decode_backlog(encode_backlog({"knn:0": 3})) == {"knn:0": 3}
    assert decode_backlog(b"\xc1junk") == {}


def _settings(server: RedisServer, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        broker_url=server.url,
        broker_prefix=f"test-{uuid.uuid4().hex[:8]}",
        worker_port=None,
        worker_heartbeat_s=0.1,
        # Long enough that a loaded machine's stall never passes for a death: the claim of a
        # "dead" worker's jobs would run them twice (at-least-once), which this test counts.
        worker_dead_after_s=10.0,
        worker_help_after_s=0.2,
        # One slot, four jobs read ahead: the owner serves 4 jobs per 50 ms at best, so 400
        # jobs keep it saturated for seconds whatever the machine's speed.
        worker_prefetch=4,
        knn_slots=1,
        knn_max_batch=4,
        knn_infer_base_cost_s=0.05,
        knn_infer_per_query_cost_s=0.0,
    )
    values.update(overrides)
    return fast_settings(**values)


def _worker(settings: Settings, name: str, metrics: Metrics) -> Worker:
    return Worker(settings, select_kinds(build_kinds(settings), "knn"), metrics, name)


def _ran(metrics: Metrics) -> float:
    """Queries a worker's KNN calls have run."""
    value = metrics.registry.get_sample_value("sluiceway_batch_size_sum", {"model": "knn"})
    return value or 0.0


def _knn(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"model": "knn"}) or 0.0


@contextlib.asynccontextmanager
async def _two_workers(
    settings: Settings,
) -> AsyncIterator[tuple[RedisDispatcher, list[Worker], dict[str, Metrics]]]:
    """An API node's dispatcher and two workers, each owning partitions; closed afterwards."""
    metrics = {"worker-a": Metrics(), "worker-b": Metrics()}
    workers = [_worker(settings, name, metrics[name]) for name in metrics]
    for worker in workers:
        await worker.start()
    api = RedisDispatcher(settings, Metrics())
    await api.start()
    try:
        await eventually(lambda: all(w.owned for w in workers))
        yield api, workers, metrics
    finally:
        await api.close()
        for worker in workers:
            await worker.close()


async def test_a_saturated_partition_is_served_by_two_workers_then_one(
    redis_server: RedisServer,
) -> None:
    settings = _settings(redis_server)
    async with _two_workers(settings) as (api, workers, metrics):
        training = restaurant(3)
        queries = [np.array([[i % 7, i % 5]]) for i in range(400)]
        jobs = [knn_job(training, q, timeout_s=60) for q in queries]
        keys = Keys(settings.broker_prefix, settings.broker_partitions)
        stream = keys.jobs("knn", keys.partition(jobs[0].key))
        owner, helper = workers if stream in workers[0].owned else workers[::-1]
        owned, helped = metrics[owner.id], metrics[helper.id]
        answers = asyncio.gather(*(api.submit(job) for job in jobs))
        await eventually(lambda: helper.helped == [stream], timeout_s=30)
        results = await answers
        assert results == [expected(training, q) for q in queries], "a job was lost or wrong"
        # Every query ran once: both workers ran some, and together exactly 400.
        assert _ran(owned) > 0 and _ran(helped) > 0
        assert _ran(owned) + _ran(helped) == 400
        assert helped.registry.get_sample_value("sluiceway_partitions_helped_total") == 1
        await eventually(lambda: helper.helped == [], timeout_s=30)


async def test_a_helper_does_not_run_jobs_whose_callers_left(redis_server: RedisServer) -> None:
    # The helper's fit takes a second: the jobs it reads wait queued while their callers leave.
    settings = _settings(redis_server, knn_fit_cost_s=1.0)
    async with _two_workers(settings) as (api, workers, metrics):
        training = restaurant(4)
        jobs = [knn_job(training, np.zeros((1, 2)), timeout_s=60) for _ in range(400)]
        keys = Keys(settings.broker_prefix, settings.broker_partitions)
        stream = keys.jobs("knn", keys.partition(jobs[0].key))
        helper = workers[1] if stream in workers[0].owned else workers[0]
        helped = metrics[helper.id]
        callers = [asyncio.ensure_future(api.submit(job)) for job in jobs]
        await eventually(lambda: helper.helped == [stream], timeout_s=30)
        await eventually(lambda: _knn(helped, "sluiceway_queue_depth") > 0, timeout_s=30)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)

        # Every job either ran (before its caller left) or was withdrawn unrun, on either
        # worker; the helper withdrew some of those it held.
        def accounted() -> float:
            done = [_ran(m) + _knn(m, "sluiceway_cancelled_total") for m in metrics.values()]
            return sum(done)

        await eventually(lambda: accounted() == 400, timeout_s=30)
        assert _knn(helped, "sluiceway_cancelled_total") > 0
