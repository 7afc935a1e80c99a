"""The API node's dispatcher in split mode: jobs go to Redis Streams, results come back.

A job is added to the partition stream of its batching key (so one restaurant's jobs meet on
one worker) through an admission script that enforces the cluster-wide queue bound.
Admissions that arrive in the same event-loop turn share one pipeline round trip.

Results come back on the node's own Pub/Sub channel, several per message, read by one
background task that resolves the waiting futures: Redis pushes them, so no read command is
sent per result, nothing is stored to trim or expire, and no request holds a Redis connection
while it waits. Pub/Sub keeps nothing for a node that is not listening, which costs nothing
here: when the node loses its subscription it fails every waiting request at once (503), as it
does for any broker failure, and a request re-sent later is a new job. Workers deliver at least
once; the futures make it exactly one answer per request.
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
from redis.asyncio.client import PubSub

from sluiceway.config import Settings
from sluiceway.runtime.broker import (
    ADMIT,
    BROKER_ERRORS,
    connect,
    fresh_connections,
    missing,
    stop_tasks,
)
from sluiceway.runtime.errors import DeadlineExceeded, ModelUnavailable, Overloaded
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.keys import Keys
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.wire import JobRecord, ResultRecord, WireError, live_workers

logger = logging.getLogger(__name__)

_READ_BLOCK_S = 0.5
_RECONNECT_S = 0.25


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
        self._redis: Redis | None = None
        self._subscribed = asyncio.Event()  # to the reply channel, as confirmed by Redis
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
        if self._connected:  # a node beside a running cluster takes requests once started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), _READ_BLOCK_S)

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        waiting = [future for future in self._waiting.values() if not future.done()]
        if waiting:  # requests already accepted get their answer, bounded by the timeout
            await asyncio.wait(waiting, timeout=self._settings.request_timeout_s)
        self._outbox_ready.set()
        await stop_tasks(self._tasks, _READ_BLOCK_S + 1)
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
        return self._connected and self._subscribed.is_set() and not self._closing

    def models(self) -> list[str]:
        return sorted(self._live_models)

    async def submit(self, job: Job) -> Any:
        if self._closing:
            raise ModelUnavailable("the API node is shutting down")
        if not (self._connected and self._subscribed.is_set()):
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
        while not self._closing or self._outbox:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[_Admission], *, reloaded: bool = False) -> None:
        assert self._redis is not None
        bound = self._settings.broker_max_queue
        pipe = self._redis.pipeline(transaction=False)
        for admission in batch:
            ADMIT.queue(pipe, [admission.stream, self._keys.queued(admission.model)],
                        [bound, admission.data])  # fmt: skip
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BROKER_ERRORS as error:
            self._lost(error)
            replies = [error] * len(batch)
        if not reloaded and any(missing(reply) for reply in replies):
            # Redis restarted or flushed its scripts: none of these ran, so all may be re-sent.
            try:
                await ADMIT.load(self._redis)
            except BROKER_ERRORS as error:
                self._lost(error)
            else:
                await self._send(batch, reloaded=True)
                return
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
        """Resolve waiting requests from this node's reply channel, for the node's lifetime."""
        assert self._redis is not None
        pubsub: PubSub | None = None
        while not self._closing:
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub()
                    await pubsub.subscribe(self._reply)
                message = await pubsub.get_message(timeout=_READ_BLOCK_S)
            except BROKER_ERRORS as error:
                self._subscribed.clear()
                self._lost(error)
                if pubsub is not None:
                    await _close(pubsub)
                    pubsub = None
                await asyncio.sleep(_RECONNECT_S)
                continue
            if message is None:
                continue
            if message["type"] == "message":
                self._resolve(message["data"])
            elif message["type"] == "subscribe":
                # From here on no result for this node is lost: jobs may be admitted.
                self._subscribed.set()
        if pubsub is not None:
            await _close(pubsub)

    def _resolve(self, data: bytes) -> None:
        try:
            results = ResultRecord.decode_all(data)
        except WireError:
            logger.exception("dropped an undecodable reply")
            return
        for result in results:
            answer = self._waiting.get(result.job_id)
            if answer is None or answer.done():  # a duplicate, or its request already gave up
                continue
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
                await ADMIT.load(self._redis)
            registry = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.workers))
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


async def _close(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
