"""Stop and restart Redis under light load: no request hangs, failures are fast 503s, and the
service recovers by itself. A Redis that stalls without closing its connections is no better
than one that is gone: requests end by their deadline and the service recovers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import httpx
import pytest

from sluiceway.app import create_app
from sluiceway.config import Settings
from sluiceway.kinds import build_kinds
from sluiceway.logs import RepeatFilter
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.command import select_kinds
from sluiceway.split.worker import Worker
from tests.conftest import app_client, fast_settings
from tests.fixtures.kiosk import restaurant
from tests.redis_server import RedisServer, free_port

TIMEOUT_S = 2.0
BODY = {
    "training_data": {"training_data": restaurant(0).tolist()},
    "query_input": {"query_input": [1, 2]},
}


@pytest.fixture
def redis(own_redis_server: RedisServer) -> RedisServer:
    """A redis-server of this test's own, since the test stops it."""
    return own_redis_server


async def _split_mode(redis: RedisServer, prefix: str) -> tuple[Settings, Worker]:
    """Settings for an API node beside one started KNN worker, with quick heartbeats."""
    settings = fast_settings(
        broker_url=redis.url,
        broker_prefix=f"{prefix}-{uuid.uuid4().hex[:8]}",
        api_models="knn",  # this cluster's only worker serves the kiosk's model alone
        worker_port=None,
        worker_heartbeat_s=0.2,
        worker_dead_after_s=1.0,
        knn_infer_base_cost_s=0.05,
    )
    worker = Worker(settings, select_kinds(build_kinds(settings), "knn"), Metrics())
    await worker.start()
    return settings, worker


async def test_a_redis_outage_fails_fast_and_heals(redis: RedisServer) -> None:
    settings, worker = await _split_mode(redis, "outage")
    outcomes: list[tuple[float, int, float, str | None]] = []  # (sent at, status, took, retry)
    began = time.monotonic()
    stop_at, restart_at, end_at = 1.5, 3.0, 7.0
    readiness: dict[str, int] = {}

    async def kiosk(http: httpx.AsyncClient) -> None:
        while time.monotonic() - began < end_at:
            sent = time.monotonic()
            response = await http.post(
                "/classify", json=BODY, headers={"X-Request-Timeout": str(TIMEOUT_S)}
            )
            took = time.monotonic() - sent
            outcomes.append(
                (sent - began, response.status_code, took, response.headers.get("retry-after"))
            )
            await asyncio.sleep(0.02)

    async def operator(http: httpx.AsyncClient) -> None:
        await asyncio.sleep(stop_at)
        await asyncio.to_thread(redis.stop)
        await asyncio.sleep(0.5)
        readiness["down"] = (await http.get("/readyz")).status_code
        await asyncio.sleep(restart_at - stop_at - 0.5)
        await asyncio.to_thread(redis.start)

    try:
        async with app_client(create_app(settings)) as http:
            await asyncio.wait_for(
                asyncio.gather(operator(http), *(kiosk(http) for _ in range(4))), 20
            )
            readiness["after"] = (await http.get("/readyz")).status_code
    finally:
        await worker.close()

    assert {status for _, status, _, _ in outcomes} <= {200, 503}, outcomes
    assert max(took for _, _, took, _ in outcomes) < TIMEOUT_S + 0.5, "a request hung"
    refused = [o for o in outcomes if o[1] == 503]
    assert refused and all(retry == "1" for *_, retry in refused)
    assert all(stop_at - 0.2 <= sent <= restart_at + 3 for sent, *_ in refused)
    assert all(status == 200 for sent, status, *_ in outcomes if sent < stop_at - 0.2)
    healed = [status for sent, status, *_ in outcomes if sent > end_at - 1.5]
    assert healed and all(status == 200 for status in healed), "did not recover"
    assert readiness == {"down": 503, "after": 200}


