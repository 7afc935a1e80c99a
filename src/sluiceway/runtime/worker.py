"""The model worker of split mode: Redis Streams in, the embedded runtime, replies out.

A worker owns some partitions of each model's jobs (rendezvous hashing over the live workers'
heartbeats), reads them in batches with XREADGROUP and feeds a ``LocalDispatcher``: the same
batchers and model cache as embedded mode. Because a restaurant's jobs always land in one
partition, they meet in one batcher on one worker, and its model is fitted there once.

Delivery is at least once. A worker acknowledges a job only after writing its answer; the jobs
of a worker that stopped heartbeating are claimed at once by the partition's new owner, those
of a live worker after the visibility timeout. A job delivered ``broker_max_deliveries`` times
without an answer goes to the dead-letter stream, and so does a job the model itself failed on.

A job whose requester left is named on the cancel channel (``redis_dispatch.py``); the worker
listens, withdraws it unrun if it is queued here (a call already started runs on) and
remembers it until its deadline, so that one still in a stream is skipped when read. Either
way it is acknowledged without an answer, since nobody waits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from sluiceway.config import Settings
from sluiceway.models.base import ModelKind
from sluiceway.runtime.broker import (
    BROKER_ERRORS,
    FINISH,
    STALLED_S,
    Entry,
    GroupReader,
    as_text,
    connect,
    entry_field,
    fresh_connections,
    missing,
    stop_tasks,
)
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.runtime.errors import DeadlineExceeded, ModelUnavailable, SluicewayError
from sluiceway.runtime.keys import GROUP, Keys, owner
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.redis_line import RedisLine, pack
from sluiceway.runtime.wire import (
    ErrorRecord,
    JobRecord,
    ResultRecord,
    WireError,
    WorkerRecord,
    decode_cancels,
    live_workers,
)

logger = logging.getLogger(__name__)

_READ_BLOCK_MS = 500
_RECONNECT_S = 0.25


@dataclass(slots=True)
class _Finished:
    """A job done with: its entry to acknowledge, and what to send where."""

    stream: str
    model: str
    entry_id: bytes
    reply: str | None = None
    result: bytes | None = None
    dead_letter: dict[str, str | bytes | int | float] | None = None


class Worker:
    """Serves ``kinds`` from the job streams of the broker in ``settings``."""

    def __init__(
        self,
        settings: Settings,
        kinds: Sequence[ModelKind],
        metrics: Metrics,
        worker_id: str | None = None,
    ) -> None:
        if not settings.broker_url:
            raise ValueError("a worker needs settings.broker_url")
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._settings = settings
        self._metrics = metrics
        self._keys = Keys(settings.broker_prefix, settings.broker_partitions)
        budget = int(settings.model_cache_budget_mb * 1024 * 1024)
        self._local = LocalDispatcher(kinds, budget, metrics)
        self._models = tuple(kind.name for kind in kinds)
        self._model_of = {
            stream: model for model in self._models for stream in self._keys.all_jobs(model)
        }
        self._redis: Redis | None = None  # membership, ownership, claims: off the hot path
        self._line: RedisLine | None = None  # answers and acknowledgements
        self._connected = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self._owned: list[str] = []
        self._winning: dict[str, float] = {}  # partition won → when its hand-over is over
        # The blocking read has a connection of its own, so it can be told to stop waiting.
        self._reader = GroupReader(settings.broker_url, GROUP, self.id, _READ_BLOCK_MS)
        self._running: set[asyncio.Future[Any]] = set()
        self._queued: dict[str, asyncio.Future[Any]] = {}  # job id → its result, while here
        self._gone: dict[str, float] = {}  # job id → deadline: its requester left
        self._room = asyncio.Event()
        self._finished: list[_Finished] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Future[list[Any]]] = set()  # flushes not yet answered
        self._reloads: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._reading: asyncio.Task[None] | None = None
        self._health: asyncio.Server | None = None

    @property
    def dispatcher(self) -> LocalDispatcher:
        """The embedded runtime this worker feeds (for inspection and tests)."""
        return self._local

    @property
    def owned(self) -> list[str]:
        """The partition streams this worker reads now."""
        return list(self._owned)

    def ready(self) -> bool:
        """Connected to the broker and taking jobs."""
        return self._connected and not self._stopping

    @property
    def health_port(self) -> int | None:
        """The port the probes answer on (``None`` when they are off)."""
        if self._health is None:
            return None
        port: int = self._health.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Connect, join the consumer groups, and start reading, replying and heartbeating.

        The probe port is bound first, so a worker that cannot start never registers; one that
        fails later in start-up leaves the registry again before the error propagates.
        """
        await self._local.start()
        try:
            port = self._settings.worker_port
            if port is not None:
                self._health = await _bind_probes(self._answer_probe, self._settings.host, port)
            self._redis = connect(self._settings.broker_url or "")
            await self._beat()
            self._reading = asyncio.create_task(self._read(), name="worker read")
            self._tasks = [
                asyncio.create_task(self._heartbeat(), name="worker heartbeat"),
                asyncio.create_task(self._listen_for_cancels(), name="worker cancels"),
            ]
        except BaseException:
            await self.close()
            raise
        probes = f"; probes on {self._settings.host}:{self.health_port}" if self._health else ""
        logger.info("worker %s serving %s%s", self.id, ", ".join(self._models), probes)

    async def close(self) -> None:
        """Stop reading, answer what was read, leave the registry so others take over."""
        self._stopping = True
        if self._health is not None:
            self._health.close()
            self._health = None
        self._stopped.set()
        self._room.set()
        if self._reading is not None:
            # Jobs delivered to a read cut short stay pending; others claim them once we leave.
            await stop_tasks([self._reading], _READ_BLOCK_MS / 1000 + 1)
            self._reading = None
        if self._running:
            await asyncio.wait(set(self._running), timeout=self._settings.request_timeout_s)
        await self._local.close()
        await stop_tasks(self._tasks, _READ_BLOCK_MS / 1000 + 1)
        self._tasks = []
        self._flush()
        if self._sending:  # the last answers and acknowledgements
            await asyncio.wait(set(self._sending), timeout=STALLED_S)
        await stop_tasks(list(self._reloads), STALLED_S)
        if self._redis is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await self._redis.hdel(self._keys.workers, self.id)
            await self._redis.aclose()
            self._redis = None
        if self._line is not None:
            self._line.close()
            self._line = None
        self._reader.reset()
        logger.info("worker %s stopped", self.id)

    # Cancellations: requesters that left.

    async def _listen_for_cancels(self) -> None:
        """Hold a subscription to the cancel channel for the worker's lifetime."""
        while not self._stopping:
            if not self._connected:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), _RECONNECT_S)
                continue
            try:
                line = await RedisLine.open(self._settings.broker_url or "", on_push=self._heard)
            except BROKER_ERRORS:
                await asyncio.sleep(_RECONNECT_S)
                continue
            try:
                line.write(pack("SUBSCRIBE", self._keys.cancels))
                stopped = asyncio.ensure_future(self._stopped.wait())
                lost = asyncio.ensure_future(line.wait_lost())
                try:
                    await asyncio.wait({stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                    lost.cancel()
            except BROKER_ERRORS:
                await asyncio.sleep(_RECONNECT_S)
            finally:
                line.close()

    def _heard(self, message: Any) -> None:
        if not (isinstance(message, list) and len(message) == 3 and message[0] == b"message"):
            return
        try:
            cancels = decode_cancels(message[2])
        except WireError:
            logger.exception("dropped an undecodable cancel")
            return
        for job_id, deadline in cancels:
            self._gone[job_id] = deadline
            future = self._queued.get(job_id)
            if future is not None:
                future.cancel()  # the batcher drops it unrun unless its call has started

    # Membership, ownership and claiming.

    async def _heartbeat(self) -> None:
        while not self._stopping:
            pause = self._settings.worker_heartbeat_s if self._connected else _RECONNECT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), pause)
            if not self._stopping:
                await self._beat()

    async def _beat(self) -> None:
        """Say we are alive, recompute owned partitions, claim what dead or stuck workers hold."""
        assert self._redis is not None
        now = time.time()
        if self._gone:  # a cancelled job past its deadline is skipped as expired anyway
            self._gone = {job_id: until for job_id, until in self._gone.items() if until > now}
        try:
            if not self._connected:
                await fresh_connections(self._redis)
                await FINISH.load(self._redis)
                if self._line is not None:
                    self._line.close()
                self._line = await RedisLine.open(self._settings.broker_url or "")
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(self._keys.workers, self.id, WorkerRecord(self._models, now).encode())
                pipe.hgetall(self._keys.workers)
                _, registry = await pipe.execute()
            if not self._connected:
                await self._join_groups()
                logger.info("worker %s connected to the job broker", self.id)
                self._connected = True
            live = live_workers(registry, now, self._settings.worker_dead_after_s)
            await self._forget_departed(registry, live, now)
            await self._take_ownership(live, now)
            await self._claim(live)
        except BROKER_ERRORS as error:
            self._lost(error)
        except ResponseError as error:  # NOGROUP: Redis restarted and lost the groups
            logger.warning("job broker error: %s; rejoining", error)
            self._connected = False

    async def _join_groups(self) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self._model_of:
                pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            for reply in await pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                    raise reply

    async def _forget_departed(
        self, registry: dict[bytes, bytes], live: dict[str, WorkerRecord], now: float
    ) -> None:
        """Drop registry entries of workers silent for ten times the dead-after delay."""
        assert self._redis is not None
        horizon = 10 * self._settings.worker_dead_after_s
        departed = []
        for worker, data in registry.items():
            record = WorkerRecord.decode(data)
            if worker.decode() not in live and (record is None or now - record.seen > horizon):
                departed.append(worker)
        if departed:
            await self._redis.hdel(self._keys.workers, *departed)

    async def _take_ownership(self, live: dict[str, WorkerRecord], now: float) -> None:
        """Read the partitions this worker wins now, after a hand-over delay for new ones.

        A partition won from another worker is read only after two heartbeats, by when its
        previous owner has seen the change and stopped reading it: one partition, one reader,
        so a restaurant is never fitted on two workers at once. A partition lost is dropped at
        once: any change cuts short the blocking read, which restarts on the new set.
        """
        alone = True
        won: list[str] = []
        for model in self._models:
            serving = sorted(w for w, record in live.items() if model in record.models)
            if self.id not in serving:
                serving.append(self.id)
            alone = alone and len(serving) == 1
            for partition in range(self._keys.partitions):
                if owner(model, partition, serving) == self.id:
                    won.append(self._keys.jobs(model, partition))
        handover = 2 * self._settings.worker_heartbeat_s
        self._winning = {
            stream: self._winning.get(stream, now + (0 if alone else handover))
            for stream in won
            if stream not in self._owned
        }
        owned = [s for s in won if s in self._owned or self._winning[s] <= now]
        if set(owned) == set(self._owned):
            return
        self._owned = owned
        reader_id = self._reader.id
        if reader_id is not None:
            assert self._redis is not None
            await self._redis.client_unblock(reader_id)

    async def _claim(self, live: dict[str, WorkerRecord]) -> None:
        """Take over the unanswered jobs of dead workers (at once) and stuck ones (after the
        visibility timeout) in the partitions this worker owns."""
        assert self._redis is not None
        visibility_ms = int(self._settings.broker_visibility_timeout_s * 1000)
        owned = self._owned
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in owned:
                pipe.xpending(stream, GROUP)
            summaries = await pipe.execute()
        for stream, summary in zip(owned, summaries, strict=True):
            room = self._settings.worker_prefetch - len(self._running)
            if room <= 0:
                return
            if not summary["pending"]:
                continue
            for consumer in summary["consumers"]:
                name = as_text(consumer["name"])
                if name == self.id:
                    continue
                dead = name not in live
                rows = cast(
                    list[dict[str, Any]],
                    await self._redis.xpending_range(
                        stream, GROUP, "-", "+", room, name, None if dead else visibility_ms
                    ),
                )
                if not rows:
                    continue
                # Claim only entries still as idle as we saw them: if another worker claimed
                # one meanwhile its idle time restarted, and this claim skips it.
                min_idle = min(row["time_since_delivered"] for row in rows)
                ids = [row["message_id"] for row in rows]
                deliveries = {row["message_id"]: row["times_delivered"] for row in rows}
                claimed = cast(
                    list[Entry], await self._redis.xclaim(stream, GROUP, self.id, min_idle, ids)
                )
                logger.warning(
                    "worker %s claimed %d jobs of %s worker %s on %s",
                    self.id, len(claimed), "dead" if dead else "stuck", name, stream,
                )  # fmt: skip
                for entry_id, fields in claimed:
                    if deliveries.get(entry_id, 0) >= self._settings.broker_max_deliveries:
                        self._bury(stream, entry_id, fields, deliveries[entry_id])
                    else:
                        self._accept(stream, entry_id, fields)
                self._metrics.reclaimed.inc(len(claimed))
                room -= len(claimed)
                if dead and len(rows) == consumer["pending"]:
                    await self._redis.xgroup_delconsumer(stream, GROUP, name)

    def _bury(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes] | None, deliveries: int
    ) -> None:
        """Dead-letter a job that was delivered too often without an answer."""
        model = self._model_of[stream]
        data = entry_field(fields, b"j") or b""
        reason = f"delivered {deliveries} times without an answer (workers crashed or stalled)"
        logger.error("dead-lettering job %s of %s: %s", entry_id.decode(), model, reason)
        finished = _Finished(stream, model, entry_id, dead_letter=self._letter(data, reason))
        with contextlib.suppress(WireError):
            record = JobRecord.decode(data)
            finished.reply = record.reply
            error = ErrorRecord.of(ModelUnavailable(f"{model} could not run this job: {reason}"))
            finished.result = ResultRecord(record.job.id, error=error).encode()
        self._finish(finished)

    def _letter(self, data: bytes, error: str) -> dict[str, str | bytes | int | float]:
        return {"job": data, "error": error, "worker": self.id, "at": time.time()}

    # Reading and running jobs.

    async def _read(self) -> None:
        reader = self._reader
        while not self._stopping:
            room = self._settings.worker_prefetch - len(self._running)
            owned = self._owned
            if not self._connected or not owned:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), _RECONNECT_S)
                continue
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            count = min(self._settings.worker_read_count, max(1, room // len(owned)))
            try:
                entries = await reader.read(owned, count)
            except BROKER_ERRORS as error:
                self._lost(error)
                await asyncio.sleep(_RECONNECT_S)
                continue
            except ResponseError as error:  # NOGROUP: the heartbeat rejoins the groups
                logger.warning("job broker error: %s; rejoining", error)
                self._connected = False
                continue
            for stream, entry_id, fields in entries:
                self._accept(stream, entry_id, fields)
            if entries:
                await _let_started_jobs_run()

    def _accept(self, stream: str, entry_id: bytes, fields: Any) -> None:
        model = self._model_of[stream]
        data = entry_field(fields, b"j")
        if data is None:  # deleted meanwhile: nothing to run, nothing to answer
            self._finish(_Finished(stream, model, entry_id))
            return
        try:
            record = JobRecord.decode(data)
        except WireError as error:
            logger.error("dead-lettering an undecodable job on %s: %s", stream, error)
            self._finish(
                _Finished(stream, model, entry_id, dead_letter=self._letter(data, str(error)))
            )
            return
        job = record.job
        remaining = job.remaining()
        if remaining <= 0:  # its caller has had its 504: no dead work
            self._metrics.expired.labels(model).inc()
            self._finish(_Finished(stream, model, entry_id))
            return
        if self._gone and self._gone.pop(job.id, None) is not None:  # its requester left
            self._metrics.cancelled.labels(model).inc()
            self._finish(_Finished(stream, model, entry_id))
            return
        finished = _Finished(stream, model, entry_id, reply=record.reply)
        try:
            future = self._local.enqueue(job)
        except SluicewayError as error:
            self._fail(finished, data, job.id, error)
            return
        # A callback, not a task per job: at thousands of jobs a second the tasks cost more
        # than the model. The timer gives up on a job still queued at its deadline.
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + remaining, future.cancel)
        self._running.add(future)
        self._queued[job.id] = future
        future.add_done_callback(lambda done: self._ran(done, timer, finished, data, job.id))

    def _ran(
        self,
        future: asyncio.Future[Any],
        timer: asyncio.TimerHandle,
        finished: _Finished,
        data: bytes,
        job_id: str,
    ) -> None:
        timer.cancel()
        self._running.discard(future)
        self._queued.pop(job_id, None)
        self._room.set()
        if future.cancelled() and self._gone.pop(job_id, None) is not None:
            self._finish(_Finished(finished.stream, finished.model, finished.entry_id))
        elif future.cancelled():
            deadline = DeadlineExceeded(f"{finished.model} did not answer before the deadline")
            self._fail(finished, data, job_id, deadline)
        elif (error := future.exception()) is not None:
            self._fail(finished, data, job_id, error)
        else:
            self._reply(finished, ResultRecord(job_id, future.result()))

    def _fail(self, finished: _Finished, data: bytes, job_id: str, error: BaseException) -> None:
        """Answer a job with its error; one the model itself raised is also kept for a look."""
        failure = ErrorRecord.of(error)
        if not isinstance(error, SluicewayError):
            finished.dead_letter = self._letter(data, failure.message)
        self._reply(finished, ResultRecord(job_id, error=failure))

    def _reply(self, finished: _Finished, result: ResultRecord) -> None:
        try:
            finished.result = result.encode()
        except WireError as error:
            finished.result = ResultRecord(result.job_id, error=ErrorRecord.of(error)).encode()
        self._finish(finished)

    # Replying and acknowledging.

    def _finish(self, finished: _Finished) -> None:
        """Queue a job's answer and acknowledgement; all finished in one loop turn go together."""
        self._finished.append(finished)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write answers, dead letters and acknowledgements of everything finished, in one
        pipeline; answers go first so a crash in between re-runs a job rather than loses it.
        The answers for one API node travel as one message. Replies are checked in a callback."""
        self._flush_scheduled = False
        batch, self._finished = self._finished, []
        if not batch:
            return
        line = self._line
        if line is None or not line.connected:
            self._lost(ConnectionError("the connection to the job broker is down"))
            logger.warning("dropped %d answers: the broker is unreachable", len(batch))
            return
        dead_max = self._settings.broker_dead_letter_max
        answers: defaultdict[str, list[bytes]] = defaultdict(list)
        acks: defaultdict[tuple[str, str], list[bytes]] = defaultdict(list)
        commands: list[bytes] = []
        for item in batch:
            if item.reply is not None and item.result is not None:
                answers[item.reply].append(item.result)
            if item.dead_letter is not None:
                self._metrics.dead_letters.labels(item.model).inc()
                fields = [part for pair in item.dead_letter.items() for part in pair]
                dead = self._keys.dead_letters(item.model)
                commands.append(pack("XADD", dead, "MAXLEN", "~", dead_max, "*", *fields))
            acks[item.stream, item.model].append(item.entry_id)
        for reply, results in answers.items():
            commands.append(pack("PUBLISH", reply, b"".join(results)))
        finishing = [
            FINISH.call([stream, self._keys.queued(model)], [GROUP, *ids])
            for (stream, model), ids in acks.items()
        ]
        sent = line.send(b"".join(commands + finishing), len(commands) + len(finishing))
        self._sending.add(sent)
        sent.add_done_callback(lambda replies: self._flushed(replies, finishing, len(batch)))

    def _flushed(
        self, replies: asyncio.Future[list[Any]], finishing: list[bytes], answered: int
    ) -> None:
        self._sending.discard(replies)
        if (error := replies.exception()) is not None:
            self._lost(error)
            logger.warning("dropped %d answers: the broker is unreachable", answered)
            return
        results = replies.result()
        acks = results[len(results) - len(finishing) :]
        unknown = [call for call, reply in zip(finishing, acks, strict=True) if missing(reply)]
        if unknown:
            # Redis restarted or flushed its scripts. Answers went out; those acknowledgements
            # did not run: load the script and send them again.
            task = asyncio.create_task(self._finish_again(unknown), name="reload finish")
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
        for result in results:
            if isinstance(result, Exception) and not missing(result):
                logger.warning("job broker refused a write: %s", result)

    async def _finish_again(self, finishing: list[bytes]) -> None:
        line = self._line
        if self._redis is None or line is None:
            return
        try:
            await FINISH.load(self._redis)
            async with asyncio.timeout(STALLED_S):
                results = await line.send(b"".join(finishing), len(finishing))
        except BROKER_ERRORS as error:
            self._lost(error)
            return
        for result in results:
            if isinstance(result, Exception):
                logger.warning("job broker refused a write: %s", result)

    def _lost(self, error: BaseException) -> None:
        if self._connected:
            logger.warning("worker %s lost the job broker: %s", self.id, error)
        self._connected = False

    # Probes for orchestrators.

    async def _answer_probe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A minimal HTTP/1.0 responder: ``/healthz``, ``/readyz`` and ``/metrics``."""
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)).strip():
                pass  # headers: nothing in them matters here
            parts = request.split()
            path = parts[1].decode(errors="replace") if len(parts) > 1 else ""
            status, body, kind = 404, b"not found\n", "text/plain"
            if path == "/healthz":
                status, body = 200, b"ok\n"
            elif path == "/readyz":
                status, body = (200, b"ready\n") if self.ready() else (503, b"not ready\n")
            elif path == "/metrics":
                status, body, kind = (
                    200,
                    generate_latest(self._metrics.registry),
                    CONTENT_TYPE_LATEST,
                )
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = f"HTTP/1.0 {status} {reason}\r\nContent-Type: {kind}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


