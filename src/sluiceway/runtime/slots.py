"""A model's compute slots, handed to whoever has the strongest claim.

A semaphore would hand a freed slot to whichever batcher asked first, even one with a single
job waiting while another key has fifty: with a per-call cost (the kiosk's 0.2 s), that spends
a whole slot on one request. Each waiter instead states a claim, re-read whenever a slot frees
(``batcher.py`` says what a key claims: its priority, then whether it is overdue, then its
batch); the largest claim wins, the earliest asker among equals. It stays work-conserving: a
slot is never idle while anything waits. Loads and fits go first: a key's whole queue waits on
them.

A lane whose calls run on its own threads may open a **deck**: ``deck`` more slots, held by
calls that wait at the threads for one to finish (``lane.py`` says when). A thread that ends a
call then starts the next at once, instead of waiting for the event loop to hear of the end,
pick the next call and hand it over.
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
    """``count`` slots (``deck`` more while the deck is open); ``acquire(priority)`` waits for
    one, ``release()`` hands it on."""

    def __init__(self, count: int, deck: int = 0) -> None:
        self.count = count
        self.deck = deck
        self._deck_open = False
        self._held = 0
        self._waiting: dict[int, tuple[Priority, asyncio.Future[None]]] = {}
        self._order = itertools.count()

    @property
    def capacity(self) -> int:
        """Slots that may be held now: ``count``, plus ``deck`` while the deck is open."""
        return self.count + self.deck if self._deck_open else self.count

    @property
    def free(self) -> int:
        """Slots nobody holds."""
        return max(0, self.capacity - self._held)

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiting)

    def open_deck(self, is_open: bool) -> None:
        """Open or close the deck. Opening hands its slots to waiters at once; closing lets
        the calls holding them finish, and no slot is granted until fewer than ``count`` are
        held."""
        if is_open == self._deck_open or not self.deck:
            return
        self._deck_open = is_open
        while is_open and self._held < self.capacity and self._grant():
            pass

    async def acquire(self, priority: Priority = load_first) -> None:
        """Take a slot; when none is free, wait to be chosen by ``priority`` (larger first)."""
        if self._held < self.capacity and not self._waiting:
            self._held += 1
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
        taken = min(wanted, self.free)
        self._held += taken
        return taken

    def release(self) -> None:
        """Give the slot to the waiter with the largest claim (earliest among equals)."""
        self._held -= 1
        if self._held < self.capacity:
            self._grant()

    def _grant(self) -> bool:
        """Hand one slot to the waiter with the largest claim; ``False`` if nobody waits."""
        while self._waiting:
            if len(self._waiting) == 1:
                ticket = next(iter(self._waiting))
            else:
                ticket = max(self._waiting, key=lambda t: (self._waiting[t][0](), -t))
            _, granted = self._waiting.pop(ticket)
            if not granted.done():
                self._held += 1
                granted.set_result(None)
                return True
        return False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