async def test_a_stalled_redis_holds_no_request_past_its_deadline(redis: RedisServer) -> None:
    settings, worker = await _split_mode(redis, "stall")
    outcomes: list[tuple[float, int, float]] = []  # (sent at, status, took)
    began = time.monotonic()
    freeze_at, thaw_at, end_at = 1.0, 4.0, 9.0

    in_flight = [0]
    asking = asyncio.Event()  # set while some kiosk's request is in flight

    async def kiosk(http: httpx.AsyncClient) -> None:
        while time.monotonic() - began < end_at:
            sent = time.monotonic()
            in_flight[0] += 1
            asking.set()
            response = await http.post(
                "/classify", json=BODY, headers={"X-Request-Timeout": str(TIMEOUT_S)}
            )
            in_flight[0] -= 1
            if not in_flight[0]:
                asking.clear()
            outcomes.append((sent - began, response.status_code, time.monotonic() - sent))
            await asyncio.sleep(0.02)

    frozen: list[float] = []  # when it really froze and thawed, on the kiosks' clock

    async def operator() -> None:
        await asyncio.sleep(freeze_at)
        await asking.wait()  # the kiosks pause together: freeze while one is asking
        redis.freeze()
        frozen.append(time.monotonic() - began)
        await asyncio.sleep(thaw_at - freeze_at)
        redis.thaw()
        frozen.append(time.monotonic() - began)

    try:
        async with app_client(create_app(settings)) as http:
            await asyncio.wait_for(asyncio.gather(operator(), *(kiosk(http) for _ in range(4))), 30)
    finally:
        redis.thaw()
        await worker.close()

    assert {status for _, status, _ in outcomes} <= {200, 503, 504}, outcomes
    assert max(took for _, _, took in outcomes) < TIMEOUT_S + 0.5, "a request hung"
    froze, thawed = frozen
    assert all(status == 200 for sent, status, _ in outcomes if sent < froze - 0.2)
    # The freeze outlasts a deadline: what was in flight when it began ended in 504 on time
    # (but for one whose answer had already left Redis). A request sent later may be answered
    # after the thaw, within its deadline.
    caught = [status for sent, status, took in outcomes if sent < froze < sent + took]
    assert 504 in caught, caught
    healed = [status for sent, status, _ in outcomes if sent > max(end_at - 1.5, thawed + 1.5)]
    assert healed and all(status == 200 for status in healed), "did not recover"


async def test_after_a_restart_ready_means_a_worker_is_back(redis: RedisServer) -> None:
    # The trial: after Redis came back, /readyz said ready about a second before any
    # worker had re-registered, and requests in that gap got "503 no live worker". The API
    # node checks the registry five times a second here; its worker beats once a second.
    settings, quick = await _split_mode(redis, "ready")
    await quick.close()  # replaced by one that beats once a second
    worker = Worker(
        settings.model_copy(update={"worker_heartbeat_s": 1.0, "worker_dead_after_s": 3.0}),
        select_kinds(build_kinds(settings), "knn"),
        Metrics(),
    )
    await worker.start()
    try:
        async with app_client(create_app(settings)) as http:
            await _until_ready(http)
            await asyncio.to_thread(redis.stop)
            await asyncio.to_thread(redis.start)  # empty: the registry is gone too
            seen: list[tuple[int, int]] = []  # (readyz, the request sent right after it)
            began = time.monotonic()
            while time.monotonic() - began < 6 and not (seen and seen[-1][0] == 200):
                ready = (await http.get("/readyz")).status_code
                answer = await http.post("/classify", json=BODY)
                seen.append((ready, answer.status_code))
                await asyncio.sleep(0.02)
        assert seen[-1][0] == 200, "never ready again"
        assert [s for s in seen if s[0] == 200] == [(200, 200)], seen
        assert seen[0][0] == 503, "ready before any worker was back"
    finally:
        await worker.close()


async def _until_ready(http: httpx.AsyncClient, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await http.get("/readyz")).status_code != 200:
        if time.monotonic() > deadline:
            pytest.fail("the API node never became ready")
        await asyncio.sleep(0.05)


async def test_an_outage_logs_its_503_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every request of an outage fails the same way; one warning says so, not one each.
    settings = fast_settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0", api_models="knn", worker_port=None
    )
    caplog.handler.addFilter(RepeatFilter())  # as logs.configure sets up every process
    async with app_client(create_app(settings)) as http:
        with caplog.at_level(logging.WARNING, logger="sluiceway.api.errors"):
            statuses = [(await http.post("/classify", json=BODY)).status_code for _ in range(200)]
    assert statuses == [503] * 200
    warned = [r for r in caplog.records if r.name == "sluiceway.api.errors"]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "the job broker (Redis) is unreachable" in warned[0].getMessage()
