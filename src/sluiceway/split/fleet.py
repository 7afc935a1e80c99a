"""An API node's side of model control: set the desired state, read what the workers report.

A load or unload said to any API node is written to the desired-state hash and announced on
the model channel in one script (``scripts.DESIRE``); every worker hears it within the message's
trip, or reads it at its next heartbeat. The node then waits until every live worker has read
that generation and finished acting on it (or ``SLUICEWAY_REQUEST_TIMEOUT_S`` passes) and
answers the model's combined state (``control.combine``).

Every node keeps the desired state and the live workers' reports in memory: it reads both on
every announcement (a worker announces each change of its report) and once a heartbeat, so a
model's readiness on any node follows the workers within a message's trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import cast

from sluiceway.config import Settings
from sluiceway.errors import ModelUnavailable
from sluiceway.split.connection import BROKER_ERRORS, RECONNECT_S, Broker, stop_tasks
from sluiceway.split.control import (
    LOADED,
    LOADING,
    UNLOADED,
    UNLOADING,
    Desired,
    ModelReport,
    ModelStatus,
    combine,
    read_desired,
)
from sluiceway.split.keys import Keys
from sluiceway.split.pauses import loop_clock
from sluiceway.split.scripts import DESIRE
from sluiceway.split.subscription import Subscription
from sluiceway.split.wire import WorkerRecord, live_workers

logger = logging.getLogger(__name__)


class Fleet:
    """The models split-mode workers serve, as one API node sees and controls them."""

    def __init__(
        self, settings: Settings, follow: Callable[[dict[str, WorkerRecord]], None] | None = None
    ) -> None:
        """``follow``: hears the live workers at each refresh (the node's dispatcher, so that it
        routes to a model as soon as a worker says it is ready)."""
        if not settings.broker_url:
            raise ValueError("a fleet needs settings.broker_url")
        self._settings = settings
        self._follow = follow
        self._keys = Keys(settings.broker_prefix, settings.broker_partitions)
        self._broker = Broker(settings.broker_url, name="model control")
        self._subscription = Subscription(self._broker, self._keys.model_changes, self._heard)
        self._desired: dict[str, Desired] = {}
        self._reports: dict[str, ModelReport] = {}
        self._states: dict[str, ModelStatus] = {}
        self._refreshed = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None
        self._read_again = False
        self._watching: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._refreshing = asyncio.Lock()  # one read at a time: a slow old one never wins

    async def start(self) -> None:
        """Read the state once (so a node beside a running cluster knows it at once), then
        follow it."""
        self._closed.clear()
        await self.refresh()
        self._subscription.start()
        self._watching = asyncio.create_task(self._watch(), name="model control watch")

    async def close(self) -> None:
        self._closed.set()
        await self._subscription.close()
        tasks = [task for task in (self._watching, self._reading) if task is not None]
        await stop_tasks(tasks, RECONNECT_S + 1)
        self._watching = self._reading = None
        await self._broker.close()

    def status(self, name: str) -> ModelStatus | None:
        """A model's combined state; ``None`` if no operator and no live worker named it."""
        return self._states.get(name)

    def names(self) -> set[str]:
        """Every model an operator loaded or unloaded, or a live worker reports."""
        return set(self._states)

    def generation(self, name: str) -> int:
        """The generation of the last load or unload of ``name`` (0: none)."""
        desired = self._desired.get(name)
        return desired.generation if desired is not None else 0

    async def load(self, name: str) -> ModelStatus:
        """Ask every worker to (re)load ``name``; its state once they have acted."""
        return await self._control(name, LOADED)

    async def unload(self, name: str) -> ModelStatus:
        """Ask every worker to unload ``name``; its state once they have acted."""
        return await self._control(name, UNLOADED)

    async def _control(self, name: str, state: str) -> ModelStatus:
        keys = self._keys
        try:
            await self._broker.connect()
            generation = int(
                await self._broker.redis.eval(
                    DESIRE.source, 2, keys.desired, keys.generation, name, state, keys.model_changes
                )
            )
        except BROKER_ERRORS as error:
            self._broker.lost(error)
            raise ModelUnavailable(f"the job broker (Redis) is unreachable: {error}") from None
        self._desired[name] = Desired(state, generation)
        self._combine()  # this node stops admitting an unloaded model at once
        await self.refresh()  # the workers that are live now: those to wait for
        deadline = time.monotonic() + self._settings.request_timeout_s
        while not self._acted_on(name, generation):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning("model %s: not every worker acted on %s in time", name, state)
                break
            refreshed = self._refreshed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(refreshed.wait(), min(remaining, RECONNECT_S))
            if not refreshed.is_set():  # no announcement: look ourselves
                await self.refresh()
        status = self._states.get(name)
        return status if status is not None else combine(self._desired.get(name), [])

    def _acted_on(self, name: str, generation: int) -> bool:
        """Every live worker has read ``generation``, and none still acts on ``name``'s.

        A report of a generation above any in the desired state predates a Redis that lost
        it (restarted without persistence): that worker has not read the new one yet.
        """
        top = max((desired.generation for desired in self._desired.values()), default=0)
        for report in self._reports.values():
            if not generation <= report.seen <= top:
                return False
            status = report.models.get(name)
            if status is not None and (
                not generation <= status.generation <= top or status.state in (LOADING, UNLOADING)
            ):
                return False
        return True

    # Following the state.

    def _heard(self, _: bytes) -> None:
        if self._reading is not None and not self._reading.done():
            self._read_again = True
            return
        self._reading = asyncio.create_task(self._read(), name="read model states")

    async def _read(self) -> None:
        self._read_again = True
        while self._read_again:
            self._read_again = False
            await self.refresh()

    async def _watch(self) -> None:
        while not self._closed.is_set():
            pause = self._settings.worker_heartbeat_s if self._broker.connected else RECONNECT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), pause)
            if not self._closed.is_set():
                await self.refresh()

    async def refresh(self) -> None:
        """Read the desired state and the live workers' reports; keep the last on failure."""
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        keys = self._keys
        try:
            await self._broker.connect()
            async with self._broker.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.workers)
                pipe.hgetall(keys.desired)
                pipe.hgetall(keys.model_states)
                workers, desired, reports = await pipe.execute()
        except BROKER_ERRORS as error:
            self._broker.lost(error)
            return
        live = live_workers(
            cast(dict[bytes, bytes], workers),
            time.time(),
            self._settings.worker_dead_after_s,
            loop_clock().paused_within,
        )
        self._desired = read_desired(desired)
        self._reports = {}
        for worker, data in cast(dict[bytes, bytes], reports).items():
            report = ModelReport.decode(data)
            if report is not None and worker.decode() in live:
                self._reports[worker.decode()] = report
        if self._follow is not None:
            self._follow(live)
        self._combine()
        self._refreshed.set()
        self._refreshed = asyncio.Event()

    def _combine(self) -> None:
        names = set(self._desired)
        for report in self._reports.values():
            names.update(report.models)
        self._states = {
            name: combine(
                self._desired.get(name),
                [r.models[name] for r in self._reports.values() if name in r.models],
            )
            for name in names
        }
