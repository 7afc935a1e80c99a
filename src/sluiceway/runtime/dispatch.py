"""The dispatcher seam: ``submit(job) -> result``, wherever the model runs.

``LocalDispatcher`` runs models in this process (the embedded default). A Redis-backed
dispatcher for API nodes with separate model workers implements the same protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from sluiceway.errors import ModelUnavailable
from sluiceway.models.base import Model, ModelKind
from sluiceway.runtime.cache import ModelCache
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.lane import Lane
from sluiceway.runtime.metrics import Metrics
from sluiceway.runtime.stats import Statistics
from sluiceway.runtime.tickets import Ticket

logger = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Runs jobs somewhere and hands back their results."""

    async def start(self) -> None:
        """Acquire what the dispatcher needs (connections, warm models)."""

    async def close(self) -> None:
        """Finish or fail accepted work and release resources."""

    def ready(self) -> bool:
        """Whether a job submitted now has a chance to run."""

    def models(self) -> list[str]:
        """Names of the models this dispatcher can run."""

    async def submit(self, job: Job) -> Any:
        """Run one job before its deadline; raise a ``SluicewayError`` subclass if it cannot."""


@runtime_checkable
class ModelHost(Protocol):
    """A dispatcher whose models can be installed and removed while it runs."""

    async def install(self, kind: ModelKind, warmup: Any | None = None) -> None:
        """Load ``kind``'s model, run ``warmup`` through it, then serve it (replacing any
        model of the same name once that one's accepted work is done)."""

    async def uninstall(self, model: str) -> None:
        """Stop admitting ``model``'s jobs, finish the accepted ones, free its memory."""

    def load_error(self, model: str) -> str | None:
        """Why ``model``'s last load failed, or ``None`` if it did not."""


