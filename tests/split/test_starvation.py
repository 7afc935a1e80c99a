"""A starved or stopped process is slow, not gone: Redis is not lost on its account, what it
accepted is answered, and a worker that really died is still found dead in time.

Starvation is simulated deterministically: the test's own loop is blocked (``time.sleep``), or a
worker process is stopped with ``SIGSTOP`` and let go with ``SIGCONT``, for longer than the
stall timeout (``STALLED_S``): on resuming, the timers of the commands in flight are due with
their answers waiting in the sockets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluiceway.config import Settings
from sluiceway.split.connection import STALLED_S, Broker
from sluiceway.split.pauses import loop_clock, within
from sluiceway.split.wire import WorkerRecord, live_workers
from tests.fixtures.kiosk import expected, knn_job, restaurant
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer, free_port
from tests.split.test_worker import api_node, cluster_settings, new_worker

PAUSE_S = STALLED_S + 1.0
"""Longer than the stall timeout: a command in flight when the pause began is due on waking."""


def _stall(seconds: float) -> None:
    time.sleep(seconds)  # the loop runs nothing meanwhile, as in a process starved of CPU


async def test_a_pause_of_the_loop_is_left_out_of_its_running_time() -> None:
    clock = loop_clock()
    await asyncio.sleep(0.15)  # its tick has run
    began = clock.running()
    _stall(1.3)
    assert clock.paused_within(5.0) >= 1.1  # the pause under way, before a tick saw it
    assert clock.running() - began < 0.2
    await asyncio.sleep(0.15)
    assert 1.1 <= clock.paused_within(5.0) < 1.5
    assert clock.paused_within(0.1) <= 0.1
    busy = clock.running()
    await asyncio.sleep(0.3)  # a loop that runs: its time counts
    assert clock.running() - busy >= 0.25


async def test_an_answer_given_during_a_pause_is_taken_and_silence_still_times_out() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def starve() -> None:
        _stall(1.3)  # past the 0.3 s given below; the answer comes after the timer is due
        loop.call_later(0.01, answer.set_result, "late")

    loop.call_later(0.05, starve)
    assert await within(answer, 0.3) == "late"

    never: asyncio.Future[str] = loop.create_future()
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(never, 0.3)
    assert never.cancelled()
    assert time.monotonic() - began < 2.0


def test_a_reader_that_was_paused_does_not_hold_its_pause_against_a_worker() -> None:
    registry = {b"w": WorkerRecord(("knn",), 100.0).encode()}
    assert live_workers(registry, 107.0, 5.0) == {}
    assert "w" in live_workers(registry, 107.0, 5.0, lambda seconds: min(seconds, 6.0))
    # A pause shorter than the surplus leaves a silent worker dead.
    assert live_workers(registry, 107.0, 5.0, lambda seconds: 1.0) == {}


async def test_a_redis_py_timeout_across_a_pause_is_not_a_lost_broker(
    redis_server: RedisServer,
) -> None:
    lost: list[BaseException] = []
    broker = Broker(redis_server.url, on_lost=lost.append)
    await broker.connect()
    try:
        loop_clock()
        await asyncio.sleep(0.15)
        _stall(1.3)
        await asyncio.sleep(0)
        broker.lost(RedisTimeoutError("Timeout reading from 127.0.0.1"))
        assert broker.connected and not lost
        broker.lost(ConnectionError("refused"))  # not a timeout: lost, pause or not
        assert not broker.connected and len(lost) == 1
    finally:
        await broker.close()


async def test_a_node_and_worker_starved_past_the_stall_timeout_answer_what_they_took(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Worker and API node share this loop: blocking it starves both. The job is admitted just
    # before, so Redis hands it to the worker's blocking read during the pause. Before, the
    # read's timeout fired on waking and dropped the reply: the job, delivered to a live
    # worker, was never run and its request ended in 504; the worker logged "lost the job
    # broker".
    settings = cluster_settings(redis_server)
    worker = new_worker(settings)
    await worker.start()
    try:
        async with api_node(settings) as node:
            await eventually(node.ready)
            training, queries = restaurant(3), np.zeros((1, 2))
            want = expected(training, queries)
            assert await node.submit(knn_job(training, queries, 10.0)) == want  # fitted
            answer = asyncio.create_task(node.submit(knn_job(training, queries, PAUSE_S + 6)))
            await asyncio.sleep(0)  # submitted: its admission goes out at the end of this turn
            asyncio.get_running_loop().call_soon(_stall, PAUSE_S)  # and then nothing runs
            assert await answer == want
            assert node.ready() and worker.ready()
    finally:
        await worker.close()
    assert "lost the job broker" not in caplog.text


def _worker_env(server: RedisServer, settings: Settings, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SLUICEWAY_BROKER_URL": server.url,
        "SLUICEWAY_BROKER_PREFIX": settings.broker_prefix,
        "SLUICEWAY_WORKER_PORT": str(port),
        "SLUICEWAY_WORKER_HEARTBEAT_S": str(settings.worker_heartbeat_s),
        "SLUICEWAY_WORKER_DEAD_AFTER_S": str(settings.worker_dead_after_s),
        "SLUICEWAY_KNN_FIT_COST_S": "0.05",
        "SLUICEWAY_KNN_INFER_BASE_COST_S": "0.01",
        "SLUICEWAY_KNN_INFER_PER_QUERY_COST_S": "0.001",
        "SLUICEWAY_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    return env


@pytest.fixture
def worker_process(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[Settings, subprocess.Popen[bytes], Path]]:
    """A ``sluiceway worker`` process (uvloop, as deployed) and its settings and log file.

    Its deadline for silence is longer than the pauses here: a stopped worker cannot beat, and
    only that window, not the broker's stall timeout, may decide when it counts as dead.
    """
    settings = cluster_settings(redis_server, worker_heartbeat_s=0.2, worker_dead_after_s=2.0)
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "sluiceway", "worker", "--models", "knn"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=_worker_env(redis_server, settings, free_port()), stderr=out
        )
    try:
        yield settings, process, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


async def test_a_worker_stopped_past_the_stall_timeout_answers_what_came_meanwhile(
    worker_process: tuple[Settings, subprocess.Popen[bytes], Path],
) -> None:
    settings, process, log = worker_process
    # The node waits longer for the stopped worker's beat than the pause lasts.
    settings = settings.model_copy(update={"worker_dead_after_s": PAUSE_S + 4})
    async with api_node(settings) as node:
        await eventually(node.ready, 30.0)
        training, queries = restaurant(4), np.zeros((1, 2))
        want = expected(training, queries)
        assert await node.submit(knn_job(training, queries, 10.0)) == want  # fitted
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(0.2)
            answer = asyncio.create_task(node.submit(knn_job(training, queries, PAUSE_S + 6)))
            await asyncio.sleep(PAUSE_S)  # the job waits in the stopped worker's socket
        finally:
            process.send_signal(signal.SIGCONT)
        assert await answer == want
        assert await node.submit(knn_job(training, queries, 5.0)) == want
    assert "lost the job broker" not in log.read_text()


async def test_a_killed_worker_is_still_found_dead_within_its_deadline(
    worker_process: tuple[Settings, subprocess.Popen[bytes], Path],
) -> None:
    settings, process, _ = worker_process
    async with api_node(settings) as node:
        await eventually(node.ready, 30.0)
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await eventually(lambda: "knn" not in node.models(), 10.0)
        found = time.monotonic() - killed
    # Silent for SLUICEWAY_WORKER_DEAD_AFTER_S, then seen at the node's next look (one beat);
    # the rest is slack for a loaded machine.
    assert found < settings.worker_dead_after_s + settings.worker_heartbeat_s + 1.5
