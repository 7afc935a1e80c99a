"""The model calls of the live workers, as an API node's statistics extension answers them.

A split-mode API node makes no model call: its ``execution_count`` and ``batch_stats`` are the
sum of its live workers', which each publishes with its heartbeat (``membership.py``,
``wire.CallsRecord``).

Read when asked, one round trip, rather than a snapshot the node's watch loop keeps: the
statistics are asked for rarely (``perf_analyzer`` and Model Analyzer once a measurement
window), while a snapshot would have every API node read every worker's record every heartbeat,
a cost growing with workers, models and batch sizes paid for nothing between questions.

Requests asking at once share one read, and a sum read less than a heartbeat ago (the workers
publish once a beat) is answered again: a burst of statistics requests each taking a connection
emptied the pool the watch loop needs, which then took Redis for lost and failed every
inference request (found in review). When Redis is lost, fails or does not answer within
``WAIT_S``, the last sum read is answered (empty before the first): a count that fell back to 0
would make the difference of two snapshots, which perf_analyzer reports, nonsense.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import cast

from redis.exceptions import RedisError

from sluiceway.config import Settings
from sluiceway.runtime.stats import ModelCalls
from sluiceway.split.connection import Broker
from sluiceway.split.keys import Keys
from sluiceway.split.wire import live_calls

logger = logging.getLogger(__name__)

WAIT_S = 0.5
"""How long a statistics request waits for the workers' calls."""


class WorkerCalls:
    """The live workers' model calls, summed by model: read, shared and kept for a beat."""

    def __init__(self, settings: Settings, keys: Keys, broker: Broker) -> None:
        self._settings = settings
        self._keys = keys
        self._broker = broker
        self._sum: dict[str, ModelCalls] = {}
        self._read_at = -math.inf
        self._reading: asyncio.Task[dict[str, ModelCalls]] | None = None
        self._failing = False  # reads fail now: said once when they start, once when they end

    async def read(self) -> dict[str, ModelCalls]:
        """The sum, by model name (callers must not change it)."""
        if time.monotonic() - self._read_at < self._settings.worker_heartbeat_s:
            return self._sum
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.create_task(self._read())
            reading.add_done_callback(self._ended)
        # Shielded: a caller that leaves must not cancel the read others wait for.
        return await asyncio.shield(reading)

    async def close(self) -> None:
        """Let a read under way end (bounded by ``WAIT_S``)."""
        if self._reading is not None:
            await asyncio.gather(self._reading, return_exceptions=True)

    def _ended(self, reading: asyncio.Task[dict[str, ModelCalls]]) -> None:
        if self._reading is reading:
            self._reading = None

    async def _read(self) -> dict[str, ModelCalls]:
        if not self._broker.connected:
            return self._sum
        try:
            async with asyncio.timeout(WAIT_S):
                async with self._broker.redis.pipeline(transaction=False) as pipe:
                    pipe.hgetall(self._keys.workers)
                    pipe.hgetall(self._keys.calls)
                    registry, counts = await pipe.execute()
            summed = live_calls(
                cast(dict[bytes, bytes], registry),
                cast(dict[bytes, bytes], counts),
                time.time(),
                self._settings.worker_dead_after_s,
            )
        # A wait past the bound is a ``TimeoutError`` (an ``OSError``); a registry record no
        # release wrote may fail to decode (``WorkerRecord``): neither may cost the answer.
        except (RedisError, OSError, TypeError, ValueError, ArithmeticError) as error:
            if not self._failing:
                logger.warning("statistics keep the workers' last model calls read: %r", error)
            self._failing = True
            return self._sum
        if self._failing:
            logger.warning("statistics read the workers' model calls again")
        self._failing = False
        self._sum, self._read_at = summed, time.monotonic()
        return summed