# How many ports above SLUICEWAY_WORKER_PORT a worker tries when it is taken: several workers on
# one host (the README's scale-out example) each get their own probes, 8001, 8002, ...
_PROBE_PORTS_TRIED = 64


async def _bind_probes(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: str,
    port: int,
) -> asyncio.Server:
    """Serve ``handler`` on ``port``, or the first free port above it (``0``: any free one)."""
    last = min(65535, port + _PROBE_PORTS_TRIED - 1) if port else 0
    for candidate in range(port, last + 1):
        try:
            server = await asyncio.start_server(handler, host, candidate)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            continue
        if candidate != port:
            logger.info("probe port %d is taken; answering probes on %d", port, candidate)
        return server
    raise OSError(
        errno.EADDRINUSE, f"probe ports {port}-{last} on {host} are all taken (worker_port)"
    )


async def _let_started_jobs_run() -> None:
    """Yield until the jobs just accepted have reached their model, before the next read.

    A batcher takes two loop turns to start a model call (its driver step, then the batch's
    task); without this the next XREADGROUP is packed and sent first, which put ~0.1 ms on
    every job's latency at light load.
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def select_kinds(kinds: Sequence[ModelKind], names: str) -> list[ModelKind]:
    """The kinds named in a comma-separated list (all of them when it is empty)."""
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    if not wanted:
        return list(kinds)
    known = {kind.name: kind for kind in kinds}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(known)}")
    return [known[name] for name in wanted]


async def serve_until_signalled(settings: Settings, kinds: Sequence[ModelKind]) -> None:
    """Run one worker until SIGTERM or SIGINT, then stop gracefully (the ``worker`` command)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(settings, kinds, Metrics())
    await worker.start()  # leaves nothing registered if it fails
    # What start-up made (modules, models) lives as long as the process: keep it out of the
    # collector's passes, as the API node does.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        await worker.close()
