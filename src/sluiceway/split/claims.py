"""Jobs other workers left unanswered, taken over; jobs that cannot run, dead-lettered.

Delivery is at least once. A worker acknowledges a job only after writing its answer; the jobs
of a worker that stopped heartbeating are claimed at once by the partition's new owner, those
of a live worker after the visibility timeout. A job delivered ``broker_max_deliveries`` times
without an answer goes to the dead-letter stream, and so does a job the model itself failed on.

A worker's own deliveries can be lost too, with the worker alive: a read or claim whose reply
was cut off (Redis has delivered the jobs; the worker never saw them), answers that could not be
sent, or a restart under the same name. No other worker takes those while it owns their
partition, so it takes them back itself (:meth:`Claims.recover`) before its next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Container, Sequence
from typing import Any, cast

from sluiceway.config import Settings
from sluiceway.errors import ModelUnavailable
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.answers import Answers, DeadLetter, Finished
from sluiceway.split.connection import Broker
from sluiceway.split.keys import GROUP
from sluiceway.split.reader import Entry, as_text, entry_field
from sluiceway.split.wire import ErrorRecord, JobRecord, ResultRecord, WireError, WorkerRecord

logger = logging.getLogger(__name__)

Run = Callable[[str, bytes, Any], None]
"""Runs a job taken from a stream: (stream, entry id, fields)."""

_PAGE = 200  # a worker's own pending jobs read at a time: its read-ahead, and what it lost


class Claims:
    """Claims what dead or stuck workers hold in this worker's partitions, and buries jobs
    delivered too often (and any job a caller hands over) as dead letters."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        worker: str,
        answers: Answers,
        metrics: Metrics,
        model_of: dict[str, str],
        hold: Callable[[str, bytes], None] = lambda stream, entry_id: None,
    ) -> None:
        """``hold(stream, entry id)``: a job buried here is the worker's until its dead letter
        and acknowledgement are sent, like one it runs, so a recovery meanwhile leaves it."""
        self._settings = settings
        self._broker = broker
        self._worker = worker
        self._answers = answers
        self._metrics = metrics
        self._model_of = model_of
        self._hold = hold
        # Claiming and recovering take turns: a job claimed from another worker is this
        # worker's as soon as Redis runs the claim, before the reply says so, and must not
        # look lost to a recovery meanwhile.
        self._turn = asyncio.Lock()
        self._lost = True  # a worker may restart under its old name, with jobs pending

    @property
    def lost_some(self) -> bool:
        """Jobs delivered to this worker may have been lost on the way: recover before reading."""
        return self._lost

    def lose(self) -> None:
        """Say a delivery or an answer may have been lost (a read or claim cut off, answers
        not sent), so the next :meth:`recover` looks."""
        self._lost = True

    async def recover(
        self,
        streams: Sequence[str],
        held: Container[tuple[str, bytes]],
        run: Run,
    ) -> int:
        """Claim back and ``run`` the jobs pending for this worker in ``streams`` that it no
        longer ``held`` (as (stream, entry id)); bury those delivered too often. The caller
        must have no read under way, whose jobs would look lost. Returns how many it took.
        """
        async with self._turn:
            self._lost = False
            try:
                # One round trip finds the streams with jobs pending for this worker: it looks
                # at every stream it serves, not only those it reads now (a partition it is
                # about to own, one it stopped helping), where no other worker would take them.
                async with self._broker.redis.pipeline(transaction=False) as pipe:
                    for stream in streams:
                        pipe.xpending(stream, GROUP)
                    summaries = await pipe.execute()
                took = 0
                for stream, summary in zip(streams, summaries, strict=True):
                    if any(as_text(c["name"]) == self._worker for c in summary["consumers"]):
                        took += await self._recover(stream, held, run)
                return took
            except BaseException:
                self._lost = True
                raise

    async def _recover(self, stream: str, held: Container[tuple[str, bytes]], run: Run) -> int:
        redis, start, took = self._broker.redis, "-", 0
        while True:
            rows = cast(
                list[dict[str, Any]],
                await redis.xpending_range(stream, GROUP, start, "+", _PAGE, self._worker),
            )
            lost = [row for row in rows if (stream, row["message_id"]) not in held]
            if lost:
                # One the partition's owner claimed meanwhile (lost so long ago that it counted
                # it stuck) is its to run now: ``_take`` leaves it.
                took += await self._take(stream, lost, run, "delivered to it and lost")
            if len(rows) < _PAGE:
                return took
            start = "(" + as_text(rows[-1]["message_id"])

    async def _take(self, stream: str, rows: list[dict[str, Any]], run: Run, whose: str) -> int:
        """Claim the entries of ``rows`` (XPENDING's) and ``run`` each, or bury it if it was
        delivered too often; returns how many were claimed.

        Only entries still as idle as we saw them are claimed: one another worker claimed
        meanwhile has its idle time restarted, and is skipped.
        """
        min_idle = min(row["time_since_delivered"] for row in rows)
        ids = [row["message_id"] for row in rows]
        deliveries = {row["message_id"]: row["times_delivered"] for row in rows}
        redis = self._broker.redis
        claimed = cast(list[Entry], await redis.xclaim(stream, GROUP, self._worker, min_idle, ids))
        logger.warning(
            "worker %s claimed %d jobs %s on %s", self._worker, len(claimed), whose, stream
        )
        for entry_id, fields in claimed:
            if deliveries.get(entry_id, 0) >= self._settings.broker_max_deliveries:
                self._bury(stream, entry_id, fields, deliveries[entry_id])
            else:
                run(stream, entry_id, fields)
        self._metrics.reclaimed.inc(len(claimed))
        return len(claimed)

    async def claim(
        self,
        owned: list[str],
        live: dict[str, WorkerRecord],
        room: Callable[[], int],
        run: Run,
    ) -> None:
        """Take over the unanswered jobs of dead workers (at once) and stuck ones (after the
        visibility timeout) in ``owned``, up to ``room()`` of them; ``run`` each one claimed."""
        async with self._turn:
            try:
                await self._claim(owned, live, room, run)
            except BaseException:
                self._lost = True  # a claim cut off leaves its jobs ours, unseen
                raise

    async def _claim(
        self,
        owned: list[str],
        live: dict[str, WorkerRecord],
        room: Callable[[], int],
        run: Run,
    ) -> None:
        redis = self._broker.redis
        visibility_ms = int(self._settings.broker_visibility_timeout_s * 1000)
        async with redis.pipeline(transaction=False) as pipe:
            for stream in owned:
                pipe.xpending(stream, GROUP)
            summaries = await pipe.execute()
        for stream, summary in zip(owned, summaries, strict=True):
            left = room()
            if left <= 0:
                return
            if not summary["pending"]:
                continue
            for consumer in summary["consumers"]:
                name = as_text(consumer["name"])
                if name == self._worker:  # ours: see ``recover``
                    continue
                dead = name not in live
                rows = cast(
                    list[dict[str, Any]],
                    await redis.xpending_range(
                        stream, GROUP, "-", "+", left, name, None if dead else visibility_ms
                    ),
                )
                if not rows:
                    continue
                whose = f"of {'dead' if dead else 'stuck'} worker {name}"
                left -= await self._take(stream, rows, run, whose)
                if dead and len(rows) == consumer["pending"]:
                    await redis.xgroup_delconsumer(stream, GROUP, name)

    def letter(self, data: bytes, error: str) -> DeadLetter:
        """The dead letter of a job (its bytes as read) that failed with ``error``."""
        return {"job": data, "error": error, "worker": self._worker, "at": time.time()}

    def _bury(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes] | None, deliveries: int
    ) -> None:
        """Dead-letter a job that was delivered too often without an answer."""
        model = self._model_of[stream]
        data = entry_field(fields, b"j") or b""
        reason = (
            f"delivered {deliveries} times without an answer"
            " (workers crashed, stalled or lost Redis while it ran)"
        )
        logger.error("dead-lettering job %s of %s: %s", entry_id.decode(), model, reason)
        self._hold(stream, entry_id)
        finished = Finished(stream, model, entry_id, dead_letter=self.letter(data, reason))
        with contextlib.suppress(WireError):
            record = JobRecord.decode(data)
            finished.reply = record.reply
            error = ErrorRecord.of(ModelUnavailable(f"{model} could not run this job: {reason}"))
            finished.result = ResultRecord(record.job.id, error=error).encode()
        self._answers.finish(finished)
