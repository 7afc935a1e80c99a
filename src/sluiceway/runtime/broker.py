"""The Redis side both ends of split mode share: the connection and the server-side scripts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluiceway.runtime.redis_line import RedisLine, pack

Entry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry as redis-py returns it: id and fields (``None`` once deleted)."""

BROKER_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a lost or stalled Redis raises (``TimeoutError`` is an ``OSError``); anything else from
Redis is a bug, not an outage."""

STALLED_S = 5.0
"""A Redis that has not answered a command for this long counts as lost."""


@dataclass(frozen=True)
class Script:
    """A Lua script called by its SHA1, so Redis neither receives nor hashes the source per call.

    Redis forgets loaded scripts when it restarts (or on SCRIPT FLUSH); callers load them when
    they (re)connect, and re-run a call that failed with :func:`missing` after :meth:`load`.
    """

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def call(self, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> bytes:
        """One packed ``EVALSHA`` of the script, for a ``RedisLine``."""
        return pack("EVALSHA", self.sha, len(keys), *keys, *args)

    async def load(self, redis: Redis) -> None:
        """Make sure Redis knows the script."""
        await redis.script_load(self.source)


def missing(reply: object) -> bool:
    """Whether a ``RedisLine`` reply says Redis did not know the script (so it did not run)."""
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


# Admit a job only while fewer than ARGV[1] jobs of its model are queued or running, so a full
# queue answers 503 instead of stream trimming silently dropping accepted work.
# KEYS: partition stream, the model's queued counter. ARGV: bound, job bytes. Nil when full.
ADMIT = Script("""
local queued = redis.call('INCR', KEYS[2])
if queued > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[2])
  return false
end
return redis.call('XADD', KEYS[1], '*', 'j', ARGV[2])
""")

# Finish jobs: acknowledge, delete and uncount them. Only entries still pending are uncounted,
# so a job answered twice (a claimed job whose first worker was only slow) is counted once.
# KEYS: partition stream, the model's queued counter. ARGV: group, entry ids...
FINISH = Script("""
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
if acked > 0 and redis.call('DECRBY', KEYS[2], acked) < 0 then
  redis.call('SET', KEYS[2], 0)
end
return acked
""")


class GroupReader:
    """A consumer's blocking XREADGROUP on a line of its own, packed once per stream set.

    A worker under load reads about once per job. redis-py's generic command path (argument
    encoding, pool checkout, response callbacks) cost more worker CPU than the read itself, so
    this sends the command as bytes packed when the partitions or count change, on a
    ``RedisLine``, and takes the reply as hiredis parses it. The line is dedicated so that
    ``CLIENT UNBLOCK`` of its id cuts a blocking read short when ownership changes.
    """

    def __init__(self, url: str, group: str, consumer: str, block_ms: int) -> None:
        self._url = url
        self._group = group
        self._consumer = consumer
        self._block_ms = block_ms
        self._line: RedisLine | None = None
        self._packed: tuple[tuple[tuple[str, ...], int], bytes] | None = None

    @property
    def id(self) -> int | None:
        """The connection's client id, once connected (for ``CLIENT UNBLOCK``)."""
        return self._line.client_id if self._line is not None else None

    async def read(self, streams: Sequence[str], count: int) -> list[tuple[str, bytes, Any]]:
        """New entries of ``streams`` as (stream, entry id, fields), blocking up to block_ms.

        Raises ``BROKER_ERRORS`` when Redis is lost or stalls (the next read reconnects) and
        ``ResponseError`` for an error reply (NOGROUP after Redis lost the groups).
        """
        if self._line is None or not self._line.connected:
            self.reset()
            self._line = await RedisLine.open(self._url)
        key = (tuple(streams), count)
        if self._packed is None or self._packed[0] != key:
            command = pack(
                "XREADGROUP", "GROUP", self._group, self._consumer, "COUNT", count,
                "BLOCK", self._block_ms, "STREAMS", *streams, *([">"] * len(streams)),
            )  # fmt: skip
            self._packed = (key, command)
        try:
            async with asyncio.timeout(self._block_ms / 1000 + STALLED_S):
                (reply,) = await self._line.send(self._packed[1], 1)
        except BROKER_ERRORS:
            self.reset()
            raise
        if isinstance(reply, ResponseError):
            raise reply
        if not reply:
            return []
        # RESP2 answers a list of [stream, entries] pairs; each entry is [id, flat fields].
        return [
            (as_text(stream), entry_id, fields)
            for stream, entries in reply
            for entry_id, fields in entries
        ]

    def reset(self) -> None:
        """Drop the connection (after an error, or to stop)."""
        line, self._line = self._line, None
        if line is not None:
            line.close()


def entry_field(fields: Any, name: bytes) -> bytes | None:
    """One field of a stream entry, as redis-py parses it (a dict) or as read raw (a flat list).

    ``None`` when the entry was deleted meanwhile (its fields are nil) or lacks the field.
    """
    if fields is None:
        return None
    if isinstance(fields, dict):
        value = fields.get(name)
        return value if isinstance(value, bytes) else None
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == name:
            value = fields[index + 1]
            return value if isinstance(value, bytes) else None
    return None


def as_text(value: str | bytes) -> str:
    """A name Redis gave back (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else value


def connect(url: str, *, max_connections: int = 64, timeout_s: float = STALLED_S) -> Redis:
    """A client for ``url`` that fails fast: no retries, short connect timeout.

    Retrying is the callers' business (their reconnect loops); a request must never sit in a
    client-side retry while its deadline runs out.
    """
    client: Redis = Redis.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=1.0,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return client


async def fresh_connections(redis: Redis) -> None:
    """Close every pooled connection before using Redis again after an outage.

    Connections opened before Redis went away are dead. With client retries off, each one
    fails once when next used; one by one they kept a recovering node flapping for seconds and
    made workers drop answers. After this, every command opens a new connection.
    """
    await redis.connection_pool.disconnect(inuse_connections=True)


async def stop_tasks(tasks: list[asyncio.Task[None]], grace_s: float) -> None:
    """Let loops that watch a closing flag end by themselves, then cancel what is left.

    A blocking Redis read cut by cancellation can swallow it, so loops are not ended by
    cancelling alone; the grace covers one blocking read.
    """
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=grace_s)
