"""The pipelined Redis connection of split mode's hot paths, against a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sluiceway.runtime.broker import BROKER_ERRORS, connect
from sluiceway.runtime.redis_line import RedisLine, pack
from tests.redis_server import RedisServer


def _key() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_pipelined_commands_get_their_replies_in_order(redis_server: RedisServer) -> None:
    line = await RedisLine.open(redis_server.url)
    key = _key()
    try:
        first = line.send(pack("SET", key, b"\x00\xff binary") + pack("GET", key), 2)
        # A failing command in the middle comes back as a value; its neighbours still ran.
        second = line.send(pack("INCR", key) + pack("STRLEN", key) + pack("PING"), 3)
        assert await first == [b"OK", b"\x00\xff binary"]
        middle, length, pong = await second
        assert isinstance(middle, ResponseError) and "not an integer" in str(middle)
        assert (length, pong) == (9, b"PONG")
        with pytest.raises(ResponseError, match="unknown command"):
            await line.call("NO-SUCH-COMMAND")
        assert line.client_id is not None and line.connected
    finally:
        line.close()


async def test_a_command_given_up_on_leaves_the_line_in_step(redis_server: RedisServer) -> None:
    line = await RedisLine.open(redis_server.url)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await line.send(pack("BLPOP", _key(), "0.3"), 1)
        # The BLPOP's nil reply arrives first and is dropped; PING still gets its own.
        assert await line.call("PING") == b"PONG"
    finally:
        line.close()


async def test_a_lost_connection_fails_what_is_pending(redis_server: RedisServer) -> None:
    line = await RedisLine.open(redis_server.url)
    redis = connect(redis_server.url)
    try:
        pending = line.send(pack("BLPOP", _key(), "5"), 1)
        await asyncio.sleep(0.05)
        await redis.client_kill_filter(_id=line.client_id)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pending, 2)
        await asyncio.wait_for(line.wait_lost(), 1)
        assert not line.connected
        with pytest.raises(RedisConnectionError, match="closed"):
            await line.send(pack("PING"), 1)
    finally:
        line.close()
        await redis.aclose()


async def test_a_subscriber_line_hands_every_push_to_its_callback(
    redis_server: RedisServer,
) -> None:
    pushed: asyncio.Queue[object] = asyncio.Queue()
    line = await RedisLine.open(redis_server.url, on_push=pushed.put_nowait)
    redis = connect(redis_server.url)
    channel = _key()
    try:
        line.write(pack("SUBSCRIBE", channel))
        assert await asyncio.wait_for(pushed.get(), 2) == [b"subscribe", channel.encode(), 1]
        await redis.publish(channel, b"one")
        await redis.publish(channel, b"two")
        for data in (b"one", b"two"):
            assert await asyncio.wait_for(pushed.get(), 2) == [b"message", channel.encode(), data]
    finally:
        line.close()
        await redis.aclose()


async def test_the_url_chooses_the_database(redis_server: RedisServer) -> None:
    line = await RedisLine.open(f"{redis_server.url.rsplit('/', 1)[0]}/3")
    redis = connect(f"{redis_server.url.rsplit('/', 1)[0]}/3")
    key = _key()
    try:
        await line.call("SET", key, "in three")
        assert await redis.get(key) == b"in three"
    finally:
        line.close()
        await redis.delete(key)
        await redis.aclose()


async def test_opening_fails_clearly_when_redis_refuses_or_is_absent(
    redis_server: RedisServer,
) -> None:
    host_port = redis_server.url.split("//", 1)[1].split("/", 1)[0]
    with pytest.raises(RedisConnectionError, match="refused the connection set-up"):
        await RedisLine.open(f"redis://:wrong-password@{host_port}/0")
    with pytest.raises(BROKER_ERRORS):
        await RedisLine.open("redis://127.0.0.1:1/0")
