"""A worker's membership of the cluster: heartbeats in the registry, the partitions it owns.

Every worker writes its heartbeat record to one hash and reads everyone's; the live set
decides, by rendezvous hashing (``keys.owner``), which worker owns each partition stream of
each model. Every worker computes the same answer from the same live set. A saturated owner
also reports its backlog, and others read its partition too (``helping.py``). Each beat also
publishes the model calls the worker made, which API nodes sum for Triton's statistics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

from sluiceway.config import Settings
from sluiceway.runtime.stats import ModelCalls
from sluiceway.split.connection import Broker
from sluiceway.split.helping import Backlog, Helping, decode_backlog, encode_backlog
from sluiceway.split.keys import GROUP, Keys, owner
from sluiceway.split.pauses import loop_clock
from sluiceway.split.wire import CallsRecord, WorkerRecord, live_workers

logger = logging.getLogger(__name__)


class Membership:
    """One worker's heartbeat, consumer groups and owned partitions."""

    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        broker: Broker,
        worker: str,
        models: Sequence[str],
        calls: Callable[[], dict[str, ModelCalls]],
    ) -> None:
        """``calls``: the model calls this worker has made so far (``Statistics.calls``),
        published with each beat."""
        self.worker = worker
        self._calls = calls
        self._settings = settings
        self._keys = keys
        self._broker = broker
        self._models = tuple(models)
        self.model_of = {stream: model for model in models for stream in keys.all_jobs(model)}
        """The model of each partition stream this worker can serve."""
        self.owned: list[str] = []
        """The partition streams this worker reads now (replaced, never changed in place)."""
        self.joined = False
        """In every consumer group since the broker connection was last made."""
        self._winning: dict[str, float] = {}  # partition won → when its hand-over is over
        self._helping = Helping(worker, settings.worker_help_after_s)
        self.backlog: Backlog = {}
        """What this worker reported at its last beat: its partitions' jobs it could not take."""

    @property
    def served(self) -> list[str]:
        """Every partition stream of the models this worker serves, owned now or not."""
        return [stream for model in self._models for stream in self._keys.all_jobs(model)]

    @property
    def helped(self) -> list[str]:
        """Saturated partitions of other workers this worker reads too (replaced, never
        changed in place)."""
        return self._helping.helped

    async def beat(self, saturated: bool = False) -> dict[str, WorkerRecord]:
        """Connect if need be, say we are alive, and recompute the owned partitions.

        ``saturated`` says the read-ahead was full since the last beat: the backlog of the
        owned partitions is then measured and reported. Returns the live workers. Raises
        ``BROKER_ERRORS`` when Redis is lost and ``ResponseError`` when it lost the groups
        (NOGROUP): the caller marks the broker lost, and the next beat connects and joins again.
        """
        redis = self._broker.redis
        if not self._broker.connected:
            self.joined = False
            await self._broker.connect()
        now = time.time()
        calls = CallsRecord(self._calls()).encode()
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._keys.workers, self.worker, WorkerRecord(self._models, now).encode())
            pipe.hset(self._keys.calls, self.worker, calls)  # in the same round trip
            pipe.hgetall(self._keys.workers)
            pipe.hgetall(self._keys.backlogs)
            _, _, registry, reports = await pipe.execute()
        if not self.joined:
            await self._join_groups()
            self.joined = True
        registry = cast(dict[bytes, bytes], registry)
        live = live_workers(
            registry, now, self._settings.worker_dead_after_s, loop_clock().paused_within
        )
        await self._forget_departed(registry, live, now)
        self._take_ownership(live, now)
        await self._report_backlog(saturated)
        reports = cast(dict[bytes, bytes], reports)
        backlogs = {w.decode(): decode_backlog(data) for w, data in reports.items()}
        helped = self._helping.helped
        joined = self._helping.plan(
            now, live, backlogs, self.backlog, self.model_of, self.owned, full=saturated
        )
        for stream in joined:
            logger.info("worker %s helps saturated partition %s", self.worker, stream)
        for stream in set(helped) - set(self._helping.helped):
            logger.info("worker %s stops helping partition %s", self.worker, stream)
        return live

    async def serve(self, model: str, serving: bool) -> None:
        """Start or stop owning ``model``'s partitions from the next heartbeat on.

        Model control (``convergence.py``) calls this when a model is loaded at runtime, or
        fails to load, so that its jobs go only to workers that can run them. The streams stay
        known (``model_of``): jobs already read are still answered.
        """
        if serving and model not in self._models:
            streams = self._keys.all_jobs(model)
            if self.joined:
                await self._join_groups(streams)
            self.model_of.update(dict.fromkeys(streams, model))
            self._models = (*self._models, model)
        elif not serving and model in self._models:
            self._models = tuple(name for name in self._models if name != model)

    async def leave(self) -> None:
        """Leave the registry, so others take over this worker's partitions at once."""
        async with self._broker.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self._keys.workers, self.worker)
            pipe.hdel(self._keys.calls, self.worker)
            pipe.hdel(self._keys.backlogs, self.worker)
            await pipe.execute()

    async def _report_backlog(self, saturated: bool) -> None:
        """Measure and publish the jobs of owned partitions this worker could not take.

        Finished jobs are deleted from their stream, so its length less what this worker
        holds is what waits there or is held by others: only a full read-ahead leaves any.
        Once helped, the worker reports what its helpers hold even when its read-ahead has
        room (their help is why it has room): they stay until it takes everything itself,
        instead of leaving as soon as their help has drained the stream, and coming back.
        While it helps others, it reports only that: its own jobs wait for the room it gave
        them, and the cure is to take less of theirs (its reads put its own first), not
        helpers on its partitions, who would call helpers onto theirs in turn.
        """
        backlog: Backlog = {}
        owned, helping = self.owned, bool(self.helped)
        if (saturated or self.backlog) and owned:
            async with self._broker.redis.pipeline(transaction=False) as pipe:
                for stream in owned:
                    pipe.xlen(stream)
                    pipe.xpending(stream, GROUP)
                replies = await pipe.execute()
            for stream, length, summary in zip(owned, replies[::2], replies[1::2], strict=True):
                held = {c["name"]: c["pending"] for c in summary["consumers"]}
                mine = held.pop(self.worker.encode(), 0)
                waiting = length - mine if saturated and not helping else sum(held.values())
                if waiting > 0:
                    backlog[stream] = waiting
        if backlog:
            await self._broker.redis.hset(self._keys.backlogs, self.worker, encode_backlog(backlog))
        elif self.backlog:
            await self._broker.redis.hdel(self._keys.backlogs, self.worker)
        self.backlog = backlog

    async def _join_groups(self, streams: Sequence[str] = ()) -> None:
        async with self._broker.redis.pipeline(transaction=False) as pipe:
            for stream in streams or self.model_of:
                pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            for reply in await pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                    raise reply

    async def _forget_departed(
        self, registry: dict[bytes, bytes], live: dict[str, WorkerRecord], now: float
    ) -> None:
        """Drop registry entries of workers silent for ten times the dead-after delay."""
        horizon = 10 * self._settings.worker_dead_after_s
        departed = []
        for worker, data in registry.items():
            record = WorkerRecord.decode(data)
            if worker.decode() not in live and (record is None or now - record.seen > horizon):
                departed.append(worker)
        if departed:
            async with self._broker.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(self._keys.workers, *departed)
                pipe.hdel(self._keys.calls, *departed)
                pipe.hdel(self._keys.backlogs, *departed)
                await pipe.execute()

    def _take_ownership(self, live: dict[str, WorkerRecord], now: float) -> None:
        """Read the partitions this worker wins now, after a hand-over delay for new ones.

        A partition won from another worker is read only after two heartbeats, by when its
        previous owner has seen the change and stopped reading it: one partition, one reader,
        so a restaurant is fitted on one worker (unless its owner saturates: ``helping.py``).
        A partition lost is dropped at once (the worker cuts its blocking read short when
        ``owned`` changes). A partition of a model no other live worker serves (one just loaded
        at runtime) has no previous owner and is read at once.
        """
        alone = True
        won: list[str] = []
        unshared: set[str] = set()  # partitions of models no other live worker serves
        for model in self._models:
            serving = sorted(w for w, record in live.items() if model in record.models)
            if self.worker not in serving:
                serving.append(self.worker)
            alone = alone and len(serving) == 1
            for partition in range(self._keys.partitions):
                if owner(model, partition, serving) == self.worker:
                    won.append(self._keys.jobs(model, partition))
                    if len(serving) == 1:  # nobody else reads it: no hand-over to wait for
                        unshared.add(won[-1])
        handover = 2 * self._settings.worker_heartbeat_s
        self._winning = {
            stream: self._winning.get(
                stream, now + (0 if alone or stream in unshared else handover)
            )
            for stream in won
            if stream not in self.owned
        }
        owned = [s for s in won if s in self.owned or self._winning[s] <= now]
        if set(owned) != set(self.owned):
            self.owned = owned
