"""A worker's heartbeat: what it does once every ``worker_heartbeat_s``, apart from its reads.

Each beat says the worker is alive, publishes its model calls and recomputes the partitions it
owns and helps (``membership.py``), brings its models to the desired state
(``convergence.py``), cuts the blocking read short when the partitions it reads changed, and
claims what dead or stuck workers left (``claims.py``). The read → run → answer loop
(``worker.py``) only tells it whether its read-ahead was full, and gives it the room left and
the way to accept a claimed job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from sluiceway.config import Settings
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.cancels import Cancels
from sluiceway.split.claims import Claims
from sluiceway.split.connection import BROKER_ERRORS, RECONNECT_S, Broker, stop_tasks
from sluiceway.split.convergence import Convergence
from sluiceway.split.membership import Membership
from sluiceway.split.reader import GroupReader

logger = logging.getLogger(__name__)


class Heartbeat:
    """One worker's periodic membership, model, helping and claiming work."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        membership: Membership,
        convergence: Convergence,
        claims: Claims,
        cancels: Cancels,
        reader: GroupReader,
        metrics: Metrics,
        room_left: Callable[[], int],
        accept: Callable[[str, bytes, Any], None],
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._membership = membership
        self._convergence = convergence
        self._claims = claims
        self._cancels = cancels
        self._reader = reader
        self._metrics = metrics
        self._room_left = room_left
        self._accept = accept
        self.full = False
        """The read-ahead was full since the last beat (set by the read loop): the owned
        partitions then have a backlog worth reporting."""
        self._stopping = False
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Beat every ``worker_heartbeat_s`` (every ``RECONNECT_S`` while disconnected)."""
        self._task = asyncio.create_task(self._run(), name="worker heartbeat")

    def stop(self) -> None:
        """Beat no more (a beat under way finishes; :meth:`close` waits for it)."""
        self._stopping = True
        self._stopped.set()

    async def close(self, grace_s: float) -> None:
        """Stop, and wait up to ``grace_s`` for the beat under way before cancelling it."""
        self.stop()
        if self._task is not None:
            await stop_tasks([self._task], grace_s)
            self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            pause = self._settings.worker_heartbeat_s if self._broker.connected else RECONNECT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), pause)
            if not self._stopping:
                await self.beat()

    async def beat(self) -> None:
        """Say we are alive, recompute owned partitions, claim what dead or stuck workers hold.

        A lost broker is marked lost, not raised: the next beat connects and joins again.
        """
        self._cancels.expire(time.time())
        membership = self._membership
        owned, helped = membership.owned, membership.helped
        saturated, self.full = self.full, self._room_left() <= 0
        try:
            live = await membership.beat(saturated)
            await self._convergence.beat(live)  # models loaded or unloaded by operators
            joined = len(membership.helped) - len(set(helped) & set(membership.helped))
            self._metrics.partitions_helped.inc(joined)
            if membership.owned is not owned or membership.helped is not helped:
                await self._reader.cut_short(self._broker)
            await self._claims.claim(membership.owned, live, self._room_left, self._accept)
        except BROKER_ERRORS as error:
            self._broker.lost(error)
        except ResponseError as error:  # NOGROUP: Redis restarted and lost the groups
            logger.warning("job broker error: %s; rejoining", error)
            self._broker.lost(error)
