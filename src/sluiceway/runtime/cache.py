"""Loaded models by content key: one load at a time per key, LRU eviction within a budget.

Each model's size is read once, when it is loaded, and the cache keeps the running total, so a
load costs the same at 12 000 cached models as at 10: eviction pops from the old end of an
``OrderedDict`` until the total fits, never summing or scanning the entries. Whenever models
are dropped, their freed memory is given back to the system (``runtime/memory.py``), so the
process's RSS follows the budget instead of its high-water mark.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from sluiceway.runtime.memory import release_freed_memory
from sluiceway.runtime.metrics import Metrics

logger = logging.getLogger(__name__)

RELEASE_AFTER_BYTES = 8 * 1024 * 1024
"""Give memory back once this much was dropped: a trim walks every heap (milliseconds), and the
kiosk's tenant models are kilobytes each, evicted by the thousand."""


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
        # key -> (model name, loaded model, its size when loaded); oldest use first.
        self._ready: OrderedDict[str, tuple[str, M, int]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[M]] = {}
        self._total = 0
        self._dropped = 0  # bytes dropped since memory was last given back

    def __len__(self) -> int:
        return len(self._ready)

    def __contains__(self, key: str) -> bool:
        return key in self._ready

    @property
    def nbytes(self) -> int:
        """Bytes held by the loaded models, as they reported it when loaded."""
        return self._total

    @property
    def budget(self) -> int:
        """The bytes the cache keeps its models within (the newest may exceed it alone)."""
        return self._budget

    def keys(self) -> list[str]:
        """Cached keys, least recently used first (the next to be evicted)."""
        return list(self._ready)

    def discard(self, key: str) -> None:
        """Forget the model cached under ``key`` (it is no longer served)."""
        entry = self._ready.pop(key, None)
        if entry is not None:
            size = entry[2]
            del entry  # the cache's reference goes before the memory is given back
            self._total -= size
            self._release(size)

    def discard_prefix(self, prefix: str) -> None:
        """Forget every model whose key starts with ``prefix`` (an unloaded model's); the work
        is the number cached, paid only when a model is unloaded or replaced."""
        for key in [key for key in self._ready if key.startswith(prefix)]:
            self.discard(key)

    def cached(self, key: str) -> M | None:
        """The model cached under ``key`` (counted as a use), or ``None``: never loads."""
        hit = self._ready.get(key)
        if hit is None:
            return None
        self._ready.move_to_end(key)
        return hit[1]

    async def get_or_load(
        self,
        model: str,
        key: str,
        load: Callable[[], Awaitable[M]],
        load_peak: Callable[[], int] | None = None,
    ) -> M:
        """Return the model cached under ``key``, loading it once if it is missing.

        ``load_peak`` says how much memory the load will take at its peak: that much room is
        made first (least recently used models evicted), so the load fits in the budget too.
        """
        hit = self._ready.get(key)
        if hit is not None:
            self._ready.move_to_end(key)
            return hit[1]
        task = self._loading.get(key)
        if task is None:
            if load_peak is not None:
                self._evict(room=load_peak())
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
        size = loaded.nbytes
        self._ready[key] = (model, loaded, size)
        self._total += size
        self._evict()
        logger.debug("loaded %s (%d bytes), %d models cached", key, size, len(self))
        return loaded

    def _evict(self, room: int = 0) -> None:
        """Drop least recently used models until they fit with ``room`` to spare; after a load
        (no room asked) the newest model stays even if it alone is over the budget."""
        # Each pass pops one entry from the old end: the work is the number evicted (amortised
        # one per load), whatever the number cached.
        keep = 0 if room else 1
        while self._total + room > self._budget and len(self._ready) > keep:
            key, (model, _, size) = self._ready.popitem(last=False)
            self._total -= size
            self._metrics.model_evictions.labels(model).inc()
            logger.debug("evicted %s to stay within %d bytes", key, self._budget)
            self._release(size)

    def _release(self, dropped: int) -> None:
        """Give dropped models' memory back, off the event loop, once enough was dropped.

        The release runs after the caller returns, when the cache's reference is gone; a model a
        running batch still holds is freed later and given back at a later release.
        """
        self._dropped += dropped
        if self._dropped < RELEASE_AFTER_BYTES:
            return
        self._dropped = 0
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # dropped outside a loop (tests, shutdown): release here
            release_freed_memory()
            return
        loop.run_in_executor(None, release_freed_memory)
