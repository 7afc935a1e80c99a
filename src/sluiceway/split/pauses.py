"""How long this process's event loop did not run, so that a stalled Redis is told from a
starved process.

A command in flight is given up on when Redis has not answered it for ``STALLED_S``
(``connection.py``). Counted in wall time, that blamed Redis for time this process did not run:
a worker starved of CPU, or stopped (``SIGSTOP``), woke with the answer waiting in its socket and
its timeout due, and uvloop runs due timers before it reads the sockets. The read then timed out
with its jobs already delivered to it, never to be run, and the worker dropped its connection and
the answers it had not yet sent; an API node that did so failed every request it was waiting on.

A tick every ``TICK_S`` measures how late the loop ran it: a tick later than ``PAUSE_S`` means the
loop did not run meanwhile (not merely a slow turn, during which it still reads its sockets once a
turn), and that time is left out of the clock's :meth:`running` time. ``within`` waits for an
answer until the process has *run* for the time given, and never longer than ``MAX_PAUSE_S``
beyond it.
What is excused is bounded everywhere (``MAX_PAUSE_S``, ``within``, ``wire.live_workers``), so a
loop that stops ticking, or whose turns stay long, cannot wait forever or keep the dead alive.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar
from weakref import WeakKeyDictionary

T = TypeVar("T")

TICK_S = 0.1
"""How often the loop looks at the time: ten callbacks a second, nothing beside a request."""

PAUSE_S = 1.0
"""A tick this late means the loop stopped: a busy loop turn takes milliseconds, and a loop whose
turns take a few tenths of a second (starved, or a long callback) still reads its sockets once a
turn, so it is slow, not paused: an answer that came is seen, and its silence is its own (0.4 s
turns counted as 0.25 s pauses excused 88 % of the time, review of 2026-12-02). What this is for
is a process that does not run at all for seconds (stopped, a paused VM). Lateness below this is
not left out of the running time."""

_KEEP_S = 60.0  # pauses remembered for :meth:`LoopClock.paused_within` (longer than any window)
MAX_PAUSE_S = _KEEP_S
"""The most a pause under way counts for: a tick that never ran again (a bug) must not freeze the
running time for good."""


class LoopClock:
    """Running time of one event loop: its clock less the pauses its ticks saw."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._paused = 0.0  # pauses seen so far, seconds
        self._pauses: deque[tuple[float, float]] = deque()  # (ended at, lasted), oldest first
        self._due = loop.time() + TICK_S
        loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            late = now - self._due
            if late > PAUSE_S:
                self._paused += late
                self._pauses.append((now, late))
                while self._pauses and self._pauses[0][0] < now - _KEEP_S:
                    self._pauses.popleft()
        finally:  # the clock keeps ticking whatever happened above
            self._due = now + TICK_S
            loop.call_at(self._due, self._tick)

    def _pausing(self, now: float) -> float:
        """The pause under way: the loop has not run its tick since it fell due (a timer that
        runs before the tick after a pause sees it so)."""
        late = now - self._due
        return min(late, MAX_PAUSE_S) if late > PAUSE_S else 0.0

    def running(self) -> float:
        """The loop's clock (``loop.time()``) less every pause, the one under way included."""
        now = asyncio.get_running_loop().time()
        return now - self._paused - self._pausing(now)

    def paused_within(self, seconds: float) -> float:
        """How long the loop was paused in the last ``seconds`` (the pause under way included)."""
        now = asyncio.get_running_loop().time()
        since = now - seconds
        paused = self._pausing(now)
        for ended, lasted in self._pauses:
            if ended > since:
                paused += min(lasted, ended - since)
        return min(paused, seconds)


_clocks: WeakKeyDictionary[asyncio.AbstractEventLoop, LoopClock] = WeakKeyDictionary()


def loop_clock() -> LoopClock:
    """The running loop's clock, started on first use (it never holds the loop itself, so a
    closed loop and its clock go together)."""
    loop = asyncio.get_running_loop()
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = LoopClock()
    return clock


class _Deadline:
    """Gives up on a wait once the process has run for the time given (``within``), or once
    ``MAX_PAUSE_S`` more has passed on the loop's clock, whatever the pauses."""

    __slots__ = ("_began", "_clock", "_last", "_seconds", "_timeout", "handle")

    def __init__(self, clock: LoopClock, seconds: float, timeout: asyncio.Timeout) -> None:
        self._clock = clock
        self._seconds = seconds
        self._timeout = timeout
        self._began = clock.running()
        loop = asyncio.get_running_loop()
        # The extension is bounded, against a clock gone wrong: an answer that came during a
        # pause is read in the first loop turn after it (after the timers: ``_due`` re-arms),
        # so only a pause longer than the bound (well past any request's deadline) drops it.
        self._last = loop.time() + seconds + MAX_PAUSE_S
        # One timer, as ``asyncio.timeout`` alone has: a worker waits so once per read.
        self.handle = loop.call_later(seconds, self._due)

    def _due(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = min(self._seconds - (self._clock.running() - self._began), self._last - now)
        if left > 0:  # the process was paused meanwhile: wait on for the time it did not run
            self.handle = loop.call_later(left, self._due)
        else:
            self._timeout.reschedule(now)  # give up now


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``awaitable``'s result, or ``TimeoutError`` once this process has run for ``seconds``
    without it (it is then cancelled), or at the latest ``MAX_PAUSE_S`` later. Pauses of the
    process do not count, so an answer that arrived during one is taken, however late the timer
    that would have given up on it."""
    async with asyncio.timeout(None) as timeout:
        deadline = _Deadline(loop_clock(), seconds, timeout)
        try:
            return await awaitable
        finally:
            deadline.handle.cancel()
