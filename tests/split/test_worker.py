"""Model workers over a real redis-server: affinity, takeover, dead letters, expiry, dedupe."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
from redis.asyncio import Redis

from sluiceway.config import Settings
from sluiceway.errors import DeadlineExceeded, ModelUnavailable
from sluiceway.kinds import build_kinds
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.command import select_kinds
from sluiceway.split.dispatcher import RedisDispatcher
from sluiceway.split.keys import GROUP, Keys
from sluiceway.split.wire import CallTiming, JobRecord, ResultRecord, WorkerRecord
from sluiceway.split.worker import Worker
from tests.conftest import fast_settings
from tests.fixtures.kiosk import expected, knn_job, restaurant
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer, free_port


def cluster_settings(server: RedisServer, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "broker_url": server.url,
        "broker_prefix": f"test-{uuid.uuid4().hex[:8]}",
        "worker_port": None,
        "worker_heartbeat_s": 0.1,
        # Deaths here are simulated by deleting the record; a generous limit keeps a stalled
        # machine from declaring a live worker dead (which would move partitions mid-test).
        "worker_dead_after_s": 5.0,
    }
    values.update(overrides)
    return fast_settings(**values)


def new_worker(
    settings: Settings, metrics: Metrics | None = None, name: str | None = None
) -> Worker:
    kinds = select_kinds(build_kinds(settings), "knn")
    return Worker(settings, kinds, metrics or Metrics(), worker_id=name)


@asynccontextmanager
async def api_node(settings: Settings) -> AsyncIterator[RedisDispatcher]:
    dispatcher = RedisDispatcher(settings, Metrics())
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.close()


@asynccontextmanager
async def redis_client(server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def queued(redis: Redis, keys: Keys) -> int:
    """The KNN's admitted and unfinished jobs, by the queue-bound counter."""
    return int(await redis.get(keys.queued("knn")) or 0)


async def test_each_restaurant_is_fitted_once_on_one_worker(redis_server: RedisServer) -> None:
    settings = cluster_settings(redis_server)
    # Fixed names: which worker wins which restaurant is then fixed too (and both win some).
    first, second = new_worker(settings, name="worker-a"), new_worker(settings, name="worker-b")
    await first.start()
    await second.start()
    try:
        await eventually(
            lambda: first.owned and second.owned and len(first.owned) + len(second.owned) == 16
        )
        assert not set(first.owned) & set(second.owned)
        trainings = [restaurant(seed) for seed in range(8)]
        async with api_node(settings) as api:
            jobs = [knn_job(trainings[i % 8], np.zeros((1, 2))) for i in range(160)]
            results = await asyncio.gather(*(api.submit(job) for job in jobs))
        for i, labels in enumerate(results):
            assert labels == expected(trainings[i % 8], np.zeros((1, 2)))
        caches = [first.dispatcher.cache, second.dispatcher.cache]
        assert len(caches[0]) + len(caches[1]) == 8, "a training set was fitted twice"
        assert len(caches[0]) > 0 and len(caches[1]) > 0, "one worker did all the work"
    finally:
        await first.close()
        await second.close()


async def test_a_worker_named_in_its_settings_registers_and_owns_under_that_name(
    redis_server: RedisServer,
) -> None:
    settings = cluster_settings(redis_server, worker_id="kiosk-7")
    worker = new_worker(settings)
    await worker.start()
    try:
        assert worker.id == "kiosk-7"
        keys = Keys(settings.broker_prefix, settings.broker_partitions)
        async with redis_client(redis_server) as redis:
            assert await redis.hexists(keys.workers, "kiosk-7")
        assert len(worker.owned) == settings.broker_partitions  # alone: it owns every one
    finally:
        await worker.close()


