"""The API node's dispatcher in split mode: jobs go to Redis Streams, results come back.

A job is added to the partition stream of its batching key (so one restaurant's jobs meet on
one worker) through an admission script that enforces the cluster-wide queue bound.
Admissions that arrive in the same event-loop turn share one pipeline round trip. Each API
node has one reply stream, read by one background task that resolves the waiting futures:
one blocking read returns many results, and no request holds a Redis connection while it
waits. Workers deliver at least once; the futures make it exactly one answer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from sluiceway.config import Settings
from sluiceway.runtime.broker import (
    ADMIT,
    BROKER_ERRORS,
    StreamRead,
    connect,
    fresh_connections,
    stop_tasks,
)
from sluiceway.runtime.errors import DeadlineExceeded, ModelUnavailable, Overloaded
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.keys import Keys
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.wire import JobRecord, ResultRecord, WireError, live_workers

logger = logging.getLogger(__name__)

_READ_COUNT = 1024
_READ_BLOCK_MS = 500
_RECONNECT_S = 0.25
_TRIM_EVERY = 512


@dataclass(slots=True)
class _Admission:
    model: str
    stream: str
    data: bytes
    done: asyncio.Future[None]


class RedisDispatcher:
    """Submits jobs to model workers over Redis and waits for their results."""

    def __init__(self, settings: Settings, metrics: Metrics, node: str | None = None) -> None:
        if not settings.broker_url:
            raise ValueError("RedisDispatcher needs settings.broker_url")
        self._url = settings.broker_url
        self._settings = settings
        self._metrics = metrics
        self._keys = Keys(settings.broker_prefix, settings.broker_partitions)
        self.node = node or uuid.uuid4().hex[:12]
        self._reply = self._keys.reply(self.node)
        # A node that vanished leaves its reply stream behind; it expires unless refreshed.
        self._reply_ttl_s = max(60, int(10 * settings.worker_dead_after_s))
        self._redis: Redis | None = None
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._outbox: list[_Admission] = []
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._closing = False
        self._closed = asyncio.Event()
        self._live_models: set[str] = set()

    async def start(self) -> None:
        self._closing = False
        self._closed.clear()
        self._redis = connect(self._url)
        # One look now, so a node started beside a running cluster is ready at once; if Redis
        # is down the watch loop keeps trying and the node reports not ready meanwhile.
        await self._refresh()
        self._tasks = [
            asyncio.create_task(self._watch(), name="broker watch"),
            asyncio.create_task(self._read_replies(), name="broker replies"),
            asyncio.create_task(self._send_admissions(), name="broker admissions"),
        ]

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        waiting = [future for future in self._waiting.values() if not future.done()]
        if waiting:  # requests already accepted get their answer, bounded by the timeout
            await asyncio.wait(waiting, timeout=self._settings.request_timeout_s)
        self._outbox_ready.set()
        await stop_tasks(self._tasks, _READ_BLOCK_MS / 1000 + 1)
        self._tasks = []
        stopped = ModelUnavailable("the API node is shutting down")
        for admission in self._outbox:
            if not admission.done.done():
                admission.done.set_exception(stopped)
        self._outbox = []
        self._fail_waiting(stopped)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def ready(self) -> bool:
        return self._connected and not self._closing

    def models(self) -> list[str]:
        return sorted(self._live_models)

    async def submit(self, job: Job) -> Any:
        if self._closing:
            raise ModelUnavailable("the API node is shutting down")
        if not self._connected:
            raise ModelUnavailable("the job broker (Redis) is unreachable")
        if job.model not in self._live_models:
            raise ModelUnavailable(f"no live worker serves {job.model!r}; live: {self.models()}")
        remaining = job.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline passed before {job.model} was asked")
        data = JobRecord(job, self._reply).encode()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        # Registered before the job is sent: the result may come back before XADD returns.
        self._waiting[job.id] = answer
        try:
            async with asyncio.timeout(remaining):
                await self._admit(job, data)
                return await answer
        except TimeoutError:
            raise DeadlineExceeded(f"{job.model} did not answer before the deadline") from None
        finally:
            self._waiting.pop(job.id, None)

    def _admit(self, job: Job, data: bytes) -> asyncio.Future[None]:
        stream = self._keys.jobs(job.model, self._keys.partition(job.key))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Admission(job.model, stream, data, done))
        self._outbox_ready.set()
        return done

    async def _send_admissions(self) -> None:
        """Send every admission waiting in one pipeline; repeat while more arrive."""
        bound = self._settings.broker_max_queue
        while not self._closing or self._outbox:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            assert self._redis is not None
            pipe = self._redis.pipeline(transaction=False)
            for admission in batch:
                pipe.eval(ADMIT, 2, admission.stream, self._keys.queued(admission.model), bound,
                          admission.data)  # fmt: skip
            try:
                replies = await pipe.execute(raise_on_error=False)
            except BROKER_ERRORS as error:
                self._lost(error)
                replies = [error] * len(batch)
            for admission, reply in zip(batch, replies, strict=True):
                if admission.done.done():  # the caller's deadline passed meanwhile
                    continue
                if isinstance(reply, Exception):
                    admission.done.set_exception(ModelUnavailable(f"job broker failed: {reply}"))
                elif reply is None:
                    self._metrics.rejected.labels(admission.model).inc()
                    admission.done.set_exception(
                        Overloaded(f"{admission.model} queue is full ({bound} jobs in the cluster)")
                    )
                else:
                    admission.done.set_result(None)

    async def _read_replies(self) -> None:
        """Resolve waiting requests from this node's reply stream, for the node's lifetime."""
        assert self._redis is not None
        last = b"0-0"  # a fresh node id: everything on its stream is for this node
        untrimmed, trimmed = 0, time.monotonic()
        while not self._closing:
            try:
                response = cast(
                    StreamRead,
                    await self._redis.xread(
                        {self._reply: last}, count=_READ_COUNT, block=_READ_BLOCK_MS
                    ),
                )
            except BROKER_ERRORS as error:
                self._lost(error)
                await asyncio.sleep(_RECONNECT_S)
                continue
            for _, entries in response or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self._resolve((fields or {}).get(b"r"))
                untrimmed += len(entries)
            # Read entries are done with. Trimming them now and then, not after every read,
            # keeps that round trip off the path of the next results.
            if untrimmed >= _TRIM_EVERY or (untrimmed and time.monotonic() - trimmed > 1):
                try:
                    await self._redis.xtrim(self._reply, minid=last, approximate=True)
                except BROKER_ERRORS as error:
                    self._lost(error)
                untrimmed, trimmed = 0, time.monotonic()

    def _resolve(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            result = ResultRecord.decode(data)
        except WireError:
            logger.exception("dropped an undecodable result")
            return
        answer = self._waiting.get(result.job_id)
        if answer is None or answer.done():  # a duplicate, or its request already gave up
            return
        try:
            answer.set_result(result.outcome())
        except Exception as error:
            answer.set_exception(error)

    async def _watch(self) -> None:
        """Track the live workers' models and the broker's health; reconnect when it fails."""
        while not self._closing:
            pause = self._settings.worker_heartbeat_s if self._connected else _RECONNECT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), pause)
            if self._closing:
                break
            try:
                await self._refresh()
            except Exception as error:  # this loop is what heals the node: it must not die
                logger.exception("broker watch failed")
                self._lost(error)

    async def _refresh(self) -> None:
        assert self._redis is not None
        try:
            if not self._connected:
                await fresh_connections(self._redis)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._keys.workers)
                pipe.expire(self._reply, self._reply_ttl_s)
                registry, _ = await pipe.execute()
        except BROKER_ERRORS as error:
            self._lost(error)
            return
        live = live_workers(registry, time.time(), self._settings.worker_dead_after_s)
        self._live_models = {model for record in live.values() for model in record.models}
        if not self._connected:
            logger.info("job broker reachable; live models %s", self.models())
        self._connected = True

    def _lost(self, error: Exception) -> None:
        """Redis failed: fail fast now and until the watch loop sees it back."""
        if self._connected:
            logger.warning("lost the job broker: %s", error)
        self._connected = False
        # Jobs in flight may be gone with Redis; their callers get 503 now, not 504 later.
        self._fail_waiting(ModelUnavailable(f"lost the job broker: {error}"))

    def _fail_waiting(self, error: Exception) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(error)
