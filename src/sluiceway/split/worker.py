"""The model worker of split mode: read jobs, run them on the embedded runtime, answer.

A worker reads the partitions it owns (``membership.py``) in batches with XREADGROUP and feeds
a ``LocalDispatcher``: the same batchers and model cache as embedded mode. Because a
restaurant's jobs always land in one partition, they meet in one batcher on one worker, and
its model is fitted there once. Each job's answer and acknowledgement go out together, one
pipeline per loop turn (``answers.py``); what dead or stuck workers left is claimed, and what
cannot run is dead-lettered (``claims.py``); a job whose requester left is not run
(``cancels.py``). A worker with room also takes what waits in saturated owners' partitions
(``helping.py``). The heartbeat moves the rest (``heartbeat.py``): this is the read → run →
answer loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

from redis.exceptions import ResponseError

from sluiceway.config import Settings
from sluiceway.errors import DeadlineExceeded, SluicewayError
from sluiceway.models.base import ModelKind
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.runtime.jobs import Counting, Job
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.stats import Watch
from sluiceway.runtime.triton_metrics import ModelMetrics, render
from sluiceway.split.answers import Answers, Finished
from sluiceway.split.cancels import Cancels
from sluiceway.split.claims import Claims
from sluiceway.split.connection import BROKER_ERRORS, RECONNECT_S, Broker, stop_tasks
from sluiceway.split.convergence import Convergence
from sluiceway.split.heartbeat import Heartbeat
from sluiceway.split.keys import GROUP, Keys
from sluiceway.split.membership import Membership
from sluiceway.split.probes import Probes
from sluiceway.split.reader import GroupReader, entry_field
from sluiceway.split.scripts import FINISH
from sluiceway.split.wire import CallTiming, ErrorRecord, JobRecord, ResultRecord, WireError

logger = logging.getLogger(__name__)

_READ_BLOCK_MS = 500
_HELP_POLL_MS = 20  # while helping: how long the read of owned partitions blocks between polls


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
        unnamed = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.id = worker_id or settings.worker_id or unnamed
        self._settings = settings
        self._metrics = metrics
        keys = Keys(settings.broker_prefix, settings.broker_partitions)
        budget = int(settings.model_cache_budget_mb * 1024 * 1024)
        self._local = LocalDispatcher(kinds, budget, metrics)
        models = tuple(kind.name for kind in kinds)
        self._models = models
        self._broker = Broker(settings.broker_url, [FINISH], name=f"worker {self.id}")
        self._membership = Membership(
            settings, keys, self._broker, self.id, models, self._local.statistics.calls
        )
        self._model_of = self._membership.model_of
        # The blocking read has a connection of its own, so it can be told to stop waiting.
        self._reader = GroupReader(settings.broker_url, GROUP, self.id, _READ_BLOCK_MS)
        cut_short = partial(self._reader.cut_short, self._broker)
        self._convergence = Convergence(
            settings, keys, self._broker, self._local, self._membership, cut_short
        )
        self._answers = Answers(settings, keys, self._broker, metrics, self._settled)
        self._claims = Claims(
            settings, self._broker, self.id, self._answers, metrics, self._model_of, self._hold
        )
        self._cancels = Cancels(self._broker, keys)
        self._heartbeat = Heartbeat(
            settings,
            self._broker,
            self._membership,
            self._convergence,
            self._claims,
            self._cancels,
            self._reader,
            metrics,
            self._room_left,
            self._accept,
        )
        self._probes: Probes | None = None
        if settings.worker_port is not None:
            self._probes = Probes(
                self.ready,
                metrics.registry,
                settings.host,
                settings.worker_port,
                self._triton_metrics if settings.triton_metrics else bytes,
            )
        self._running: set[asyncio.Future[Any]] = set()
        # The jobs taken and not yet acknowledged, as (stream, entry id): any other job pending
        # for this worker was lost on the way to it (``Claims.recover``).
        self._held: set[tuple[str, bytes]] = set()
        self._room = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    @property
    def dispatcher(self) -> LocalDispatcher:
        """The embedded runtime this worker feeds (for inspection and tests)."""
        return self._local

    @property
    def owned(self) -> list[str]:
        """The partition streams this worker reads now."""
        return list(self._membership.owned)

    @property
    def helped(self) -> list[str]:
        """Saturated partitions of other workers this worker reads too (``helping.py``)."""
        return list(self._membership.helped)

    def _triton_metrics(self) -> bytes:
        """Triton's metrics of the model calls of the models this worker serves: their count
        and the jobs waiting for one. The requests are counted by the API nodes, which see
        them whole (a request of several rows may run on several workers)."""
        versions = {
            name: status.version for name, status in self._convergence.report().models.items()
        }
        statistics = self._local.statistics
        rows = [
            ModelMetrics(
                name, versions.get(name) or "1", statistics.of(name), self._metrics.queued(name)
            )
            for name in self._local.models()
        ]
        return render(rows, requests=False)

    def ready(self) -> bool:
        """Connected to the broker and taking jobs."""
        return self._broker.connected and self._membership.joined and not self._stopping

    @property
    def health_port(self) -> int | None:
        """The port the probes answer on (``None`` when they are off)."""
        return self._probes.port if self._probes is not None else None

    async def start(self) -> None:
        """Connect, join the consumer groups, and start reading, replying and heartbeating.

        The probe port is bound first, so a worker that cannot start never registers; one that
        fails later in start-up leaves the registry again before the error propagates.
        """
        await self._local.start()
        try:
            if self._probes is not None:
                await self._probes.start()
            await self._heartbeat.beat()
            self._reading = asyncio.create_task(self._read(), name="worker read")
            self._heartbeat.start()
            self._cancels.start()
        except BaseException:
            await self.close()
            raise
        probes = f"; probes on {self._settings.host}:{self.health_port}" if self._probes else ""
        logger.info("worker %s serving %s%s", self.id, ", ".join(self._models), probes)

    async def close(self) -> None:
        """Stop reading, answer what was read, leave the registry so others take over."""
        self._stopping = True
        self._heartbeat.stop()
        if self._probes is not None:
            await self._probes.close()
        self._stopped.set()
        self._room.set()
        if self._reading is not None:
            # Jobs delivered to a read cut short stay pending; others claim them once we leave.
            await stop_tasks([self._reading], _READ_BLOCK_MS / 1000 + 1)
            self._reading = None
        if self._running:
            await asyncio.wait(set(self._running), timeout=self._settings.request_timeout_s)
        await self._convergence.close()
        await self._local.close()
        await self._cancels.close()
        await self._heartbeat.close(_READ_BLOCK_MS / 1000 + 1)
        await self._answers.drain()  # the last answers and acknowledgements
        with contextlib.suppress(*BROKER_ERRORS):
            await self._membership.leave()
        await self._broker.close()
        self._reader.reset()
        logger.info("worker %s stopped", self.id)

    def _room_left(self) -> int:
        return self._settings.worker_prefetch - len(self._running)

    # Read, run, answer.

    async def _read(self) -> None:
        while not self._stopping:
            room = self._room_left()
            owned, helped = self._membership.owned, self._membership.helped
            if not self.ready() or not (owned or helped):
                await self._pause(RECONNECT_S)
                continue
            if room <= 0:
                self._heartbeat.full = True
                self._room.clear()
                await self._room.wait()
                continue
            try:
                if self._claims.lost_some:  # before reading: no read under way is mistaken
                    streams = list(dict.fromkeys([*self._membership.served, *helped]))
                    await self._claims.recover(streams, self._held, self._accept)
                took = bool(helped) and await self._read_helped(owned, helped)
                if not owned and not took:  # a helper only: poll again shortly
                    await self._pause(_HELP_POLL_MS / 1000)
                if not owned or (took and (room := self._room_left()) <= 0):
                    continue
                count = min(self._settings.worker_read_count, max(1, room // len(owned)))
                block = _HELP_POLL_MS if helped else None
                await self._take(await self._reader.read(owned, count, block))
            except BROKER_ERRORS as error:
                self._claims.lose()  # Redis may have delivered what the read never saw
                self._broker.lost(error)
                await asyncio.sleep(RECONNECT_S)
            except ResponseError as error:  # NOGROUP: the heartbeat rejoins the groups
                logger.warning("job broker error: %s; rejoining", error)
                self._broker.lost(error)

    async def _read_helped(self, owned: list[str], helped: list[str]) -> bool:
        """Take what waits now in our own partitions, then in the helped ones into half the
        room left (never blocking: never a job their owner is free to take). Ours come first,
        or help would make a backlog here and call helpers onto our partitions in turn."""
        took, most = False, self._settings.worker_read_count
        for streams, share in ((owned, 1), (helped, 2)):
            if streams and (room := self._room_left()) > 0:
                count = min(most, max(1, room // (share * len(streams))))
                took = await self._take(await self._reader.read(streams, count, 0)) or took
        return took

    async def _take(self, entries: list[tuple[str, bytes, Any]]) -> bool:
        for stream, entry_id, fields in entries:
            self._accept(stream, entry_id, fields)
        if entries:  # let them reach their model before the next read: a batcher takes two
            await asyncio.sleep(0)  # loop turns to start a call (its driver, then the batch's
            await asyncio.sleep(0)  # task); reading first put ~0.1 ms on every job at light load
        return bool(entries)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the worker stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    def _hold(self, stream: str, entry_id: bytes) -> None:
        self._held.add((stream, entry_id))

    def _accept(self, stream: str, entry_id: bytes, fields: Any) -> None:
        self._held.add((stream, entry_id))
        model = self._model_of[stream]
        data = entry_field(fields, b"j")
        if data is None:  # deleted meanwhile: nothing to run, nothing to answer
            self._answers.finish(Finished(stream, model, entry_id))
            return
        try:
            record = JobRecord.decode(data)
        except WireError as error:
            logger.error("dead-lettering an undecodable job on %s: %s", stream, error)
            letter = self._claims.letter(data, str(error))
            self._answers.finish(Finished(stream, model, entry_id, dead_letter=letter))
            return
        job = record.job
        remaining = job.remaining()
        # The API node counts the job's request; here its model call is timed for the answer
        # (and counted by batch size: Triton's execution count on the worker's probes).
        job.counting = Counting.REMOTE
        statistics = self._local.statistics
        watch = statistics.watch(job)
        if remaining <= 0:  # its caller has had its 504: no dead work
            self._metrics.expired.labels(model).inc()
            self._answers.finish(Finished(stream, model, entry_id))
            statistics.done(job, watch, DeadlineExceeded("expired before a worker read it"))
            return
        if self._cancels.gone(job.id):  # its requester left
            self._metrics.cancelled.labels(model).inc()
            self._answers.finish(Finished(stream, model, entry_id))
            statistics.done(job, watch, asyncio.CancelledError())
            return
        finished = Finished(stream, model, entry_id, reply=record.reply)
        try:
            future = self._local.enqueue(job)
        except SluicewayError as error:
            self._fail(finished, data, job.id, error)
            statistics.done(job, watch, error)
            return
        # A callback, not a task per job: at thousands of jobs a second the tasks cost more
        # than the model. The timer gives up on a job still queued at its deadline.
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + remaining, future.cancel)
        self._running.add(future)
        self._cancels.track(job.id, future)
        future.add_done_callback(lambda done: self._ran(done, timer, finished, data, job, watch))

    def _ran(
        self,
        future: asyncio.Future[Any],
        timer: asyncio.TimerHandle,
        finished: Finished,
        data: bytes,
        job: Job,
        watch: Watch,
    ) -> None:
        timer.cancel()
        self._running.discard(future)
        self._cancels.untrack(job.id)
        self._room.set()
        statistics = self._local.statistics
        if future.cancelled() and self._cancels.gone(job.id):
            statistics.done(job, watch, asyncio.CancelledError())
            self._answers.finish(Finished(finished.stream, finished.model, finished.entry_id))
        elif future.cancelled():
            error = DeadlineExceeded(f"{finished.model} did not answer before the deadline")
            statistics.done(job, watch, error)
            self._fail(finished, data, job.id, error)
        elif (failure := future.exception()) is not None:
            statistics.done(job, watch, failure)
            self._fail(finished, data, job.id, failure)
        else:
            call = statistics.done(job, watch, None)
            timing = None
            if call is not None:
                started, ended = call
                timing = CallTiming(ended - started, time.perf_counter() - started)
            self._answers.reply(finished, ResultRecord(job.id, future.result(), timing=timing))

    def _settled(self, batch: list[Finished], sent: bool) -> None:
        """Jobs answered and acknowledged, or whose answers could not be sent (still pending:
        run again, at least once, once Redis is back)."""
        for finished in batch:
            self._held.discard((finished.stream, finished.entry_id))
        if not sent:
            self._claims.lose()

    def _fail(self, finished: Finished, data: bytes, job_id: str, error: BaseException) -> None:
        """Answer a job with its error; one the model itself raised is also kept for a look."""
        failure = ErrorRecord.of(error)
        if not isinstance(error, SluicewayError):
            finished.dead_letter = self._claims.letter(data, failure.message)
        self._answers.reply(finished, ResultRecord(job_id, error=failure))
