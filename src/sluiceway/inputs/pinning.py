"""Connections go to the address that was checked, never to a fresh DNS answer.

The fetcher checks a host's addresses, then pins the one it will use for the current task; the
connection pool's resolver answers only with pinned addresses, so a DNS answer that changes
between check and connect (DNS rebinding) is never used.
"""

from __future__ import annotations

import contextvars
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp.abc import AbstractResolver, ResolveResult

from sluiceway.inputs.addresses import IPAddress

# Addresses checked for this task's current hop: (host, port) → address to connect to.
_PINNED: contextvars.ContextVar[dict[tuple[str, int], str]] = contextvars.ContextVar("pinned")


class PinnedResolver(AbstractResolver):
    """Answers only with the address the check pinned for the host: never resolves again.

    aiohttp connects to an IP-literal host without asking a resolver; every name comes here,
    in the task that is downloading, so the task's pins are the ones seen.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = _PINNED.get({}).get((host.lower().strip("[]"), port))
        if address is None:  # a connection nobody checked: refuse rather than resolve
            raise OSError(f"{host}:{port} was not checked before connecting")
        kind = socket.AF_INET6 if ":" in address else socket.AF_INET
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": kind,
                "proto": 0,
                "flags": flags,
            }
        ]

    async def close(self) -> None:
        return None


@contextmanager
def pinned(host: str, port: int, address: IPAddress) -> Iterator[None]:
    """Within the block, ``PinnedResolver`` answers ``address`` for ``host:port``."""
    token = _PINNED.set({**_PINNED.get({}), (host, port): str(address)})
    try:
        yield
    finally:
        _PINNED.reset(token)
