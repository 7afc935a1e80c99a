"""The API node's dispatcher in split mode: jobs go to Redis Streams, results come back.

A job is added to the partition stream of its batching key (so one restaurant's jobs meet on
one worker) through an admission script that enforces the cluster-wide queue bound.
Admissions that arrive in the same event-loop turn go out as one write on the node's command
line (``redis_line.py``), pipelined behind any still unanswered; their replies are handled in
the line's callback, so an admission costs no task wake-up.

Results come back on the node's own Pub/Sub channel, several per message, handed by a
subscriber line to a callback that resolves the waiting futures: Redis pushes them, so no read
command is sent per result, nothing is stored to trim or expire, and no request holds a Redis
connection while it waits. Pub/Sub keeps nothing for a node that is not listening, which costs
nothing here: when the node loses its subscription it fails every waiting request at once
(503), as it does for any broker failure, and a request re-sent later is a new job. Workers
deliver at least once; the futures make it exactly one answer per request.

A request whose caller leaves (a client disconnect cancels ``submit``) is named on the cancel
channel, all of a loop turn's in one message: the workers remove it unrun if they hold it
queued, and skip it when they read it later (``worker.py``). Best effort: a cancel lost with
the connection only means the job runs and its answer is dropped, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

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
from sluiceway.runtime.redis_line import RedisLine, pack
from sluiceway.runtime.wire import (
    JobRecord,
    ResultRecord,
    WireError,
    encode_cancels,
    live_workers,
)

logger = logging.getLogger(__name__)

_RECONNECT_S = 0.25
_SUBSCRIBE_S = 0.5  # how long start() waits for the subscription beside a running cluster


@dataclass(slots=True)
class _Admission:
    model: str
    stream: str
    data: bytes
    answer: asyncio.Future[Any]  # the request's: an admission that fails fails the request
    retried: bool = False


def _ignore_reply(reply: asyncio.Future[list[Any]]) -> None:
    """A cancel is best effort: a lost one only means a job runs for nobody."""
    if not reply.cancelled():
        reply.exception()


class RedisDispatcher:
    """Submits jobs to model workers over Redis and waits for their results."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        node: str | None = None,
        routes: Iterable[str] = (),
    ) -> None:
        """``routes``: the models this node's endpoints send jobs to; it is ready only while a
        live worker serves each (``settings.api_models`` overrides; neither: any one model)."""
        if not settings.broker_url:
            raise ValueError("RedisDispatcher needs settings.broker_url")
        self._url = settings.broker_url
        self._settings = settings
        self._metrics = metrics
        self._keys = Keys(settings.broker_prefix, settings.broker_partitions)
        self.node = node or uuid.uuid4().hex[:12]
        self._reply = self._keys.reply(self.node)
        self._redis: Redis | None = None  # membership and scripts: off the hot path
        self._line: RedisLine | None = None  # admissions
        self._subscriber: RedisLine | None = None  # this node's reply channel
        self._subscribed = asyncio.Event()  # to the reply channel, as confirmed by Redis
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._outbox: list[_Admission] = []
        self._outbox_scheduled = False
        self._cancels: list[tuple[str, float]] = []  # (job id, deadline) of callers gone
        self._reloads: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._closing = False
        self._closed = asyncio.Event()
        self._live_models: set[str] = set()
        named = {name.strip() for name in settings.api_models.split(",") if name.strip()}
        self._routes = frozenset(named or routes)

    async def start(self) -> None:
        self._closing = False
        self._closed.clear()
        self._redis = connect(self._url)
        # One look now, so a node started beside a running cluster is ready at once; if Redis
        # is down the watch loop keeps trying and the node reports not ready meanwhile.
        await self._refresh()
        self._tasks = [
            asyncio.create_task(self._watch(), name="broker watch"),
            asyncio.create_task(self._keep_subscribed(), name="broker replies"),
        ]
        if self._connected:  # a node beside a running cluster takes requests once started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), _SUBSCRIBE_S)

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        waiting = [future for future in self._waiting.values() if not future.done()]
        if waiting:  # requests already accepted get their answer, bounded by the timeout
            await asyncio.wait(waiting, timeout=self._settings.request_timeout_s)
        for line in (self._line, self._subscriber):
            if line is not None:
                line.close()
        self._line = self._subscriber = None
        await stop_tasks([*self._tasks, *self._reloads], _RECONNECT_S + 1)
        self._tasks = []
        self._fail_waiting(ModelUnavailable("the API node is shutting down"))
        self._outbox = []
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def ready(self) -> bool:
        """Redis answers, replies can arrive, and a live worker serves every routed model.

        Redis alone is not enough: just after it restarts the registry is empty until the
        workers' next heartbeats, and every job sent meanwhile would get a 503.
        """
        return (
            self._connected
            and self._subscribed.is_set()
            and not self._closing
            and not self.missing()
        )

    def missing(self) -> list[str]:
        """Routed models no live worker serves now (``["any model"]`` if none is routed and no
        worker lives)."""
        if not self._routes:
            return [] if self._live_models else ["any model"]
        return sorted(self._routes - self._live_models)

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
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Registered before the job is sent: the result may come back before XADD's reply.
        self._waiting[job.id] = answer
        stream = self._keys.jobs(job.model, self._keys.partition(job.key))
        self._admit(_Admission(job.model, stream, data, answer))
        try:
            async with asyncio.timeout(remaining):
                return await answer
        except TimeoutError:
            raise DeadlineExceeded(f"{job.model} did not answer before the deadline") from None
        except asyncio.CancelledError:  # the caller left: the worker need not run it
            self._cancel(job)
            raise
        finally:
            self._waiting.pop(job.id, None)

    def _cancel(self, job: Job) -> None:
        if not self._cancels:
            asyncio.get_running_loop().call_soon(self._send_cancels)
        self._cancels.append((job.id, job.deadline))

    def _send_cancels(self) -> None:
        cancels, self._cancels = self._cancels, []
        line = self._line
        if not cancels or line is None or not line.connected:
            return
        message = pack("PUBLISH", self._keys.cancels, encode_cancels(cancels))
        line.send(message, 1).add_done_callback(_ignore_reply)

    # Admissions: written at the end of the loop turn, answered in the line's callback.

    def _admit(self, admission: _Admission) -> None:
        self._outbox.append(admission)
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_outbox)

    def _send_outbox(self) -> None:
        self._outbox_scheduled = False
        batch, self._outbox = self._outbox, []
        batch = [admission for admission in batch if not admission.answer.done()]
        if not batch:
            return
        line = self._line
        if line is None or not line.connected:
            self._lost(ModelUnavailable("the connection to the job broker (Redis) is down"))
            return
        bound = self._settings.broker_max_queue
        packed = b"".join(
            ADMIT.call([a.stream, self._keys.queued(a.model)], [bound, a.data]) for a in batch
        )
        line.send(packed, len(batch)).add_done_callback(
            lambda replies: self._admitted(batch, replies)
        )

    def _admitted(self, batch: list[_Admission], replies: asyncio.Future[list[Any]]) -> None:
        if (error := replies.exception()) is not None:
            self._lost(error)  # fails every waiting request, these included
            return
        unknown: list[_Admission] = []
        for admission, reply in zip(batch, replies.result(), strict=True):
            if missing(reply) and not admission.retried:
                # Redis restarted or flushed its scripts: this one did not run; load and resend.
                admission.retried = True
                unknown.append(admission)
            elif admission.answer.done():  # the caller's deadline passed meanwhile
                continue
            elif isinstance(reply, ResponseError):
                admission.answer.set_exception(ModelUnavailable(f"job broker failed: {reply}"))
            elif reply is None:
                self._metrics.rejected.labels(admission.model).inc()
                bound = self._settings.broker_max_queue
                admission.answer.set_exception(
                    Overloaded(f"{admission.model} queue is full ({bound} jobs in the cluster)")
                )
        if unknown:
            task = asyncio.create_task(self._reload_and_resend(unknown), name="reload admit")
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

    async def _reload_and_resend(self, batch: list[_Admission]) -> None:
        assert self._redis is not None
        try:
            await ADMIT.load(self._redis)
        except BROKER_ERRORS as error:
            self._lost(error)
            return
        for admission in batch:
            self._admit(admission)

    # Replies: pushed by Redis to the subscriber line's callback.

    async def _keep_subscribed(self) -> None:
        """Hold this node's subscription to its reply channel, for the node's lifetime."""
        while not self._closing:
            if not self._connected:  # the watch loop says when Redis is back
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), _RECONNECT_S)
                continue
            try:
                line = await RedisLine.open(self._url, on_push=self._pushed)
            except BROKER_ERRORS as error:
                self._lost(error)
                continue
            self._subscriber = line
            try:
                line.write(pack("SUBSCRIBE", self._reply))
                await line.wait_lost()
            except BROKER_ERRORS:
                pass  # closed as soon as opened: treated below like any loss, and retried
            finally:
                line.close()
                self._subscriber = None
                self._subscribed.clear()
            if not self._closing:
                self._lost(ModelUnavailable("lost the subscription to the reply channel"))

    def _pushed(self, message: Any) -> None:
        kind = message[0] if isinstance(message, list) and len(message) == 3 else None
        if kind == b"message":
            self._resolve(message[2])
        elif kind == b"subscribe":
            # From here on no result for this node is lost: jobs may be admitted.
            self._subscribed.set()

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
                if self._line is not None:
                    self._line.close()
                self._line = await RedisLine.open(self._url)
            registry = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.workers))
        except BROKER_ERRORS as error:
            self._lost(error)
            return
        live = live_workers(registry, time.time(), self._settings.worker_dead_after_s)
        self._live_models = {model for record in live.values() for model in record.models}
        if not self._connected:
            logger.info("job broker reachable; live models %s", self.models())
        self._connected = True

    def _lost(self, error: BaseException) -> None:
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
