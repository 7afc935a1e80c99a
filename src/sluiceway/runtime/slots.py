"""A model's compute slots, handed to whoever has the strongest claim.

A semaphore would hand a freed slot to whichever batcher asked first, even one with a single
job waiting while another key has fifty: with a per-call cost (the kiosk's 0.2 s), that spends
a whole slot on one request. Each waiter instead states a claim, re-read whenever a slot frees
(``batcher.py`` says what a key claims: its priority, then whether it is overdue, then its
batch); the largest claim wins, the earliest asker among equals. It stays work-conserving: a
slot is never idle while anything waits. Loads and fits go first: a key's whole queue waits on
them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from types import TracebackType

Claim = tuple[float, float, float]
Priority = Callable[[], Claim]

_LOAD: Claim = (float("inf"), float("inf"), float("inf"))


def load_first() -> Claim:
    """Loads and fits outrank any batch: a key's whole queue waits on them."""
    return _LOAD


class ComputeSlots:
    """``count`` slots; ``acquire(priority)`` waits for one, ``release()`` hands it on."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._free = count
        self._waiting: dict[int, tuple[Priority, asyncio.Future[None]]] = {}
        self._order = itertools.count()

    @property
    def free(self) -> int:
        """Slots nobody holds."""
        return self._free

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiting)

    async def acquire(self, priority: Priority = load_first) -> None:
        """Take a slot; when none is free, wait to be chosen by ``priority`` (larger first)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        ticket = next(self._order)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = (priority, granted)
        try:
            await granted
        except asyncio.CancelledError:
            if self._waiting.pop(ticket, None) is None and granted.done():
                self.release()  # it was handed over just as we were cancelled: pass it on
            raise

    def take_free(self, wanted: int) -> int:
        """Take up to ``wanted`` more slots at once, only ones nobody waits for; return how many."""
        if self._waiting or wanted <= 0:
            return 0
        taken = min(wanted, self._free)
        self._free -= taken
        return taken

    def release(self) -> None:
        """Give the slot to the waiter with the largest claim (earliest among equals)."""
        while self._waiting:
            if len(self._waiting) == 1:
                ticket = next(iter(self._waiting))
            else:
                ticket = max(self._waiting, key=lambda t: (self._waiting[t][0](), -t))
            _, granted = self._waiting.pop(ticket)
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
