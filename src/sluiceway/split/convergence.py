"""A worker's side of model control: converge to the desired state, report what it serves.

An operator's load or unload is written to the desired-state hash and announced on the model
channel (``control.py``). A worker re-reads the hash when it hears the announcement and on
every heartbeat, so a message it missed (it was reconnecting, or not started yet) is repaired
within one heartbeat. For each model whose desired generation is newer than the one it last
acted on, it loads or unloads the model in its own runtime:

- a load is single-flight per model (a newer request waits for the running one, then runs),
  reads the model's folder again, loads and warms the model beside the others, and only then
  routes jobs to it; a worker whose load fails stops owning the model's partitions (unless an
  older version still serves), so its jobs go to workers that can run them;
- an unload stops admitting the model's jobs, answers the accepted ones, then frees the model;
  jobs read afterwards are answered 503 at once rather than left to their deadline.

Repository models found at start-up are served as before: loaded on their first job. After
each change the worker writes its report (``ModelReport``) and says so on the channel, so API
nodes see a model ready as soon as a worker has it ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from sluiceway.config import Settings
from sluiceway.kinds import builtin_records, kind_of
from sluiceway.repository import BrokenModel, read_model, scan
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.split.connection import BROKER_ERRORS, Broker, stop_tasks
from sluiceway.split.control import (
    DESIRED_CHANGED,
    LOADED,
    LOADING,
    READY,
    STATES_CHANGED,
    UNAVAILABLE,
    UNLOADED,
    UNLOADING,
    Desired,
    ModelReport,
    ModelStatus,
    read_desired,
)
from sluiceway.split.keys import Keys
from sluiceway.split.membership import Membership
from sluiceway.split.subscription import Subscription
from sluiceway.split.wire import WorkerRecord

logger = logging.getLogger(__name__)


class Convergence:
    """Brings one worker's repository models to the desired state and reports their states."""

    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        broker: Broker,
        local: LocalDispatcher,
        membership: Membership,
        owned_changed: Callable[[], Awaitable[None]],
    ) -> None:
        """``owned_changed``: the worker's reaction to a new set of owned partitions."""
        self._settings = settings
        self._owned_changed = owned_changed
        self._keys = keys
        self._broker = broker
        self._local = local
        self._membership = membership
        folder = settings.model_repository
        self._repository = Path(folder).expanduser() if folder else None
        self._only = {name.strip() for name in settings.worker_models.split(",") if name.strip()}
        self._builtins = {record.name for record in builtin_records(settings)}
        self._status: dict[str, ModelStatus] = {}
        served = set(local.models())
        for found in scan(self._repository) if self._repository is not None else []:
            if not self._mine(found.name):
                continue
            if isinstance(found, BrokenModel):
                self._status[found.name] = ModelStatus(UNAVAILABLE, found.reason)
            elif found.name in served:  # loaded on its first job, as before
                self._status[found.name] = ModelStatus(READY, version=found.version)
        self._applied: dict[str, int] = {}
        self._desired: dict[str, Desired] = {}
        self._seen = 0
        self._started = False
        self._converged_once = False
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._reading: asyncio.Task[None] | None = None
        self._read_again = False
        self._writing: asyncio.Task[None] | None = None
        self._dirty = False
        self._announce = False
        self._subscription = Subscription(broker, keys.model_changes, self._heard)

    async def beat(self, live: dict[str, WorkerRecord]) -> None:
        """Read the desired state, act on what changed, write this worker's report (and drop
        reports of workers no longer live). Raises ``BROKER_ERRORS`` as the heartbeat does."""
        redis = self._broker.redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.desired)
            pipe.hkeys(self._keys.model_states)
            desired, reporters = await pipe.execute()
        self._converge(read_desired(desired))
        if not self._started:
            self._started = True
            self._subscription.start()
            # A worker starting takes no job of a model operators unloaded (quick: no model
            # was loaded yet); loads asked before it started go on beside its jobs.
            unloading = [
                task for name, task in self._busy.items() if self._desired[name].state == UNLOADED
            ]
            await asyncio.gather(*unloading, return_exceptions=True)
        self._report_soon(announce=False)
        worker = self._membership.worker
        departed = [w for w in reporters if w.decode() not in live and w.decode() != worker]
        if departed:
            await redis.hdel(self._keys.model_states, *departed)

    async def close(self) -> None:
        """Stop listening and acting; take this worker's report away."""
        await self._subscription.close()
        tasks = [task for task in (self._reading, self._writing) if task is not None]
        await stop_tasks([*tasks, *self._busy.values()], 1.0)
        with contextlib.suppress(*BROKER_ERRORS):
            await self._broker.redis.hdel(self._keys.model_states, self._membership.worker)

    def report(self) -> ModelReport:
        """What this worker says of its models; one whose first-job load failed says why."""
        models = {}
        for name, status in self._status.items():
            error = self._local.load_error(name) if status.state == READY else None
            if error:
                status = ModelStatus(UNAVAILABLE, error, status.generation, status.version)
            models[name] = status
        return ModelReport(self._seen, models)

    def _mine(self, name: str) -> bool:
        """A repository model this worker may serve (``SLUICEWAY_WORKER_MODELS`` narrows it)."""
        return name not in self._builtins and (not self._only or name in self._only)

    # Hearing of changes.

    def _heard(self, message: bytes) -> None:
        if not message.startswith(DESIRED_CHANGED):
            return  # a worker's report: for the API nodes
        if self._reading is not None and not self._reading.done():
            self._read_again = True
            return
        self._reading = asyncio.create_task(self._read(), name="read desired models")

    async def _read(self) -> None:
        self._read_again = True
        while self._read_again:
            self._read_again = False
            try:
                desired = await self._broker.redis.hgetall(self._keys.desired)
            except BROKER_ERRORS as error:  # the next heartbeat reads it again
                logger.warning("could not read the desired models: %s", error)
                return
            self._converge(read_desired(cast(dict[bytes, bytes], desired)))

    def _converge(self, desired: dict[str, Desired]) -> None:
        if max((want.generation for want in desired.values()), default=0) < self._seen:
            # Generations never go back unless Redis lost them (a restart without
            # persistence): what was applied says nothing of the new ones.
            logger.warning("the desired models went back a generation: reading them afresh")
            self._applied.clear()
            self._seen = 0
        self._desired = desired
        first, self._converged_once = not self._converged_once, True
        changed = False
        for name, want in desired.items():
            if not self._mine(name) or self._repository is None:
                continue
            if self._applied.get(name, 0) >= want.generation or name in self._busy:
                continue
            status = self._status.get(name)
            if first and want.state == LOADED and status is not None and status.state == READY:
                # Started after the load: serve it as found, loaded on its first job.
                self._applied[name] = want.generation
                self._status[name] = ModelStatus(READY, "", want.generation, status.version)
                continue
            self._begin(name, want, status)
            changed = True
        seen = max((want.generation for want in desired.values()), default=0)
        if seen > self._seen:
            self._seen, changed = seen, True
        if changed:
            self._report_soon()

    def _begin(self, name: str, want: Desired, status: ModelStatus | None) -> None:
        """Say what is about to happen (before the report says which generation was seen),
        then do it beside the worker's running models."""
        if want.state == LOADED:
            if status is None or status.state != READY:  # a running version serves meanwhile
                self._status[name] = ModelStatus(LOADING, "", want.generation)
            action = self._load(name, want.generation, status)
        else:
            version = status.version if status is not None else ""
            self._status[name] = ModelStatus(UNLOADING, "", want.generation, version)
            action = self._unload(name, want.generation)
        task = asyncio.create_task(action, name=f"model control {name}")
        self._busy[name] = task
        task.add_done_callback(lambda done: self._done(name, want.generation, done))

    def _done(self, name: str, generation: int, task: asyncio.Task[None]) -> None:
        self._busy.pop(name, None)
        if task.cancelled():  # the worker is stopping
            return
        self._applied[name] = generation
        if (error := task.exception()) is not None:  # a bug must not leave it LOADING for ever
            logger.error("model control of %s failed: %s", name, error)
            self._status[name] = ModelStatus(UNAVAILABLE, f"unexpected error: {error}", generation)
        self._report_soon()
        self._converge(self._desired)  # a newer request may have come meanwhile

    # Acting.

    async def _load(self, name: str, generation: int, before: ModelStatus | None) -> None:
        assert self._repository is not None
        found = await asyncio.to_thread(read_model, self._repository / name)
        running = before is not None and before.state == READY and name in self._local.models()
        reason = found.reason if isinstance(found, BrokenModel) else ""
        if not reason and not isinstance(found, BrokenModel):
            try:
                await self._local.install(kind_of(found, self._settings), found.warmup)
            except Exception as error:  # the model's runtime raises untyped errors too
                reason = str(error)
            else:
                await self._membership.serve(name, True)
                # Say so in the heartbeat record before reporting it ready: API nodes route
                # only to models a live worker's record lists.
                owned = self._membership.owned
                await self._membership.beat()
                if self._membership.owned is not owned:
                    await self._owned_changed()
                self._status[name] = ModelStatus(READY, "", generation, found.version)
                logger.info("model %s version %s is ready", name, found.version)
                return
        logger.warning("model %s did not load: %s", name, reason)
        if running and before is not None:
            kept = f"the new version did not load ({reason}); version {before.version} serves"
            self._status[name] = ModelStatus(READY, kept, generation, before.version)
            return
        self._status[name] = ModelStatus(UNAVAILABLE, reason, generation)
        await self._membership.serve(name, False)

    async def _unload(self, name: str, generation: int) -> None:
        self._report_soon()
        await self._local.uninstall(name)
        self._status[name] = ModelStatus(UNAVAILABLE, "unloaded", generation)
        logger.info("model %s unloaded", name)

    # Reporting.

    def _report_soon(self, announce: bool = True) -> None:
        """Write the report (and announce a change), one write at a time: the last one wins.

        The heartbeat rewrites it unannounced (a report of a worker no longer live is dropped;
        API nodes read the reports at their own heartbeat anyway).
        """
        self._dirty = True
        self._announce = self._announce or announce
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write(), name="report models")

    async def _write(self) -> None:
        while self._dirty:
            announce, self._dirty, self._announce = self._announce, False, False
            if not self._broker.connected:
                return  # the next heartbeat writes it
            try:
                await self._publish(self.report(), announce)
            except BROKER_ERRORS as error:
                logger.warning("could not report the models: %s", error)
                return

    async def _publish(self, report: ModelReport, announce: bool) -> Any:
        async with self._broker.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._keys.model_states, self._membership.worker, report.encode())
            if announce:
                pipe.publish(self._keys.model_changes, STATES_CHANGED)
            return await pipe.execute()
