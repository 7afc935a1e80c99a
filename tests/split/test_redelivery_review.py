"""Review of a worker taking back its own lost deliveries (``Claims.recover``): the edges.

A job is run again only when it was lost, never while another worker has just claimed it; a
job buried as a dead letter is buried once; a worker takes back what its last life was given
in every partition it comes to own, not only in those it owned at its first look; the look
pages through more pending jobs than one page; a Redis that lost the groups is rejoined.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis

from sluiceway.errors import ModelUnavailable
from sluiceway.kinds import build_kinds
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.claims import _PAGE
from sluiceway.split.command import select_kinds
from sluiceway.split.keys import GROUP, Keys, owner
from sluiceway.split.wire import WorkerRecord
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


def _reclaimed(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("sluiceway_reclaimed_jobs_total") or 0.0


def _slow_answers(worker: Worker, delay_s: float) -> None:
    """Redis answers the worker's answer pipelines ``delay_s`` late (a busy Redis, a slow
    link): they are in flight meanwhile, their jobs still pending."""
    send, tasks = worker._broker.send, set()

    def slow_send(commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        result: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        async def later() -> None:
            await asyncio.sleep(delay_s)
            try:
                result.set_result(await send(commands))
            except Exception as error:  # handed to the caller as is
                result.set_exception(error)

        task = asyncio.create_task(later())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return result

    worker._broker.send = slow_send  # type: ignore[method-assign]


async def test_a_job_buried_by_a_claim_is_not_buried_again_by_a_recovery(
    redis_server: RedisServer,
) -> None:
    # A dead worker's job delivered too often is claimed and buried at the new worker's first
    # beat; its dead letter and acknowledgement are still on their way when the read loop
    # makes its first recovery (a worker starts with one). The buried job is pending for the
    # new worker and not held: the recovery claimed it again and buried it a second time.
    settings = cluster_settings(redis_server, broker_max_deliveries=1)
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    training = restaurant(3)
    async with redis_client(redis_server) as redis:
        await _register_ghost(settings, redis)
        async with api_node(settings) as api:
            submitted, _ = await _ghost_takes(settings, redis, api, training)
            await redis.hdel(keys.workers, "ghost")  # the ghost died holding the job
            metrics = Metrics()
            worker = new_worker(settings, metrics)
            _slow_answers(worker, 0.3)
            await worker.start()
            try:
                with pytest.raises(ModelUnavailable, match="delivered 1 times"):
                    await submitted
                await eventually(lambda: not worker._claims.lost_some)
                await asyncio.sleep(0.5)  # every answer pipeline settled
                assert await redis.xlen(keys.dead_letters("knn")) == 1
                buried = metrics.registry.get_sample_value(
                    "sluiceway_dead_letters_total", {"model": "knn"}
                )
                assert buried == 1
                assert _reclaimed(metrics) == 1
                assert not worker._held
            finally:
                await worker.close()


async def _deliver(redis: Redis, stream: str, consumer: str, count: int) -> list[bytes]:
    """Add ``count`` entries to ``stream`` and deliver them to ``consumer``, whose read never
    saw them (its reply was lost)."""
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    async with redis.pipeline(transaction=False) as pipe:
        for index in range(count):
            pipe.xadd(stream, {"j": b"not a job %d" % index})
        await pipe.execute()
    read = await redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
    [(_, entries)] = read
    return [entry_id for entry_id, _ in entries]


async def test_a_recovery_does_not_take_a_job_another_worker_has_just_claimed(
    redis_server: RedisServer,
) -> None:
    # A job lost by this worker long enough ago for the partition's owner to count it stuck:
    # the owner claims it between the recovery's XPENDING and its XCLAIM. A claim with no
    # minimum idle time took it from the owner, and both ran it.
    settings = cluster_settings(redis_server)
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    stream = keys.jobs("knn", 0)
    worker = new_worker(settings, name="helper")
    taken: list[bytes] = []
    async with redis_client(redis_server) as redis:
        [entry_id] = await _deliver(redis, stream, "helper", 1)
        # Lost a minute ago: past the visibility timeout, the owner claims it as stuck.
        await redis.xclaim(stream, GROUP, "helper", 0, [entry_id], idle=60_000)
        claims_redis = worker._broker.redis
        pending = claims_redis.xpending_range

        async def owner_claims_meanwhile(*args: Any, **kwargs: Any) -> Any:
            rows = await pending(*args, **kwargs)
            if rows:
                await redis.xclaim(stream, GROUP, "owner", 30_000, [entry_id])
            return rows

        claims_redis.xpending_range = owner_claims_meanwhile  # type: ignore[method-assign]
        try:
            took = await worker._claims.recover(
                [stream], set(), lambda s, entry, fields: taken.append(entry)
            )
            assert (took, taken) == (0, [])
            [row] = await redis.xpending_range(stream, GROUP, "-", "+", 10)
            assert row["consumer"] == b"owner"
        finally:
            await worker._broker.close()


async def test_a_recovery_pages_through_more_pending_jobs_than_a_page(
    redis_server: RedisServer,
) -> None:
    # More jobs pending than one XPENDING page, every other one still held: each lost one is
    # taken back once, none held is, and none is skipped at a page's edge.
    settings = cluster_settings(redis_server)
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    stream = keys.jobs("knn", 0)
    worker = new_worker(settings, name="pager")
    taken: list[bytes] = []
    async with redis_client(redis_server) as redis:
        ids = await _deliver(redis, stream, "pager", 2 * _PAGE + 50)
        held = {(stream, entry_id) for entry_id in ids[::2]}
        try:
            took = await worker._claims.recover(
                [stream], held, lambda s, entry, fields: taken.append(entry)
            )
        finally:
            await worker._broker.close()
    assert took == len(taken)
    assert taken == ids[1::2]


async def test_a_worker_restarted_under_its_name_takes_back_what_it_was_given_in_every_partition(
    redis_server: RedisServer,
) -> None:
    # "ghost" served knn beside another worker and took a job, then restarted under its name
    # serving knn and birds. Nobody else serves birds, so it reads birds' partitions at once,
    # and its knn ones after the hand-over delay. Its first recovery looked at birds' only and
    # cleared the flag: the knn job stayed pending for it, in a partition it owns, which no
    # other worker claims from a live one it does not own, and the request ended in 504.
    settings = cluster_settings(redis_server)
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    seed = next(
        seed
        for seed in range(100)
        if owner("knn", keys.partition(knn_job(restaurant(seed), np.zeros((1, 2))).key),
                 ["ghost", "other"]) == "ghost"
    )  # fmt: skip
    training = restaurant(seed)
    kinds = select_kinds(build_kinds(settings), "knn,birds")
    metrics = Metrics()
    worker = Worker(settings, kinds, metrics, worker_id="ghost")
    async with redis_client(redis_server) as redis:
        await _register_ghost(settings, redis)
        other = WorkerRecord(("knn",), time.time() + 60).encode()
        await redis.hset(keys.workers, "other", other)  # alive, and never claims from ghost
        async with api_node(settings) as node:
            submitted, _ = await _ghost_takes(settings, redis, node, training)
            await worker.start()
            try:
                assert await submitted == expected(training, np.zeros((1, 2)))
                assert _reclaimed(metrics) == 1
            finally:
                await worker.close()


async def test_a_worker_whose_redis_lost_the_groups_recovers_and_serves_again(
    redis_server: RedisServer,
) -> None:
    # Redis restarted empty (FLUSHALL here): the recovery's XPENDING answers NOGROUP. The
    # worker rejoins the groups and serves again, without a recovery hammering Redis.
    settings = cluster_settings(redis_server)
    worker = new_worker(settings)
    await worker.start()
    looks: list[float] = []
    recover = worker._claims.recover

    async def counted(*args: Any) -> int:
        looks.append(time.monotonic())
        return await recover(*args)

    worker._claims.recover = counted  # type: ignore[method-assign]
    try:
        async with api_node(settings) as node, redis_client(redis_server) as redis:
            await eventually(node.ready)
            training, queries = restaurant(3), np.zeros((1, 2))
            want = expected(training, queries)
            assert await node.submit(knn_job(training, queries, 10.0)) == want
            await redis.flushall()
            worker._claims.lose()
            await eventually(lambda: not worker._claims.lost_some)
            assert await node.submit(knn_job(training, queries, 10.0)) == want
            assert len(looks) < 20, "the recovery hammered Redis"
            await eventually(lambda: not worker._held)  # its answer's acknowledgement settled
    finally:
        await worker.close()


async def test_every_job_taken_leaves_the_held_set(redis_server: RedisServer) -> None:
    # Answered, dead-lettered as undecodable, failed by the model, expired in the stream: each
    # leaves what the worker holds once its acknowledgement is sent, or the set grows forever
    # and a recovery would never take those jobs back.
    settings = cluster_settings(redis_server)
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    worker = new_worker(settings)
    await worker.start()
    try:
        async with api_node(settings) as node, redis_client(redis_server) as redis:
            await eventually(node.ready)
            training, queries = restaurant(3), np.zeros((1, 2))
            assert await node.submit(knn_job(training, queries, 10.0)) == expected(
                training, queries
            )
            with pytest.raises(Exception):  # noqa: B017  (whatever the model says of it)
                await node.submit(knn_job(training, np.zeros((1, 5)), 10.0))
            await redis.xadd(keys.jobs("knn", 0), {"j": b"not a job"})
            await eventually(lambda: redis.xlen(keys.dead_letters("knn")))
            await eventually(lambda: not worker._held)
    finally:
        await worker.close()