async def test_a_departing_workers_partitions_move_to_the_others(
    redis_server: RedisServer,
) -> None:
    settings = cluster_settings(redis_server)
    first, second = new_worker(settings), new_worker(settings)
    await first.start()
    await second.start()
    try:
        await eventually(lambda: first.owned and second.owned)
        await first.close()
        await eventually(lambda: len(second.owned) == 16)
        async with api_node(settings) as api:
            training = restaurant(1)
            assert await api.submit(knn_job(training, np.zeros((1, 2)))) == expected(
                training, np.zeros((1, 2))
            )
    finally:
        await second.close()


async def _ghost_takes(
    settings: Settings, redis: Redis, api: RedisDispatcher, training: np.ndarray
) -> tuple[asyncio.Task[object], JobRecord]:
    """Submit a job and let a fake worker "ghost" take delivery of it (then "die")."""
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    job = knn_job(training, np.zeros((1, 2)), 3.0)
    stream = keys.jobs("knn", keys.partition(job.key))
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    submitted = asyncio.create_task(api.submit(job))
    taken: list[JobRecord] = []

    async def ghost_took_it() -> bool:
        read = await redis.xreadgroup(GROUP, "ghost", {stream: ">"}, count=10)
        if read:
            [(_, [(_, fields)])] = read
            taken.append(JobRecord.decode(fields[b"j"]))
        return bool(taken)

    await eventually(ghost_took_it)
    return submitted, taken[0]


async def _register_ghost(settings: Settings, redis: Redis) -> None:
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    await redis.hset(keys.workers, "ghost", WorkerRecord(("knn",), time.time() + 60).encode())


@pytest.mark.parametrize("max_deliveries", [1, 2])
async def test_a_job_that_crashed_workers_too_often_is_dead_lettered(
    redis_server: RedisServer, max_deliveries: int
) -> None:
    settings = cluster_settings(redis_server, broker_max_deliveries=max_deliveries)
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    training = restaurant(3)
    async with redis_client(redis_server) as redis:
        await _register_ghost(settings, redis)
        async with api_node(settings) as api:
            submitted, _ = await _ghost_takes(settings, redis, api, training)
            await redis.hdel(keys.workers, "ghost")  # the ghost died holding the job
            metrics = Metrics()
            worker = new_worker(settings, metrics)
            await worker.start()
            try:
                if max_deliveries == 1:
                    with pytest.raises(ModelUnavailable, match="delivered 1 times"):
                        await submitted
                    letters = await redis.xrange(keys.dead_letters("knn"))
                    assert len(letters) == 1
                    assert b"without an answer" in letters[0][1][b"error"]
                else:  # one more delivery allowed: the new worker answers it
                    assert await submitted == expected(training, np.zeros((1, 2)))
                    assert await redis.xlen(keys.dead_letters("knn")) == 0
                assert await queued(redis, keys) == 0
                assert metrics.registry.get_sample_value("sluiceway_reclaimed_jobs_total") == 1
                buried = metrics.registry.get_sample_value(
                    "sluiceway_dead_letters_total", {"model": "knn"}
                )
                assert (buried or 0) == (1 if max_deliveries == 1 else 0)
            finally:
                await worker.close()


async def test_a_late_duplicate_result_is_ignored(redis_server: RedisServer) -> None:
    settings = cluster_settings(redis_server)
    async with redis_client(redis_server) as redis:
        await _register_ghost(settings, redis)
        async with api_node(settings) as api:
            submitted, record = await _ghost_takes(settings, redis, api, restaurant(4))
            first, late = (ResultRecord(record.job.id, [n]).encode() for n in (1, 2))
            stranger = ResultRecord("nobody", [9]).encode()
            await redis.publish(record.reply, first)
            await redis.publish(record.reply, late + stranger)  # several results, one message
            assert await submitted == [1]
            # The reply reader outlived the duplicate and the stranger: it answers the next.
            following, record = await _ghost_takes(settings, redis, api, restaurant(6))
            await redis.publish(record.reply, ResultRecord(record.job.id, [0]).encode())
            assert await asyncio.wait_for(following, 2) == [0]


