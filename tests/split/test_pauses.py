"""``split/pauses.py`` at its edges: what stays in step after a timeout across a pause, and
what is not excused (a slow loop is not a paused one; a real stall is a loss; every excuse is
bounded). Stalls here are ``time.sleep`` on the loop's thread: the loop runs nothing meanwhile,
as in a stopped process."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid

import pytest
import uvloop
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluiceway.split import pauses
from sluiceway.split.connection import Broker, connect
from sluiceway.split.line import RedisLine, pack
from sluiceway.split.pauses import loop_clock, within
from sluiceway.split.wire import WorkerRecord, live_workers
from tests.redis_server import RedisServer
from tests.split.test_starvation import _stall


def _key() -> str:
    return f"review-{uuid.uuid4().hex[:8]}"


async def test_a_line_read_given_up_on_by_within_leaves_the_next_reply_in_step(
    redis_server: RedisServer,
) -> None:
    line = await RedisLine.open(redis_server.url)
    try:
        # Given up on: the future is cancelled, its pending slot stays and eats the late nil.
        with pytest.raises(TimeoutError):
            await within(line.send(pack("BLPOP", _key(), "0.4"), 1), 0.1)
        assert await line.call("ECHO", "mine") == b"mine"
        # Extended across a pause, then answered: the answer is its own, the next is too.
        loop = asyncio.get_running_loop()
        read = asyncio.ensure_future(within(line.send(pack("BLPOP", _key(), "0.3"), 1), 0.2))
        loop.call_later(0.05, _stall, 1.5)  # the reply (nil at 0.3 s) comes during the pause
        assert await read == [None]
        assert await line.call("ECHO", "next") == b"next"
    finally:
        line.close()


async def test_a_redis_py_timeout_ignored_across_a_pause_leaves_both_clients_in_step(
    redis_server: RedisServer,
) -> None:
    broker = Broker(redis_server.url)
    await broker.connect()
    # A client whose socket timeout (0.3 s) falls due during the pause below.
    await broker.redis.aclose()
    broker._redis = connect(redis_server.url, timeout_s=0.3)
    try:
        loop_clock()
        await asyncio.sleep(0.15)
        key = _key()
        call = asyncio.ensure_future(broker.redis.blpop([key], 0.6))
        await asyncio.sleep(0.05)
        _stall(1.5)  # a pause: the socket timeout falls due during it and fires on waking
        with pytest.raises(RedisTimeoutError) as caught:
            await call
        broker.lost(caught.value)
        assert broker.connected  # ignored: the pause spanned it
        # redis-py dropped that connection: its late nil is read by nobody.
        await broker.redis.rpush(key, b"x")
        assert await broker.redis.echo("mine") == b"mine"
        assert await broker.redis.lpop(key) == b"x"
        assert await broker.send([pack("ECHO", "line")]) == [b"line"]
    finally:
        await broker.close()


async def test_a_real_stall_is_a_loss_even_after_a_pause_early_in_the_wait(
    own_redis_server: RedisServer,
) -> None:
    # Redis really stalls. One second into the call's 5 s wait the process stops for 1.3 s; the
    # timeout fires on time, nearly 3 s after it woke: Redis's fault, and an API node must fail
    # its waiting requests with 503 now (excusing it kept the node "ready" in front of a frozen
    # Redis, review of 2026-12-02).
    lost: list[BaseException] = []
    broker = Broker(own_redis_server.url, on_lost=lost.append)
    await broker.connect()
    try:
        loop_clock()
        await asyncio.sleep(0.15)
        own_redis_server.freeze()
        call = asyncio.ensure_future(broker.redis.hgetall(_key()))
        await asyncio.sleep(1.0)
        _stall(1.3)
        with pytest.raises(RedisTimeoutError) as caught:
            await call
        broker.lost(caught.value)
        assert not broker.connected and lost
    finally:
        own_redis_server.thaw()
        await broker.close()


def _slow_turns(seconds: float, turn_s: float) -> None:
    """Make every loop turn take ``turn_s`` for ``seconds``: a loop that runs, slowly (its
    sockets are still read once a turn), as a heavily starved or overloaded process's does."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + seconds

    def turn() -> None:
        if time.monotonic() < end:
            _stall(turn_s)
            loop.call_soon(turn)

    loop.call_soon(turn)


async def test_a_loop_with_slow_turns_still_answers_each_turn(
    redis_server: RedisServer,
) -> None:
    # The premise of the findings below: a loop whose turns take 0.4 s still hears Redis, within
    # a few turns (the reply is read in one turn, its task resumes in the next).
    line = await RedisLine.open(redis_server.url)
    try:
        await asyncio.sleep(0.15)
        _slow_turns(3.0, 0.4)
        began = time.monotonic()
        assert await line.call("PING") == b"PONG"
        assert time.monotonic() - began < 2.0
    finally:
        await asyncio.sleep(3.2)
        line.close()


async def test_a_slow_reader_still_finds_a_silent_worker_dead() -> None:
    clock = loop_clock()
    await asyncio.sleep(0.15)
    _slow_turns(3.0, 0.4)
    began = time.time()
    await asyncio.sleep(3.0)
    now = time.time()
    # A worker last heard of when the slow turns began: silent 3 s against 2 s dead-after. The
    # reader ran all along, slowly: nothing of its own silence is excused.
    registry = {b"w": WorkerRecord(("knn",), began).encode()}
    assert clock.paused_within(3.0) == 0.0
    assert live_workers(registry, now, 2.0, clock.paused_within) == {}


def test_a_readers_pause_excuses_one_window_of_silence_at_most() -> None:
    now = time.time()
    registry = {
        b"paused-with-us": WorkerRecord(("knn",), now - 7.0).encode(),
        b"long-dead": WorkerRecord(("knn",), now - 11.0).encode(),
    }
    # The reader itself did not run for 30 of the last seconds (a paused VM, or a clock gone
    # wrong): a worker silent 7 s is excused (it could not beat either), one silent 11 s is not.
    live = live_workers(registry, now, 5.0, lambda seconds: min(seconds, 30.0))
    assert set(live) == {"paused-with-us"}


async def test_a_slow_loop_gives_up_on_a_silent_redis_near_its_timeout() -> None:
    loop = asyncio.get_running_loop()
    loop_clock()
    await asyncio.sleep(0.15)
    _slow_turns(5.0, 0.4)
    never: asyncio.Future[None] = loop.create_future()
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(never, 1.0)
    waited = time.monotonic() - began
    await asyncio.sleep(max(0.0, 5.2 - waited))
    # The loop heard its sockets every 0.4 s throughout: it gives up a few slow turns after
    # its 1 s (each step of a timeout takes a turn), not when the slow turns end.
    assert waited < 3.5


async def test_a_wait_across_a_pause_ends_at_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pauses, "MAX_PAUSE_S", 1.0)  # 60 s in earnest
    loop = asyncio.get_running_loop()
    loop_clock()
    await asyncio.sleep(0.15)
    never: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.05, _stall, 3.0)  # the process stops for three times the wait
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(never, 1.0)
    # Excused, the pause would stretch it to 1 s after waking (4 s); the bound (1 s past the
    # time asked) gives up on waking.
    assert time.monotonic() - began < 3.6


def test_closed_loops_take_their_clocks_with_them() -> None:
    async def use() -> None:
        loop_clock()
        await asyncio.sleep(0.12)  # a tick ran and is scheduled again

    before = len(pauses._clocks)
    for _ in range(50):
        asyncio.run(use())
        uvloop.run(use())
    gc.collect()
    assert len(pauses._clocks) <= before
