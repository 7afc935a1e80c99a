"""The API node's dispatcher in split mode: jobs go to Redis Streams, results come back.

A job is added to the partition stream of its batching key (so one restaurant's jobs meet on
one worker) through an admission script that enforces the cluster-wide queue bound.
Admissions that arrive in the same event-loop turn go out as one pipeline on the broker
connection's line (``connection.py``, ``outbox.py``); their replies are handled in a callback,
so an admission costs no task wake-up.

Results come back on the node's own Pub/Sub channel (``subscription.py``), several per
message, handed to a callback that resolves the waiting futures: Redis pushes them, so no read
command is sent per result, nothing is stored to trim or expire, and no request holds a Redis
connection while it waits. Pub/Sub keeps nothing for a node that is not listening, which costs
nothing here: when the node loses its subscription it fails every waiting request at once
(503), as it does for any broker failure, and a request re-sent later is a new job. Workers
deliver at least once; the futures make it exactly one answer per request.

A request whose caller leaves (a client disconnect cancels ``submit``) is named on the cancel
channel, all of a loop turn's in one message: the workers remove it unrun if they hold it
queued, and skip it when they read it later (``worker.py``). Best effort: a cancel lost with
the connection only means the job runs and its answer is dropped, as before.

The node makes no model call, so for Triton's statistics it adds the live workers' calls,
read when asked (``worker_calls.py``).
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

from redis.exceptions import ResponseError

from sluiceway.config import Settings
from sluiceway.errors import DeadlineExceeded, ModelUnavailable, Overloaded
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.stats import ModelCalls, Statistics, Watch
from sluiceway.split.connection import BROKER_ERRORS, RECONNECT_S, Broker, stop_tasks
from sluiceway.split.keys import Keys
from sluiceway.split.line import pack
from sluiceway.split.outbox import Outbox
from sluiceway.split.pauses import loop_clock
from sluiceway.split.scripts import ADMIT
from sluiceway.split.subscription import Subscription
from sluiceway.split.wire import (
    JobRecord,
    ResultRecord,
    WireError,
    WorkerRecord,
    encode_cancels,
    live_workers,
)
from sluiceway.split.worker_calls import WorkerCalls

logger = logging.getLogger(__name__)

_SUBSCRIBE_S = 0.5  # how long start() waits for the subscription beside a running cluster


@dataclass(slots=True)
class _Admission:
    model: str
    stream: str
    data: bytes
    answer: asyncio.Future[Any]  # the request's: an admission that fails fails the request


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
        self._settings = settings
        self._metrics = metrics
        self._keys = Keys(settings.broker_prefix, settings.broker_partitions)
        self.node = node or uuid.uuid4().hex[:12]
        self._reply = self._keys.reply(self.node)
        self._broker = Broker(settings.broker_url, [ADMIT], self._lost, f"API node {self.node}")
        self._replies = Subscription(self._broker, self._reply, self._resolve, self._lost_replies)
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._admissions: Outbox[_Admission] = Outbox(self._send_admissions)
        self._cancels: Outbox[tuple[str, float]] = Outbox(self._send_cancels)
        self._watching: asyncio.Task[None] | None = None
        self._closing = False
        # The requests this node sends, counted as the embedded dispatcher counts them; the
        # model calls are counted by the workers that make them (``runtime/triton_metrics.py``).
        self.statistics = Statistics(metrics, makes_calls=False)
        self._worker_calls = WorkerCalls(settings, self._keys, self._broker)
        self._closed = asyncio.Event()
        self._live_models: set[str] = set()
        named = {name.strip() for name in settings.api_models.split(",") if name.strip()}
        self._routes = frozenset(named or routes)

    async def start(self) -> None:
        self._closing = False
        self._closed.clear()
        # One look now, so a node started beside a running cluster is ready at once; if Redis
        # is down the watch loop keeps trying and the node reports not ready meanwhile.
        await self._refresh()
        self._watching = asyncio.create_task(self._watch(), name="broker watch")
        self._replies.start()
        if self._broker.connected:  # a node beside a running cluster takes requests once started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replies.subscribed.wait(), _SUBSCRIBE_S)

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        waiting = [future for future in self._waiting.values() if not future.done()]
        if waiting:  # requests already accepted get their answer, bounded by the timeout
            await asyncio.wait(waiting, timeout=self._settings.request_timeout_s)
        await self._replies.close()
        if self._watching is not None:
            await stop_tasks([self._watching], RECONNECT_S + 1)
            self._watching = None
        await self._worker_calls.close()
        self._fail_waiting(ModelUnavailable("the API node is shutting down"))
        self._admissions.clear()
        self._cancels.clear()
        await self._broker.close()

    def ready(self) -> bool:
        """Redis answers, replies can arrive, and a live worker serves every routed model.

        Redis alone is not enough: just after it restarts the registry is empty until the
        workers' next heartbeats, and every job sent meanwhile would get a 503.
        """
        return (
            self._broker.connected
            and self._replies.subscribed.is_set()
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

    async def worker_calls(self) -> dict[str, ModelCalls]:
        """The model calls the live workers made, summed by model, for the statistics
        extension (``WorkerCalls.read``; callers must not change it)."""
        return await self._worker_calls.read()

    async def submit(self, job: Job) -> Any:
        """The job's result from a worker, counted in this node's statistics with the times of
        the model call the worker's answer carries."""
        statistics = self.statistics
        watch = Watch(None, time.perf_counter())
        try:
            value, call = await self._submit(job)
        except BaseException as error:  # a cancelled caller too: counted by its reason
            statistics.done(job, watch, error)
            raise
        if call is not None and call[0] < watch.submitted:  # a call before its request
            call = None  # cannot be: not believed
        statistics.done(job, watch, None, call)
        return value

    async def _submit(self, job: Job) -> tuple[Any, tuple[float, float] | None]:
        if self._closing:
            raise ModelUnavailable("the API node is shutting down")
        if not (self._broker.connected and self._replies.subscribed.is_set()):
            raise ModelUnavailable("the job broker (Redis) is unreachable")
        if job.model not in self._live_models:
            raise ModelUnavailable(f"no live worker serves {job.model!r}; live: {self.models()}")
        remaining = job.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline passed before {job.model} was asked")
        data = JobRecord(job, self._reply).encode()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[Any, tuple[float, float] | None]] = loop.create_future()
        # Registered before the job is sent: the result may come back before XADD's reply.
        self._waiting[job.id] = answer
        stream = self._keys.jobs(job.model, self._keys.partition(job.key))
        self._admissions.add(_Admission(job.model, stream, data, answer))
        # One timer that fails the answer at the deadline, as the embedded dispatcher does: a
        # timeout context per request cost ~3 µs more of the API node's CPU.
        timer = loop.call_at(loop.time() + remaining, _expire, answer, job.model)
        try:
            return await answer
        except asyncio.CancelledError:  # the caller left: the worker need not run it
            self._cancels.add((job.id, job.deadline))
            raise
        finally:
            timer.cancel()
            self._waiting.pop(job.id, None)

    def _send_cancels(self, cancels: list[tuple[str, float]]) -> None:
        if self._broker.connected:
            message = pack("PUBLISH", self._keys.cancels, encode_cancels(cancels))
            self._broker.send([message]).add_done_callback(_ignore_reply)

    # Admissions: written at the end of the loop turn, answered in a callback.

    def _send_admissions(self, batch: list[_Admission]) -> None:
        batch = [admission for admission in batch if not admission.answer.done()]
        if not batch:
            return
        bound = self._settings.broker_max_queue
        calls = [ADMIT.call([a.stream, self._keys.queued(a.model)], [bound, a.data]) for a in batch]
        # A lost connection fails every waiting request, these included (``_lost``).
        sent = self._broker.send(calls)
        sent.add_done_callback(lambda replies: self._admitted(batch, replies))

    def _admitted(self, batch: list[_Admission], replies: asyncio.Future[list[Any]]) -> None:
        error = replies.exception()
        if error is not None:
            # A lost connection fails them too (``_lost``), but a send can fail with Redis
            # kept (a timeout across a pause of this process, ``Broker.lost``): never leave an
            # admission to wait for its deadline on a node that says it is ready.
            for admission in batch:
                if not admission.answer.done():
                    admission.answer.set_exception(
                        ModelUnavailable(f"job broker failed: {str(error) or type(error).__name__}")
                    )
            return
        for admission, reply in zip(batch, replies.result(), strict=True):
            if admission.answer.done():  # the caller's deadline passed meanwhile
                continue
            if isinstance(reply, ResponseError):
                admission.answer.set_exception(ModelUnavailable(f"job broker failed: {reply}"))
            elif reply is None:
                self._metrics.rejected.labels(admission.model).inc()
                bound = self._settings.broker_max_queue
                admission.answer.set_exception(
                    Overloaded(f"{admission.model} queue is full ({bound} jobs in the cluster)")
                )

    # Replies: pushed by Redis to the subscription's callback.

    def _resolve(self, data: bytes) -> None:
        arrived = time.perf_counter()  # before decoding: that is not the call's time
        try:
            results = ResultRecord.decode_all(data)
        except WireError:
            logger.exception("dropped an undecodable reply")
            return
        for result in results:
            answer = self._waiting.get(result.job_id)
            if answer is None or answer.done():  # a duplicate, or its request already gave up
                continue
            call = None
            if result.timing is not None:  # the worker's call, placed on this node's clock
                started = arrived - result.timing.started_s_ago
                call = (started, started + result.timing.compute_s)
            try:
                answer.set_result((result.outcome(), call))
            except Exception as error:
                answer.set_exception(error)

    def _lost_replies(self, error: BaseException) -> None:
        if not self._closing:
            self._broker.lost(ModelUnavailable(f"no reply channel: {error}"))

    # Membership: which models live workers serve.

    async def _watch(self) -> None:
        """Track the live workers' models and the broker's health; reconnect when it fails."""
        while not self._closing:
            pause = self._settings.worker_heartbeat_s if self._broker.connected else RECONNECT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), pause)
            if self._closing:
                break
            try:
                await self._refresh()
            except Exception as error:  # this loop is what heals the node: it must not die
                logger.exception("broker watch failed")
                self._broker.lost(error)

    def saw_workers(self, live: dict[str, WorkerRecord]) -> None:
        """Live workers read by model control (``fleet.py``), which reads them as soon as a
        worker has loaded a model: route to their models from now on."""
        self._live_models = {model for record in live.values() for model in record.models}

    async def _refresh(self) -> None:
        try:
            await self._broker.connect()
            registry = await self._broker.redis.hgetall(self._keys.workers)
        except BROKER_ERRORS as error:
            self._broker.lost(error)
            return
        now = time.time()
        live = live_workers(
            cast(dict[bytes, bytes], registry),
            now,
            self._settings.worker_dead_after_s,
            loop_clock().paused_within,
        )
        self._live_models = {model for record in live.values() for model in record.models}

    def _lost(self, error: BaseException) -> None:
        """Redis failed: fail fast now and until the watch loop sees it back."""
        # Jobs in flight may be gone with Redis; their callers get 503 now, not 504 later.
        self._fail_waiting(ModelUnavailable(f"lost the job broker: {error}"))

    def _fail_waiting(self, error: Exception) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(error)


def _expire(answer: asyncio.Future[Any], model: str) -> None:
    """The deadline passed with no answer: the caller gets its 504."""
    if not answer.done():
        answer.set_exception(DeadlineExceeded(f"{model} did not answer before the deadline"))