@pytest.mark.parametrize(
    ("timing", "counted"),
    [
        (None, False),  # a worker of the release before sends none
        ((0.0001, 0.0002), True),
        ((0.0002, 0.0001), False),  # a call longer than its own age: not believed
        ((0.25, 60.0), False),  # a call that started before its request was sent: neither
    ],
)
async def test_the_node_counts_an_answer_with_the_timing_it_carries_if_believable(
    redis_server: RedisServer, timing: tuple[float, float] | None, counted: bool
) -> None:
    settings = cluster_settings(redis_server)
    async with redis_client(redis_server) as redis:
        await _register_ghost(settings, redis)
        async with api_node(settings) as api:
            submitted, record = await _ghost_takes(settings, redis, api, restaurant(4))
            answer = ResultRecord(
                record.job.id, [1], timing=CallTiming(*timing) if timing else None
            )
            await redis.publish(record.reply, answer.encode())
            assert await asyncio.wait_for(submitted, 2) == [1]  # answered whatever the timing
            stats = api.statistics.of("knn")
    assert stats.success.count == stats.inference_count == 1
    assert stats.compute.count == stats.queue.count == (1 if counted else 0)
    if counted:
        assert abs(stats.compute.ns - 100_000) <= 1  # the float sum and difference on the node
        assert stats.queue.ns + stats.compute.ns <= stats.success.ns


async def test_an_expired_job_is_dropped_before_compute(redis_server: RedisServer) -> None:
    settings = cluster_settings(redis_server)
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    async with redis_client(redis_server) as redis:
        await _register_ghost(settings, redis)  # accepted by the API, then nobody reads it
        async with api_node(settings) as api:
            with pytest.raises(DeadlineExceeded):
                await api.submit(knn_job(restaurant(5), np.zeros((1, 2)), timeout_s=0.2))
            # The API node counts the request, as Triton counts one past its deadline.
            counted = api.statistics.of("knn")
            assert counted.failures == {"REJECTED": 1} and counted.success.count == 0
            await redis.hdel(keys.workers, "ghost")
            metrics = Metrics()
            worker = new_worker(settings, metrics)
            await worker.start()
            try:
                await eventually(
                    lambda: (
                        metrics.registry.get_sample_value(
                            "sluiceway_expired_total", {"model": "knn"}
                        )
                        == 1
                    )
                )
                assert len(worker.dispatcher.cache) == 0, "an expired job was computed"
                stats = worker.dispatcher.statistics.of("knn")  # counted once, by the node
                assert stats.failures == {} and stats.execution_count == 0

                async def acknowledged() -> bool:  # its entry is acknowledged right after
                    return await redis.xlen(keys.jobs("knn", 0)) + await queued(redis, keys) == 0

                await eventually(acknowledged)
                assert await queued(redis, keys) == 0
                assert sum([await redis.xlen(stream) for stream in keys.all_jobs("knn")]) == 0
            finally:
                await worker.close()


async def test_jobs_still_run_after_redis_forgets_the_scripts(redis_server: RedisServer) -> None:
    """Admission and acknowledgement scripts are called by SHA; after SCRIPT FLUSH (or a Redis
    restart) both ends load them again instead of failing every job."""
    settings = cluster_settings(redis_server)
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    worker = new_worker(settings)
    await worker.start()
    try:
        async with redis_client(redis_server) as redis, api_node(settings) as api:
            training = restaurant(7)
            queries = np.array([[1, 2]])
            assert await api.submit(knn_job(training, queries)) == expected(training, queries)
            await redis.script_flush()
            assert await api.submit(knn_job(training, queries)) == expected(training, queries)

            # The worker's acknowledgement ran too: nothing is left counted or pending.
            async def drained() -> bool:
                return await queued(redis, keys) == 0

            await eventually(drained)
            assert sum([await redis.xlen(stream) for stream in keys.all_jobs("knn")]) == 0
    finally:
        await worker.close()


