"""A job delivered to a live worker and lost on the way is run all the same.

Redis counts a job as delivered once it has written the read's or the claim's reply. If the
connection drops before the worker parses it, or the worker's answer cannot be sent, the job
stays pending for that worker, alive and owning its partition, so no other worker takes it.
Before, it was never run and its request ended in 504; now the worker takes it back before
its next read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from sluiceway.errors import DeadlineExceeded
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.keys import GROUP, Keys
from sluiceway.split.worker import Worker
from tests.fixtures.kiosk import expected, knn_job, restaurant
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer
from tests.split.test_worker import (
    _ghost_takes,
    _register_ghost,
    api_node,
    cluster_settings,
    new_worker,
    redis_client,
)

DEADLINE_S = 4.0
"""Each request's deadline: well past a lost job's recovery, short for the old code's 504."""


def _reclaimed(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("sluiceway_reclaimed_jobs_total") or 0.0


async def _lose_the_next_read_with_jobs(worker: Worker) -> list[int]:
    """Make the worker's next read that Redis answers with jobs lose its reply, as a connection
    dropped after Redis wrote it would: the jobs are delivered, the worker never sees them."""
    reader, lost, calls = worker._reader, [], []
    read = reader.read

    async def read_and_drop(
        streams: Sequence[str], count: int, block_ms: int | None = None
    ) -> list[tuple[str, bytes, Any]]:
        calls.append(len(streams))
        entries = await read(streams, count, block_ms)
        if entries and not lost:
            lost.append(len(entries))
            reader.reset()
            raise RedisConnectionError("Connection closed by server.")
        return entries

    reader.read = read_and_drop  # type: ignore[method-assign]
    await reader.cut_short(worker._broker)  # the read under way is the old one
    await eventually(lambda: bool(calls))
    return lost


async def test_a_job_whose_read_reply_was_lost_is_run(redis_server: RedisServer) -> None:
    settings = cluster_settings(redis_server)
    metrics = Metrics()
    worker = new_worker(settings, metrics)
    await worker.start()
    try:
        async with api_node(settings) as node:
            await eventually(node.ready)
            training, queries = restaurant(3), np.zeros((1, 2))
            want = expected(training, queries)
            assert await node.submit(knn_job(training, queries, 10.0)) == want  # fitted
            lost = await _lose_the_next_read_with_jobs(worker)
            assert await node.submit(knn_job(training, queries, DEADLINE_S)) == want
            assert lost == [1]
            assert _reclaimed(metrics) == 1
            assert await node.submit(knn_job(training, queries, DEADLINE_S)) == want
    finally:
        await worker.close()


async def test_a_job_whose_answer_could_not_be_sent_is_run_again(
    redis_server: RedisServer,
) -> None:
    settings = cluster_settings(redis_server)
    metrics = Metrics()
    worker = new_worker(settings, metrics)
    await worker.start()
    broker, dropped = worker._broker, []
    send = broker.send

    def send_but_drop_the_first_answer(commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        if not dropped and any(command.startswith(b"*3\r\n$7\r\nPUBLISH") for command in commands):
            dropped.append(len(commands))
            failed: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            failed.set_exception(RedisConnectionError("Connection closed by server."))
            return failed
        return send(commands)

    try:
        async with api_node(settings) as node:
            await eventually(node.ready)
            training, queries = restaurant(3), np.zeros((1, 2))
            want = expected(training, queries)
            broker.send = send_but_drop_the_first_answer  # type: ignore[method-assign]
            assert await node.submit(knn_job(training, queries, DEADLINE_S)) == want
            assert dropped and _reclaimed(metrics) == 1
            keys = Keys(settings.broker_prefix, settings.broker_partitions)
            stream = keys.jobs("knn", keys.partition(knn_job(training, queries).key))
            async with redis_client(redis_server) as redis:
                # Answered the second time round, and acknowledged: nothing left pending.
                await eventually(lambda: _pending(redis, stream))
    finally:
        await worker.close()


async def _pending(redis: Redis, stream: str) -> bool:
    summary = await redis.xpending(stream, GROUP)
    return summary["pending"] == 0


async def test_a_worker_restarted_under_its_name_runs_what_its_last_life_was_given(
    redis_server: RedisServer,
) -> None:
    # "ghost" took a job and died before answering it; a worker started under the same name,
    # as a deployment with fixed worker names restarts one, finds it pending for itself.
    settings = cluster_settings(redis_server)
    training, queries = restaurant(3), np.zeros((1, 2))
    metrics = Metrics()
    worker = new_worker(settings, metrics, name="ghost")
    async with redis_client(redis_server) as redis:
        await _register_ghost(settings, redis)
        async with api_node(settings) as node:
            submitted, _ = await _ghost_takes(settings, redis, node, training)
            await worker.start()
            try:
                assert await submitted == expected(training, queries)
                assert _reclaimed(metrics) == 1
            finally:
                await worker.close()


async def test_jobs_the_worker_holds_are_not_taken_back_twice(redis_server: RedisServer) -> None:
    # A recovery while jobs run must leave them alone: only what the worker does not hold
    # counts as lost. Slow calls keep a few running while the recovery looks.
    settings = cluster_settings(redis_server, knn_infer_base_cost_s=0.5)
    metrics = Metrics()
    worker = new_worker(settings, metrics)
    await worker.start()
    try:
        async with api_node(settings) as node:
            await eventually(node.ready)
            training, queries = restaurant(3), np.zeros((1, 2))
            want = expected(training, queries)
            running = [
                asyncio.create_task(node.submit(knn_job(training, queries, 10.0))) for _ in range(3)
            ]
            await eventually(lambda: bool(worker._held))
            worker._claims.lose()
            await eventually(lambda: not worker._claims.lost_some)  # the read loop looked
            assert [await task for task in running] == [want] * 3
            assert _reclaimed(metrics) == 0
    finally:
        await worker.close()


async def test_without_recovery_a_lost_read_ends_in_504(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The case the recovery is for, shown without it: the request waits out its deadline.
    settings = cluster_settings(redis_server)
    worker = new_worker(settings)
    await worker.start()
    try:
        async with api_node(settings) as node:
            await eventually(node.ready)
            training, queries = restaurant(3), np.zeros((1, 2))
            await node.submit(knn_job(training, queries, 10.0))
            monkeypatch.setattr(worker._claims, "lose", lambda: None)
            await _lose_the_next_read_with_jobs(worker)
            with pytest.raises(DeadlineExceeded):
                await node.submit(knn_job(training, queries, 1.5))
    finally:
        await worker.close()
