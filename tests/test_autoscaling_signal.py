"""What KEDA would read, read from a real split-mode cluster: the streams the ScaledObject of
deploy/keda/ names hold exactly the jobs admitted and not yet answered, and nothing once all
are answered. (test_deploy.py checks the manifest's form; this checks its meaning.)"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from redis.asyncio import Redis

from sluiceway.app import create_app
from sluiceway.config import Settings
from tests.conftest import app_client, fast_settings
from tests.fixtures.kiosk import restaurant
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer, free_port

SCALED_OBJECT = Path(__file__).resolve().parents[1] / "deploy" / "keda" / "worker-scaledobject.yaml"
RESTAURANTS = 6
QUERIES_EACH = 3
FIT_S = 2.0  # long enough that every job is admitted while the first fits are still running


def watched_streams(prefix: str) -> list[str]:
    """The streams the ScaledObject's triggers read, moved into the test's key namespace."""
    default = f"{Settings().broker_prefix}:"
    streams = []
    for trigger in yaml.safe_load(SCALED_OBJECT.read_text())["spec"]["triggers"]:
        stream = trigger["metadata"]["stream"]
        assert stream.startswith(default), stream
        streams.append(prefix + ":" + stream.removeprefix(default))
    return streams


@pytest.fixture
def worker(redis_server: RedisServer) -> Iterator[str]:
    """One ``sluiceway worker`` (the KNN, one slot, slow fits) on a prefix of its own."""
    prefix = f"keda-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    env.update({
        "SLUICEWAY_BROKER_URL": redis_server.url,
        "SLUICEWAY_BROKER_PREFIX": prefix,
        "SLUICEWAY_WORKER_PORT": str(free_port()),
        "SLUICEWAY_WORKER_HEARTBEAT_S": "0.2",
        "SLUICEWAY_KNN_SLOTS": "1",
        "SLUICEWAY_KNN_FIT_COST_S": str(FIT_S),
        "SLUICEWAY_KNN_INFER_BASE_COST_S": "0.01",
        "SLUICEWAY_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    command = [sys.executable, "-m", "sluiceway", "worker", "--models", "knn"]
    process = subprocess.Popen(command, env=env)
    try:
        yield prefix
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def test_the_watched_streams_hold_exactly_the_unanswered_jobs(
    redis_server: RedisServer, worker: str
) -> None:
    settings = fast_settings(
        broker_url=redis_server.url, broker_prefix=worker, worker_heartbeat_s=0.2, api_models="knn"
    )
    streams = watched_streams(worker)
    redis = Redis.from_url(redis_server.url)

    async def streams_hold(jobs: int) -> bool:
        return sum([await redis.xlen(stream) for stream in streams]) == jobs

    try:
        async with app_client(create_app(settings)) as http:

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready, timeout_s=60)  # the worker process has registered
            body = [
                {
                    "training_data": {"training_data": restaurant(seed).tolist()},
                    "query_input": {"query_input": [seed % 10, i]},
                }
                for seed in range(RESTAURANTS)
                for i in range(QUERIES_EACH)
            ]
            requests = [
                asyncio.create_task(
                    http.post("/classify", json=b, headers={"x-request-timeout": "60"})
                )
                for b in body
            ]
            # Every job admitted, none answered yet (one slot, each restaurant's fit 2 s).
            await eventually(lambda: streams_hold(len(body)))
            assert not any(request.done() for request in requests)
            responses: list[httpx.Response] = await asyncio.gather(*requests)
            assert [r.status_code for r in responses] == [200] * len(body)
            # Each answered job is acknowledged and deleted: nothing is left to scale on.
            await eventually(lambda: streams_hold(0))
    finally:
        await redis.aclose()