async def test_an_api_node_is_ready_only_while_a_worker_serves_each_routed_model(
    redis_server: RedisServer,
) -> None:
    # Redis answering is not readiness: the node routes the kiosk and the image models, and
    # is ready while, and only while, live workers serve all of them.
    settings = cluster_settings(redis_server, api_models="knn,imagenet")
    async with redis_client(redis_server) as redis, api_node(settings) as api:
        keys = Keys(settings.broker_prefix, settings.broker_partitions)
        assert not api.ready() and api.missing() == ["imagenet", "knn"]
        kiosk_only = new_worker(settings)
        await kiosk_only.start()
        both = Worker(settings, select_kinds(build_kinds(settings), "knn,imagenet"), Metrics())
        try:
            await eventually(lambda: api.missing() == ["imagenet"])
            assert not api.ready()
            await both.start()
            await eventually(api.ready)
            await both.close()
            assert both.id.encode() not in await redis.hgetall(keys.workers), "deregistered"
            await eventually(lambda: not api.ready())
            assert api.missing() == ["imagenet"]
        finally:
            await both.close()
            await kiosk_only.close()


async def test_a_worker_that_cannot_start_leaves_no_registry_entry(
    redis_server: RedisServer,
) -> None:
    # The probe port is bound before the worker registers: a worker whose probes cannot
    # start (here: an address this host does not have) fails without a stale entry.
    settings = cluster_settings(redis_server, worker_port=0, host="203.0.113.9")
    worker = new_worker(settings)
    with pytest.raises(OSError):
        await worker.start()
    async with redis_client(redis_server) as redis:
        keys = Keys(settings.broker_prefix, settings.broker_partitions)
        assert await redis.hgetall(keys.workers) == {}


async def test_workers_on_one_host_each_find_a_probe_port(redis_server: RedisServer) -> None:
    port = free_port()
    settings = cluster_settings(redis_server, worker_port=port)
    workers = [new_worker(settings) for _ in range(3)]
    try:
        for worker in workers:
            await worker.start()
        ports = [worker.health_port for worker in workers]
        assert ports[0] == port and len(set(ports)) == 3, ports
        async with httpx.AsyncClient() as http:
            for probe_port in ports:
                answer = await http.get(f"http://127.0.0.1:{probe_port}/healthz")
                assert answer.status_code == 200
    finally:
        for worker in workers:
            await worker.close()


async def test_requests_are_counted_by_the_api_node_and_calls_by_the_worker(
    redis_server: RedisServer,
) -> None:
    """Triton's metrics in split mode: each is written by one kind of process, so a sum over
    every scraped process counts each request and each call once."""
    settings = cluster_settings(redis_server, worker_port=0)
    worker = new_worker(settings)
    await worker.start()
    try:
        await eventually(lambda: len(worker.owned) == 16)
        training = restaurant(5)
        queries = [np.full((1, 2), float(i)) for i in range(3)]
        async with api_node(settings) as api:
            results = await asyncio.gather(*(api.submit(knn_job(training, q)) for q in queries))
            counted = api.statistics.of("knn")
        assert results == [expected(training, q) for q in queries]
        # The node: three successes, each with its queue and compute time from the answer.
        assert counted.success.count == counted.inference_count == 3 and not counted.failures
        assert counted.queue.count == counted.compute.count == 3
        assert 0 < counted.compute.ns <= counted.success.ns
        assert counted.queue.ns + counted.compute.ns <= counted.success.ns
        assert counted.execution_count == 0  # the node makes no model call
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{worker.health_port}/metrics")).text
        # The worker: its calls (one to three, as the jobs met), and no requests.
        calls = worker.dispatcher.statistics.of("knn").execution_count
        assert 1 <= calls <= 3
        assert f'nv_inference_exec_count{{model="knn",version="1"}} {calls}\n' in text
        assert 'nv_inference_pending_request_count{model="knn",version="1"} 0\n' in text
        assert "nv_inference_request_success" not in text and "nv_inference_count" not in text
    finally:
        await worker.close()
