"""A per-client rate limit: one token bucket per client address, in bounded memory.

Off unless a rate is set. A client may send ``burst`` requests at once and then ``rate`` per
second; beyond that it is answered 429 with the seconds to wait in ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from sluiceway.api.context import client_address


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by client address; the least recently seen are forgotten first.

    Forgetting a client only ever lets it through (a new bucket starts full), so the bound on
    memory (``max_clients``) never makes the limit stricter than configured.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate_per_s must be positive, burst and max_clients at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        """Spend one token of ``client``; 0 if it may go on, else the seconds until it may."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def check(self, request: Request) -> None:
        """Raise 429 with ``Retry-After`` (whole seconds, at least 1) if the client is over."""
        wait = self.take(client_address(request))
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise HTTPException(
                429,
                detail=f"rate limit of {self.rate_per_s:g} requests/s per client exceeded; "
                f"retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
