"""The broker connection: one object per process end for everything it says to Redis.

It owns redis-py's pool (membership, claims, script loading: off the hot path) and the
pipelined line (``line.py``) that carries the hot path: admissions on the API node, answers
and acknowledgements on a worker. It knows whether Redis is there, reconnects when asked after
a loss, and runs Lua scripts by SHA1, loading them again when Redis answers NOSCRIPT.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluiceway.split.line import RedisLine
from sluiceway.split.pauses import loop_clock, within
from sluiceway.split.scripts import Script, missing

logger = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a lost or stalled Redis raises (``TimeoutError`` is an ``OSError``); anything else from
Redis is a bug, not an outage."""

STALLED_S = 5.0
"""A Redis that has not answered a command for this long counts as lost: this long of the time
this process ran (``pauses.py``), as a process starved of CPU or stopped cannot hear an answer."""

RECONNECT_S = 0.25
"""How long loops wait before trying a lost Redis again."""

WOKEN_S = 1.0
"""A redis-py timeout this soon after a pause of the process ended fired on waking from it."""

# Margins. STALLED_S is as long as a worker's whole liveness window (5 s, config.py), so a
# stalled Redis is given up on no sooner than a silent worker; both are long beside a command's
# round trip (well under a millisecond on loopback) and short beside a request's 30 s
# deadline. A connection attempt gets 1 s (``connect``, ``RedisLine.open``),
# counted in running time on the line; RECONNECT_S paces the retries, so a lost worker is
# back within a beat of Redis returning, well before its 5 s of silence run out.


def connect(url: str, *, max_connections: int = 64, timeout_s: float = STALLED_S) -> Redis:
    """A redis-py client for ``url`` that fails fast: no retries, short connect timeout.

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


class Broker:
    """A process's connection to the job broker: redis-py's pool and the pipelined line.

    ``connected`` goes false on any loss (:meth:`lost`, which tells ``on_lost``); the owner's
    periodic loop calls :meth:`connect` to come back. While it is false, :meth:`send` fails at
    once: callers answer 503 now rather than time out later.
    """

    def __init__(
        self,
        url: str,
        scripts: Sequence[Script] = (),
        on_lost: Callable[[BaseException], None] | None = None,
        name: str = "this node",
    ) -> None:
        """``scripts``: the Lua scripts this end calls; ``name``: who it is, in logs."""
        self.url = url
        self._name = name
        self._scripts = tuple(scripts)
        self._on_lost = on_lost
        self._redis: Redis | None = None
        self._line: RedisLine | None = None
        self._connected = False
        self._reloads: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """Redis answered since the last loss."""
        return self._connected

    @property
    def redis(self) -> Redis:
        """redis-py's client, for everything off the hot path."""
        if self._redis is None:
            self._redis = connect(self.url)
        return self._redis

    async def connect(self) -> None:
        """Connect if not connected: fresh pooled connections, the scripts, a new line.

        Raises ``BROKER_ERRORS`` when Redis is not there (the caller calls :meth:`lost`).
        """
        if self._connected:
            return
        # Connections opened before Redis went away are dead. With client retries off, each
        # one fails once when next used; one by one they kept a recovering node flapping for
        # seconds. After this, every command opens a new connection.
        await self.redis.connection_pool.disconnect(inuse_connections=True)
        for script in self._scripts:
            await script.load(self.redis)
        if self._line is not None:
            self._line.close()
        self._line = await RedisLine.open(self.url)
        self._connected = True
        logger.info("%s connected to the job broker", self._name)

    def lost(self, error: BaseException) -> None:
        """Redis failed: be disconnected until the next :meth:`connect`; tell the owner.

        Not for a redis-py timeout that spanned a pause of this process: its socket timeout
        counts wall time, so a process starved or stopped for ``STALLED_S`` woke to find its
        call timed out, the answer likely in its socket. That call failed (its caller tries
        again at its next beat), but Redis is not lost on its account: losing it would fail
        every request an API node waits on and drop a worker's unsent answers.
        """
        if self._connected and isinstance(error, RedisTimeoutError):
            # Only a timeout that fell due while the process was paused, and fired as it woke
            # (a pause under way or just ended): a pause earlier in the call's wait did not
            # stop Redis answering within the rest of it, and a real stall must be a loss.
            paused = loop_clock().paused_within(WOKEN_S)
            if paused > 0:
                logger.warning(
                    "%s: a job broker call timed out while this process was paused for %.1f s "
                    "(starved of CPU or stopped); not counted as a loss", self._name, paused,
                )  # fmt: skip
                return
        if self._connected:
            logger.warning("%s lost the job broker: %s", self._name, error)
        self._connected = False
        if self._on_lost is not None:
            self._on_lost(error)

    def send(self, commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        """Write packed commands now, as one pipeline; the future gets their replies in order.

        Error replies come back as ``ResponseError`` values, not raised, so one failed command
        does not hide what the others did; a script Redis had forgotten is loaded and its call
        sent again first. A lost connection fails the future (and calls :meth:`lost`).
        """
        result: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        line = self._line
        if not self._connected or line is None or not line.connected:
            error = RedisConnectionError("the connection to the job broker (Redis) is down")
            self.lost(error)
            result.set_exception(error)
            return result
        sent = line.send(b"".join(commands), len(commands))
        sent.add_done_callback(lambda replies: self._sent(replies, commands, result))
        return result

    def _sent(
        self,
        sent: asyncio.Future[list[Any]],
        commands: Sequence[bytes],
        result: asyncio.Future[list[Any]],
    ) -> None:
        if (error := sent.exception()) is not None:
            self.lost(error)
            if not result.done():
                result.set_exception(error)
            return
        replies = sent.result()
        again = [index for index, reply in enumerate(replies) if missing(reply)]
        if not again:
            if not result.done():
                result.set_result(replies)
            return
        # Redis restarted or flushed its scripts: those calls did not run; load and resend.
        task = asyncio.create_task(self._reload_and_resend(commands, replies, again, result))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_and_resend(
        self,
        commands: Sequence[bytes],
        replies: list[Any],
        again: list[int],
        result: asyncio.Future[list[Any]],
    ) -> None:
        try:
            for script in self._scripts:
                await script.load(self.redis)
            line = self._line
            if line is None:
                raise RedisConnectionError("the connection to the job broker (Redis) is closed")
            resent = line.send(b"".join(commands[i] for i in again), len(again))
            retried = await within(resent, STALLED_S)
        except BROKER_ERRORS as error:
            self.lost(error)
            if not result.done():
                result.set_exception(error)
            return
        except BaseException as error:  # a refused SCRIPT LOAD, or cancelled at close
            # Whoever waits on the writes must hear of it: a worker's answers left unsettled
            # would keep their jobs held, and never taken back.
            if not result.done():
                if isinstance(error, asyncio.CancelledError):
                    result.cancel()
                else:
                    result.set_exception(error)
            raise
        for index, reply in zip(again, retried, strict=True):
            replies[index] = reply
        if not result.done():
            result.set_result(replies)

    async def close(self) -> None:
        """Close the line and the pool (after the last writes were answered)."""
        await stop_tasks(list(self._reloads), STALLED_S)
        self._connected = False
        if self._line is not None:
            self._line.close()
            self._line = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


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