class LocalDispatcher:
    """Runs jobs on this process's batchers and model cache."""

    def __init__(
        self,
        kinds: Iterable[ModelKind],
        cache_budget_bytes: int,
        metrics: Metrics,
        *,
        inline_below_s: float = 0.0,
    ):
        self._metrics = metrics
        self._inline_below_s = inline_below_s
        self.statistics = Statistics(metrics)
        self._kinds = {kind.name: kind for kind in kinds}
        self._cache: ModelCache[Model] = ModelCache(cache_budget_bytes, metrics)
        self._lanes = {name: self._lane(kind) for name, kind in self._kinds.items()}
        # A reinstalled model gets a new generation, so its cache keys never meet the old one's.
        self._generations: dict[str, int] = dict.fromkeys(self._kinds, 0)
        self._load_errors: dict[str, str] = {}
        self._closing = False

    @property
    def cache(self) -> ModelCache[Model]:
        return self._cache

    def _lane(self, kind: ModelKind) -> Lane:
        return Lane(
            kind.name,
            kind.policy,
            self._resolve,
            self._metrics,
            kind.call_cost(),
            inline_below_s=self._inline_below_s,
            loaded=self._loaded,
        )

    def lane(self, model: str) -> Lane:
        """The lane of a model (for inspection and tests)."""
        return self._lanes[model]

    async def start(self) -> None:
        for kind in self._kinds.values():
            kind.prepare()
        self._closing = False

    async def close(self) -> None:
        self._closing = True
        await asyncio.gather(*(lane.drain() for lane in self._lanes.values()))

    def ready(self) -> bool:
        return not self._closing

    def models(self) -> list[str]:
        return sorted(self._kinds)

    async def submit(self, job: Job) -> Any:
        """Run ``job``; cancelling the caller withdraws it unrun if it is still queued.

        One coroutine, measured in place (``Statistics.watch``/``done``): a job run on the spot
        (``Batcher.run_now``) is answered without another coroutine, await or timer.
        """
        statistics = self.statistics
        watch = statistics.watch(job)
        try:
            lane = self._lane_for(job)
            ticket = lane.submit(job)
            future = ticket.future
            if future.done():  # run on the spot: no timer to arm
                result = future.result()
            else:
                result = await self._wait(lane, ticket)
        except BaseException as error:  # a cancelled caller too: counted by its reason
            statistics.done(job, watch, error)
            raise
        statistics.done(job, watch, None)
        return result

    async def _wait(self, lane: Lane, ticket: Ticket) -> Any:
        """A queued job's result, failed at its deadline; withdrawn if the caller goes away."""
        loop = asyncio.get_running_loop()
        # One timer that fails the job's future at its deadline: lighter than a timeout
        # context per job, which counts on every inference request.
        timer = loop.call_at(loop.time() + ticket.job.remaining(), lane.expire, ticket)
        try:
            return await ticket.future
        except asyncio.CancelledError:  # the caller is gone (a client disconnect)
            lane.withdraw(ticket)
            raise
        finally:
            timer.cancel()

    def enqueue(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job and return the future of its result, without waiting or a deadline.

        For callers that keep their own deadline (a split-mode worker runs thousands of jobs
        a second and spares each its own task). A job whose deadline has passed when a slot
        takes it is failed unrun; cancelling the future makes the batcher skip it.
        """
        return self._lane_for(job).submit(job).future

    def _lane_for(self, job: Job) -> Lane:
        lane = self._lanes.get(job.model)
        if lane is None:
            raise ModelUnavailable(f"no model named {job.model!r}; known: {self.models()}")
        if self._closing:
            raise ModelUnavailable("shutting down")
        return lane

    async def install(self, kind: ModelKind, warmup: Any | None = None) -> None:
        """Load ``kind``'s model (``spec`` ``None``), warm it, then route its jobs to it.

        The model is loaded and warmed before any request can reach it; a model it replaces
        stops admitting at once and finishes its accepted jobs before its memory is freed.
        """
        name = kind.name
        generation = self._generations.get(name, 0) + 1
        key = _cache_key(name, generation, "")
        model = await self._cache.get_or_load(
            name, key, lambda: kind.load(None), kind.load_peak_nbytes
        )
        if warmup is not None:
            try:
                (result,) = await model.infer([warmup])
            except Exception as error:  # a model's own runtime raises untyped errors
                result = error
            if isinstance(result, Exception):
                self._cache.discard(key)
                raise ModelUnavailable(f"{name}: the warm-up request failed: {result}")
        old_lane, old_generation = self._lanes.get(name), self._generations.get(name)
        self._kinds[name] = kind
        self._lanes[name] = self._lane(kind)
        self._generations[name] = generation
        self._load_errors.pop(name, None)
        if old_lane is not None and old_generation is not None:
            await old_lane.drain()
            self._cache.discard_prefix(_cache_key(name, old_generation, ""))

    async def uninstall(self, model: str) -> None:
        """Stop routing ``model``'s jobs, wait for its accepted ones, drop it from the cache."""
        lane = self._lanes.pop(model, None)
        self._kinds.pop(model, None)
        generation = self._generations.pop(model, None)
        if lane is not None:
            await lane.drain()
        if generation is not None:
            self._cache.discard_prefix(_cache_key(model, generation, ""))

    def load_error(self, model: str) -> str | None:
        """Why ``model``'s last load failed (cleared by the next success), or ``None``."""
        return self._load_errors.get(model)

    def _loaded(self, job: Job) -> Model | None:
        """``job``'s model if it is loaded now (what ``_resolve`` would give without a wait)."""
        generation = self._generations.get(job.model)
        if generation is None:
            return None
        model_key = job.key if job.spec is not None else ""
        model = self._cache.cached(_cache_key(job.model, generation, model_key))
        return self.statistics.timed(job.model, model) if model is not None else None

    async def _resolve(self, job: Job) -> Model:
        kind = self._kinds[job.model]
        lane = self._lanes[job.model]
        # Jobs without a spec share the model's one instance, whatever key batches them.
        model_key = job.key if job.spec is not None else ""
        key = _cache_key(kind.name, self._generations[job.model], model_key)

        async def load() -> Model:
            # A load or fit is compute too: it holds a slot like a batch does.
            async with lane.slots:
                try:
                    model = await kind.load(job.spec)
                except Exception as error:
                    self._load_errors[kind.name] = str(error)
                    raise
            self._load_errors.pop(kind.name, None)
            return model

        model = await self._cache.get_or_load(kind.name, key, load, kind.load_peak_nbytes)
        return self.statistics.timed(job.model, model)


def _cache_key(model: str, generation: int, key: str) -> str:
    return f"{model}#{generation}:{key}"
