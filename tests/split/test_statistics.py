"""Triton's statistics and metrics in split mode: an API node, a worker, real Redis.

The API node sees each request whole, so it counts them (with the times of the model call
each answer carries); the worker counts the model calls it makes. Each Triton metric is then
written by one kind of process, as a sum over every scraped process needs. The statistics
extension of an API node adds the model calls of the live workers, which they publish with
each heartbeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from sluiceway.app import create_app
from sluiceway.config import Settings
from sluiceway.kinds import served_kinds
from sluiceway.models.tensors import shape_key
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.keys import Keys, owner
from sluiceway.split.worker import Worker
from tests.conftest import app_client
from tests.fixtures.model_repository import split_linear
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer


def samples(text: str) -> dict[str, float]:
    """Triton's samples of the linear model by name (and failure reason), and its compute
    histogram's count, as Prometheus reads the exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # a counter's samples are read back with ``_total``
            if sample.labels.get("model") != "linear":
                continue
            if family.name.startswith("nv_inference"):
                reason = sample.labels.get("reason")
                found[family.name + (f":{reason}" if reason else "")] = sample.value
            elif sample.name == "sluiceway_compute_duration_seconds_count":
                found[sample.name] = sample.value
    return found


@asynccontextmanager
async def node_and_worker(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Worker]]:
    """An API node (its HTTP client) and one started worker, once the node is ready."""
    worker = Worker(settings, served_kinds(settings), Metrics())
    await worker.start()
    try:
        async with app_client(create_app(settings)) as api:

            async def ready() -> bool:
                return (await api.get("/v2/models/linear/ready")).status_code == 200

            await eventually(ready)
            yield api, worker
    finally:
        await worker.close()


