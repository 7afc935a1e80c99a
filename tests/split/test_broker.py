"""The Redis helpers both ends of split mode share: the raw group reader and entry fields."""

from __future__ import annotations

import asyncio
import uuid

from sluiceway.split.connection import connect
from sluiceway.split.reader import GroupReader, entry_field
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer


def test_a_field_is_found_in_parsed_and_raw_entries() -> None:
    assert entry_field({b"j": b"job"}, b"j") == b"job"
    assert entry_field([b"x", b"1", b"j", b"job"], b"j") == b"job"
    assert entry_field(None, b"j") is None  # deleted since it was delivered
    assert entry_field([b"x", b"1"], b"j") is None
    assert entry_field({b"x": b"1"}, b"j") is None


async def test_the_group_reader_reads_new_entries_once(redis_server: RedisServer) -> None:
    redis = connect(redis_server.url)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    streams = [f"{prefix}:{n}" for n in range(2)]
    for stream in streams:
        await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    first = await redis.xadd(streams[0], {"j": b"a"})
    second = await redis.xadd(streams[1], {"j": b"b"})
    reader = GroupReader(redis_server.url, "g", "consumer", block_ms=50)
    try:
        got = await reader.read(streams, 10)
        assert sorted((s, i, entry_field(f, b"j")) for s, i, f in got) == [
            (streams[0], first, b"a"),
            (streams[1], second, b"b"),
        ]
        assert await reader.read(streams, 10) == []  # delivered already; the block times out
        assert reader.id is not None
    finally:
        reader.reset()
        await redis.aclose()


async def test_unblocking_the_readers_connection_cuts_its_wait_short(
    redis_server: RedisServer,
) -> None:
    redis = connect(redis_server.url)
    stream = f"test-{uuid.uuid4().hex[:8]}"
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    await redis.xadd(stream, {"j": b"a"})
    reader = GroupReader(redis_server.url, "g", "c", block_ms=3000)
    try:
        assert len(await reader.read([stream], 1)) == 1  # connected; now nothing is left
        waiting = asyncio.create_task(reader.read([stream], 1))
        assert reader.id is not None
        reader_id = reader.id

        async def blocked() -> bool:
            # Redis flags a client blocked in XREADGROUP "b": the read is waiting now.
            (client,) = await redis.client_list(client_id=[reader_id])
            return "b" in client["flags"]

        await eventually(blocked)
        await redis.client_unblock(reader.id)
        assert await asyncio.wait_for(waiting, 1) == []
    finally:
        reader.reset()
        await redis.aclose()
