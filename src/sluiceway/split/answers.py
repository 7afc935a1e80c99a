"""A worker's answers: results, dead letters and acknowledgements, one pipeline per loop turn."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sluiceway.config import Settings
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.connection import STALLED_S, Broker
from sluiceway.split.keys import GROUP, Keys
from sluiceway.split.line import pack
from sluiceway.split.outbox import Outbox
from sluiceway.split.scripts import FINISH
from sluiceway.split.wire import ErrorRecord, ResultRecord, WireError

logger = logging.getLogger(__name__)

DeadLetter = dict[str, str | bytes | int | float]
"""The fields of a dead-letter stream entry."""


@dataclass(slots=True)
class Finished:
    """A job done with: its entry to acknowledge, and what to send where."""

    stream: str
    model: str
    entry_id: bytes
    reply: str | None = None
    result: bytes | None = None
    dead_letter: DeadLetter | None = None


class Answers:
    """Sends what finished jobs owe: an answer to the API node that asked, a dead letter when
    the job could not run, and the acknowledgement that takes it off its stream."""

    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        broker: Broker,
        metrics: Metrics,
        settled: Callable[[list[Finished], bool], None] = lambda batch, sent: None,
    ) -> None:
        """``settled(batch, sent)`` is told of each batch once Redis has answered its writes
        (``sent``), or once they failed: their jobs are then still pending, unanswered."""
        self._settings = settings
        self._keys = keys
        self._broker = broker
        self._metrics = metrics
        self._outbox: Outbox[Finished] = Outbox(self._send)
        self._sending: set[asyncio.Future[list[Any]]] = set()  # pipelines not yet answered
        self._settled = settled

    def finish(self, finished: Finished) -> None:
        """Owe ``finished``'s writes; all of a loop turn's go together at its end."""
        self._outbox.add(finished)

    def reply(self, finished: Finished, result: ResultRecord) -> None:
        """Owe ``finished`` with ``result`` as its answer (a value that cannot be sent is
        answered as that error)."""
        try:
            finished.result = result.encode()
        except WireError as error:
            finished.result = ResultRecord(result.job_id, error=ErrorRecord.of(error)).encode()
        self.finish(finished)

    async def drain(self) -> None:
        """Send what is gathered now and wait (bounded) until Redis has answered it all."""
        self._outbox.flush()
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=STALLED_S)

    def _send(self, batch: list[Finished]) -> None:
        """Answers go first, so a crash in between re-runs a job rather than loses it; the
        answers for one API node travel as one message."""
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
        for (stream, model), ids in acks.items():
            commands.append(FINISH.call([stream, self._keys.queued(model)], [GROUP, *ids]))
        sent = self._broker.send(commands)
        self._sending.add(sent)
        sent.add_done_callback(lambda replies: self._sent(replies, batch))

    def _sent(self, replies: asyncio.Future[list[Any]], batch: list[Finished]) -> None:
        self._sending.discard(replies)
        failed = replies.cancelled() or replies.exception() is not None
        self._settled(batch, not failed)
        if failed:
            logger.warning("dropped %d answers: the broker is unreachable", len(batch))
            return
        for result in replies.result():
            if isinstance(result, Exception):
                logger.warning("job broker refused a write: %s", result)