async def test_the_api_node_counts_requests_and_the_worker_its_model_calls(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings, weights = split_linear(
        redis_server.url, tmp_path / "models", f"stats-{tmp_path.name}", worker_port=0
    )
    async with node_and_worker(settings) as (api, worker):
        rng = np.random.default_rng(7)
        for rows in (4, 1, 1):  # one request of four rows, two of one
            x = rng.normal(size=(rows, 4)).astype(np.float32)
            body = {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [rows, 4],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
            answer = await api.post("/v2/models/linear/infer", json=body)
            assert answer.status_code == 200, answer.text
            got = np.array(answer.json()["outputs"][0]["data"]).reshape(rows, -1)
            assert np.allclose(got, x @ weights[:4] + weights[4], atol=1e-4)
        late = {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "parameters": {"timeout": 1},
        }
        assert (await api.post("/v2/models/linear/infer", json=late)).status_code == 504

        (stats,) = (await api.get("/v2/models/linear/stats")).json()["model_stats"]
        node = samples((await api.get("/metrics")).text)
        async with httpx.AsyncClient() as http:
            probe = samples((await http.get(f"http://127.0.0.1:{worker.health_port}/metrics")).text)

    # The node: three requests of six rows, each with its queue and compute time; one late.
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 3 and stats["inference_count"] == 6
    assert inference["queue"]["count"] == inference["compute_infer"]["count"] == 3
    assert inference["compute_infer"]["ns"] > 0
    assert inference["queue"]["ns"] + inference["compute_infer"]["ns"] <= inference["success"]["ns"]
    assert inference["fail"]["count"] == 1
    # Its calls are the worker's as of its last heartbeat (summed: the test below).
    assert stats["execution_count"] <= worker.dispatcher.statistics.of("linear").execution_count
    assert stats["last_inference"] > 0
    assert node["nv_inference_request_success"] == 3 and node["nv_inference_count"] == 6
    assert node["nv_inference_request_failure:REJECTED"] == 1
    assert node["nv_inference_compute_infer_duration_us"] > 0
    assert "nv_inference_exec_count" not in node
    assert "nv_inference_pending_request_count" not in node
    assert node["sluiceway_compute_duration_seconds_count"] == 3  # per request, as embedded
    # The worker: its model calls (the four rows may have met in one), and no requests.
    calls = worker.dispatcher.statistics.of("linear").execution_count
    assert 3 <= probe["nv_inference_exec_count"] == calls <= 6
    assert probe["nv_inference_pending_request_count"] == 0
    assert "nv_inference_request_success" not in probe and "nv_inference_count" not in probe
    assert probe.get("sluiceway_compute_duration_seconds_count", 0) == 0  # the node's


Calls = tuple[int, dict[int, tuple[int, int]]]
"""An execution count and, by batch size, the calls and their compute nanoseconds."""


def answered(stats: dict[str, Any]) -> Calls:
    """The model calls a statistics answer gives."""
    batches = {
        entry["batch_size"]: (entry["compute_infer"]["count"], entry["compute_infer"]["ns"])
        for entry in stats["batch_stats"]
    }
    return stats["execution_count"], batches


def counted(*workers: Worker) -> Calls:
    """The model calls of ``linear`` the workers counted themselves, summed."""
    count, batches = 0, {}
    for worker in workers:
        stats = worker.dispatcher.statistics.of("linear")
        count += stats.execution_count
        for size, calls in stats.batches.items():
            before = batches.get(size, (0, 0))
            batches[size] = (before[0] + calls.count, before[1] + calls.ns)
    return count, batches


async def infer(api: httpx.AsyncClient, *requests: int) -> None:
    """One request to ``linear`` of each number of rows, one after the other."""
    for rows in requests:
        tensor = {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * rows * 4}
        answer = await api.post("/v2/models/linear/infer", json={"inputs": [tensor]})
        assert answer.status_code == 200, answer.text


async def node_calls(api: httpx.AsyncClient) -> Calls:
    """The model calls of ``linear`` the API node answers."""
    answer = await api.get("/v2/models/linear/stats")
    assert answer.status_code == 200, answer.text
    (stats,) = answer.json()["model_stats"]
    return answered(stats)


async def test_the_api_node_answers_the_model_calls_of_its_live_workers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """What perf_analyzer reads to report batching: the node makes no call, its workers do."""
    settings, _ = split_linear(redis_server.url, tmp_path / "models", f"calls-{tmp_path.name}")
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    partition = keys.partition(shape_key({"x": np.zeros((1, 4), np.float32)}))
    stream = keys.jobs("linear", partition)
    # Every request here has one batching key: the second worker is named to win its
    # partition from the first, so that each makes some of the calls.
    names = (f"second-{i}" for i in range(1000))
    second_name = next(n for n in names if owner("linear", partition, ["first", n]) == n)
    first = Worker(settings, served_kinds(settings), Metrics(), worker_id="first")
    second = Worker(settings, served_kinds(settings), Metrics(), worker_id=second_name)
    await first.start()
    app = create_app(settings)
    try:
        async with app_client(app) as api:

            async def ready() -> bool:
                return (await api.get("/v2/models/linear/ready")).status_code == 200

            await eventually(ready)
            await infer(api, 4, 1, 1)
            await second.start()
            await eventually(lambda: stream in second.owned and stream not in first.owned)
            await infer(api, 2, 1, 3)
            assert counted(first)[0] > 0 and counted(second)[0] > 0

            async def summed() -> bool:  # once both have beaten since their last call
                return await node_calls(api) == counted(first, second)

            await eventually(summed)
            # The node's own counters are left as they were: the sum is made for each answer.
            assert app.state.services.dispatcher.statistics.of("linear").execution_count == 0

            await first.close()  # a worker that leaves takes its calls out of the sum

            async def second_only() -> bool:
                return await node_calls(api) == counted(second)

            await eventually(second_only)
            every = (await api.get("/v2/models/stats")).json()["model_stats"]
            (linear,) = [stats for stats in every if stats["name"] == "linear"]
            assert answered(linear) == counted(second)
    finally:
        await second.close()
        await first.close()


async def test_a_burst_of_statistics_requests_shares_one_read_and_leaves_inference_alone(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Each request taking a Redis connection of its own emptied the pool the node's watch
    loop needs; the node then took Redis for lost and answered every inference 503."""
    settings, _ = split_linear(redis_server.url, tmp_path / "models", f"burst-{tmp_path.name}")
    async with node_and_worker(settings) as (api, worker):
        await infer(api, 4, 1, 1)

        async def summed() -> bool:
            return await node_calls(api) == counted(worker)

        async with Redis.from_url(redis_server.url) as redis:
            for _ in range(3):
                await eventually(summed)
                await asyncio.sleep(settings.worker_heartbeat_s)  # past the sum kept a beat
                before = await hash_reads(redis)
                answers = await asyncio.gather(
                    *(api.get("/v2/models/linear/stats") for _ in range(200))
                )
                reads = await hash_reads(redis) - before
                stats = [answer.json()["model_stats"][0] for answer in answers]
                assert all(answered(each) == counted(worker) for each in stats)
                # One read of two hashes for the burst; a worker's beat may read two more.
                assert reads <= 10, reads
                await infer(api, 1)  # and inference is still answered


async def hash_reads(redis: Redis) -> int:
    """The ``HGETALL`` commands the Redis server has run so far."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


@pytest.fixture
def redis(own_redis_server: RedisServer) -> RedisServer:
    """A redis-server of this test's own, since the test stalls and stops it."""
    return own_redis_server


async def test_statistics_keep_the_last_calls_read_when_redis_stalls_or_is_down(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Never an error nor a long wait; and not a count fallen back to 0, which would make the
    difference of two snapshots (what perf_analyzer reports) nonsense."""
    settings, _ = split_linear(redis.url, tmp_path / "models", "outage")
    async with node_and_worker(settings) as (api, worker):
        await infer(api, 4, 1, 1)

        async def summed() -> bool:
            return await node_calls(api) == counted(worker)

        await eventually(summed)

        async def last_read() -> None:
            # Within the node's bound on the wait, well short of redis-py's 5 s timeout.
            answer = await asyncio.wait_for(api.get("/v2/models/linear/stats"), 3.0)
            assert answer.status_code == 200, answer.text
            (stats,) = answer.json()["model_stats"]
            assert answered(stats) == counted(worker)
            assert stats["inference_stats"]["success"]["count"] == 3

        redis.freeze()  # stalled: no answer, the connection open
        await asyncio.sleep(settings.worker_heartbeat_s)  # past the sum kept for a beat
        await last_read()
        redis.thaw()
        await asyncio.to_thread(redis.stop)  # down
        await asyncio.sleep(settings.worker_heartbeat_s)
        await last_read()
