"""The dispatcher seam: ``submit(job) -> result``, wherever the model runs.

``LocalDispatcher`` runs models in this process (the embedded default). A Redis-backed
dispatcher for API nodes with separate model workers implements the same protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from sluiceway.models.base import Model, ModelKind
from sluiceway.runtime.batcher import Lane
from sluiceway.runtime.cache import ModelCache
from sluiceway.runtime.errors import DeadlineExceeded, ModelUnavailable
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.metrics import Metrics

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


class LocalDispatcher:
    """Runs jobs on this process's batchers and model cache."""

    def __init__(self, kinds: Iterable[ModelKind], cache_budget_bytes: int, metrics: Metrics):
        self._kinds = {kind.name: kind for kind in kinds}
        self._cache: ModelCache[Model] = ModelCache(cache_budget_bytes, metrics)
        self._lanes = {
            name: Lane(name, kind.policy, self._resolve, metrics, kind.call_cost())
            for name, kind in self._kinds.items()
        }
        self._closing = False

    @property
    def cache(self) -> ModelCache[Model]:
        return self._cache

    def lane(self, model: str) -> Lane:
        """The lane of a model (for inspection and tests)."""
        return self._lanes[model]

    async def start(self) -> None:
        self._closing = False

    async def close(self) -> None:
        self._closing = True
        await asyncio.gather(*(lane.drain() for lane in self._lanes.values()))

    def ready(self) -> bool:
        return not self._closing

    def models(self) -> list[str]:
        return sorted(self._kinds)

    async def submit(self, job: Job) -> Any:
        """Run ``job``; cancelling the caller withdraws it unrun if it is still queued."""
        lane = self._lane_for(job)
        ticket = lane.submit(job)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + job.remaining()):
                return await ticket.future
        except TimeoutError:
            lane.withdraw(ticket, expired=True)
            raise DeadlineExceeded(f"{job.model} did not answer before the deadline") from None
        except asyncio.CancelledError:  # the caller is gone (a client disconnect)
            lane.withdraw(ticket)
            raise

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

    async def _resolve(self, job: Job) -> Model:
        kind = self._kinds[job.model]
        lane = self._lanes[job.model]

        async def load() -> Model:
            # A load or fit is compute too: it holds a slot like a batch does.
            async with lane.slots:
                return await kind.load(job.spec)

        return await self._cache.get_or_load(kind.name, f"{kind.name}:{job.key}", load)
