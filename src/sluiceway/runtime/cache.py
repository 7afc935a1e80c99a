"""Loaded models by content key: one load at a time per key, LRU eviction within a budget."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from sluiceway.runtime.metrics import Metrics

logger = logging.getLogger(__name__)


class Sized(Protocol):
    """Anything that can say roughly how much memory it holds."""

    @property
    def nbytes(self) -> int: ...


M = TypeVar("M", bound=Sized)


class ModelCache(Generic[M]):
    """Get-or-load by key with single flight: concurrent callers of one key share one load.

    A failed load is not cached: the error goes to everyone waiting on it and the next call
    tries again. Eviction drops the least recently used models until the total fits the budget
    (the newest model always stays, even if it alone is over budget).
    """

    def __init__(self, budget_bytes: int, metrics: Metrics) -> None:
        self._budget = budget_bytes
        self._metrics = metrics
        self._ready: OrderedDict[str, tuple[str, M]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[M]] = {}

    def __len__(self) -> int:
        return len(self._ready)

    def __contains__(self, key: str) -> bool:
        return key in self._ready

    @property
    def nbytes(self) -> int:
        """Bytes held by the loaded models, as they report it."""
        return sum(model.nbytes for _, model in self._ready.values())

    def discard(self, key: str) -> None:
        """Forget the model cached under ``key`` (it is no longer served)."""
        self._ready.pop(key, None)

    def discard_prefix(self, prefix: str) -> None:
        """Forget every model whose key starts with ``prefix`` (an unloaded model's)."""
        for key in [key for key in self._ready if key.startswith(prefix)]:
            del self._ready[key]

    async def get_or_load(self, model: str, key: str, load: Callable[[], Awaitable[M]]) -> M:
        """Return the model cached under ``key``, loading it once if it is missing."""
        hit = self._ready.get(key)
        if hit is not None:
            self._ready.move_to_end(key)
            return hit[1]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(model, key, load), name=f"load {key}")
            self._loading[key] = task
        # Shielded: a caller that gives up (deadline, disconnect) must not cancel a load that
        # others are waiting on.
        return await asyncio.shield(task)

    async def _load(self, model: str, key: str, load: Callable[[], Awaitable[M]]) -> M:
        try:
            loaded = await load()
        finally:
            del self._loading[key]
        self._metrics.model_loads.labels(model).inc()
        self._ready[key] = (model, loaded)
        self._evict()
        logger.info("loaded %s (%d bytes), %d models cached", key, loaded.nbytes, len(self))
        return loaded

    def _evict(self) -> None:
        total = self.nbytes
        while total > self._budget and len(self._ready) > 1:
            key, (model, loaded) = self._ready.popitem(last=False)
            total -= loaded.nbytes
            self._metrics.model_evictions.labels(model).inc()
            logger.info("evicted %s to stay within %d bytes", key, self._budget)
