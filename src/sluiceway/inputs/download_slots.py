"""Fair shares of the download slots: per request, and per remote host.

Downloads in flight are bounded per process, per remote host (``addresses.host_key``) and per
request (a ``Share``), so a host that answers one byte a second holds at most its own cap of the
process's slots while other hosts' downloads proceed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Share:
    """One request's share of the download slots: at most ``size`` of its downloads at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()


class HostGates:
    """One semaphore per remote address, kept only while someone holds or awaits it."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._gates: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        gate, users = self._gates.get(key, (asyncio.Semaphore(self.per_host), 0))
        self._gates[key] = (gate, users + 1)
        try:
            async with gate:
                yield
        finally:
            gate, users = self._gates[key]
            if users == 1:
                del self._gates[key]
            else:
                self._gates[key] = (gate, users - 1)
