"""``kill -9`` a model worker under load: every request is still answered, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from redis.asyncio import Redis

from sluiceway.app import create_app
from sluiceway.split.keys import GROUP, Keys
from tests.conftest import app_client, fast_settings
from tests.fixtures.kiosk import expected, restaurant
from tests.redis_server import RedisServer, free_port

REQUESTS = 400
CONCURRENCY = 40


def _worker_env(server: RedisServer, prefix: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SLUICEWAY_BROKER_URL": server.url,
        "SLUICEWAY_BROKER_PREFIX": prefix,
        "SLUICEWAY_WORKER_PORT": str(port),
        "SLUICEWAY_WORKER_HEARTBEAT_S": "0.2",
        "SLUICEWAY_WORKER_DEAD_AFTER_S": "1.0",
        "SLUICEWAY_KNN_FIT_COST_S": "0.05",
        "SLUICEWAY_KNN_INFER_BASE_COST_S": "0.1",
        "SLUICEWAY_KNN_INFER_PER_QUERY_COST_S": "0.001",
        "SLUICEWAY_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    return env


@pytest.fixture
def workers(redis_server: RedisServer) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """Two ``sluiceway worker`` processes on one prefix, ready (by their /readyz)."""
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    ports = [free_port(), free_port()]
    command = [sys.executable, "-m", "sluiceway", "worker", "--models", "knn"]
    processes = [
        subprocess.Popen(command, env=_worker_env(redis_server, prefix, port)) for port in ports
    ]
    try:
        for port in ports:
            _wait_ready(port)
        yield prefix, processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _wait_ready(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"worker on port {port} not ready after {timeout_s} s")


async def test_killing_a_worker_mid_batch_loses_no_request(
    redis_server: RedisServer, workers: tuple[str, list[subprocess.Popen[bytes]]]
) -> None:
    prefix, processes = workers
    settings = fast_settings(
        broker_url=redis_server.url, broker_prefix=prefix, worker_heartbeat_s=0.2
    )
    trainings = [restaurant(seed) for seed in range(5)]
    rng = np.random.default_rng(0)
    queries = [rng.integers(-10, 10, size=2).tolist() for _ in range(REQUESTS)]
    answers: dict[int, tuple[int, object]] = {}
    done = asyncio.Event()

    async def kiosk(http: httpx.AsyncClient, indices: list[int]) -> None:
        for i in indices:
            body = {
                "training_data": {"training_data": trainings[i % 5].tolist()},
                "query_input": {"query_input": queries[i]},
            }
            response = await http.post("/classify", json=body, headers={"X-Request-Timeout": "15"})
            assert i not in answers, f"request {i} answered twice"
            answers[i] = (response.status_code, response.json())
            if len(answers) == REQUESTS // 4:
                done.set()

    async def killer() -> None:
        await done.wait()
        processes[0].send_signal(signal.SIGKILL)  # mid-batch: 40 requests are in flight

    async with app_client(create_app(settings)) as http:
        await _wait_api_ready(http)
        began = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(
                killer(),
                *(kiosk(http, list(range(c, REQUESTS, CONCURRENCY))) for c in range(CONCURRENCY)),
            ),
            timeout=60,
        )
        elapsed = time.monotonic() - began

    assert processes[0].wait(5) == -signal.SIGKILL
    assert len(answers) == REQUESTS
    failed = {i: a for i, a in answers.items() if a[0] != 200}
    assert not failed, f"{len(failed)} requests failed, e.g. {list(failed.items())[:3]}"
    for i, (_, body) in answers.items():
        want = expected(trainings[i % 5], np.array([queries[i]], dtype=np.float64))
        assert body == {"classification_result": want}
    assert elapsed < 30
    await _assert_nothing_left(redis_server, prefix, settings.broker_partitions)


async def _wait_api_ready(http: httpx.AsyncClient, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await http.get("/readyz")).json().get("models") != ["knn"]:
        if time.monotonic() > deadline:
            pytest.fail("the API node never saw a worker serving knn")
        await asyncio.sleep(0.1)


async def _assert_nothing_left(server: RedisServer, prefix: str, partitions: int) -> None:
    """No job is queued, pending or counted once every request has its answer."""
    keys = Keys(prefix, partitions)
    redis = Redis.from_url(server.url)
    try:
        for _ in range(100):
            pending = 0
            for stream in keys.all_jobs("knn"):
                pending += (await redis.xpending(stream, GROUP))["pending"]
            counted = int(await redis.get(keys.queued("knn")) or 0)
            if pending == 0 and counted == 0:
                break
            await asyncio.sleep(0.05)
        assert (pending, counted) == (0, 0)
        assert await redis.xlen(keys.dead_letters("knn")) == 0
    finally:
        await redis.aclose()
