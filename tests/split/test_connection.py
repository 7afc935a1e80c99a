"""The broker connection: scripts Redis forgot are loaded again; a lost Redis fails at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sluiceway.split.connection import BROKER_ERRORS, Broker
from sluiceway.split.outbox import Outbox
from sluiceway.split.scripts import ADMIT, Script
from tests.redis_server import RedisServer, free_port


async def test_a_script_redis_forgot_is_loaded_and_its_call_sent_again(
    redis_server: RedisServer,
) -> None:
    broker = Broker(redis_server.url, [ADMIT])
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    stream, queued = f"{prefix}:jobs", f"{prefix}:queued"
    try:
        await broker.connect()
        await broker.redis.script_flush()  # as a Redis restart would
        replies = await broker.send(
            [ADMIT.call([stream, queued], [10, b"job"]), b"*1\r\n$4\r\nPING\r\n"]
        )
        assert isinstance(replies[0], bytes) and b"-" in replies[0], replies  # an entry id
        assert replies[1] == b"PONG"
        assert await broker.redis.xlen(stream) == 1  # admitted once, not twice
        assert await broker.redis.get(queued) == b"1"
    finally:
        await broker.close()


async def test_writes_whose_script_cannot_be_loaded_again_fail_and_say_so(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, any error but a lost connection left the writes' future unset for ever: a
    # worker's answers never settled, and their jobs stayed held, never taken back.
    broker = Broker(redis_server.url, [ADMIT])
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    try:
        await broker.connect()
        await broker.redis.script_flush()

        async def refused(script: Script, redis: object) -> None:
            raise ResponseError("NOPERM this user has no permissions to run 'script|load'")

        monkeypatch.setattr(Script, "load", refused)
        sent = broker.send([ADMIT.call([f"{prefix}:jobs", f"{prefix}:queued"], [10, b"job"])])
        with pytest.raises(ResponseError, match="NOPERM"):
            await asyncio.wait_for(sent, 5.0)
    finally:
        await broker.close()


async def test_a_broker_that_is_not_there_fails_sends_at_once_and_says_so() -> None:
    lost: list[BaseException] = []
    broker = Broker(f"redis://127.0.0.1:{free_port()}/0", [ADMIT], on_lost=lost.append)
    try:
        with pytest.raises(BROKER_ERRORS):
            await broker.connect()
        assert not broker.connected
        with pytest.raises(RedisConnectionError):
            await broker.send([b"*1\r\n$4\r\nPING\r\n"])
        assert len(lost) == 1
    finally:
        await broker.close()


async def test_an_outbox_hands_over_one_loop_turns_items_together() -> None:
    flushed: list[list[int]] = []
    outbox: Outbox[int] = Outbox(flushed.append)
    for item in range(3):
        outbox.add(item)
    assert flushed == []  # nothing is written before the turn ends
    await asyncio.sleep(0)
    outbox.add(3)
    await asyncio.sleep(0)
    assert flushed == [[0, 1, 2], [3]]
