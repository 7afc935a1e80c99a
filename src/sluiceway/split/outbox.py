"""What one event-loop turn writes to Redis, gathered and sent as one pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Outbox(Generic[T]):
    """Items added during one event-loop turn, handed together to ``flush`` at its end.

    At thousands of jobs a second, one write per loop turn instead of one per job is most of
    what keeps the broker hop cheap: the owner turns a turn's items into one pipeline.
    """

    def __init__(self, flush: Callable[[list[T]], None]) -> None:
        self._flush = flush
        self._items: list[T] = []
        self._scheduled = False

    def add(self, item: T) -> None:
        """Gather ``item``; the first of a turn schedules the flush at the turn's end."""
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Hand what was gathered to the owner now (scheduled, or when closing)."""
        self._scheduled = False
        items, self._items = self._items, []
        if items:
            self._flush(items)

    def clear(self) -> list[T]:
        """Drop what was gathered and not yet sent, returning it."""
        items, self._items = self._items, []
        return items

    def __len__(self) -> int:
        return len(self._items)
