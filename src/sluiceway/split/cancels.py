"""Jobs whose requesters left, as a worker hears of them on the cancel channel.

An API node names a job whose caller left (``dispatcher.py``). The worker withdraws it unrun
if it is queued here (a call already started runs on) and remembers it until its deadline, so
that one still in a stream is skipped when read. Either way it is acknowledged without an
answer, since nobody waits for one. Best effort: a cancel missed only means a job runs for
nobody.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sluiceway.split.connection import Broker
from sluiceway.split.keys import Keys
from sluiceway.split.subscription import Subscription
from sluiceway.split.wire import WireError, decode_cancels

logger = logging.getLogger(__name__)


class Cancels:
    """Listens on the cancel channel; withdraws the jobs named and remembers them."""

    def __init__(self, broker: Broker, keys: Keys) -> None:
        self._subscription = Subscription(broker, keys.cancels, self._heard)
        self._queued: dict[str, asyncio.Future[Any]] = {}  # job id → its result, while here
        self._gone: dict[str, float] = {}  # job id → deadline: its requester left

    def start(self) -> None:
        """Listen from now on."""
        self._subscription.start()

    async def close(self) -> None:
        """Stop listening."""
        await self._subscription.close()

    def track(self, job_id: str, result: asyncio.Future[Any]) -> None:
        """A job queued here, withdrawn (its ``result`` cancelled) if its requester leaves."""
        self._queued[job_id] = result

    def untrack(self, job_id: str) -> None:
        """The job is done with."""
        self._queued.pop(job_id, None)

    def gone(self, job_id: str) -> bool:
        """Whether the job's requester left (asked once: the job is then forgotten)."""
        return bool(self._gone) and self._gone.pop(job_id, None) is not None

    def expire(self, now: float) -> None:
        """Forget jobs past their deadline: they are skipped as expired anyway."""
        if self._gone:
            self._gone = {job_id: until for job_id, until in self._gone.items() if until > now}

    def _heard(self, message: bytes) -> None:
        try:
            cancels = decode_cancels(message)
        except WireError:
            logger.exception("dropped an undecodable cancel")
            return
        for job_id, deadline in cancels:
            self._gone[job_id] = deadline
            future = self._queued.get(job_id)
            if future is not None:
                future.cancel()  # the batcher drops it unrun unless its call has started
