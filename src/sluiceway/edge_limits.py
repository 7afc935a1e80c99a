"""The HTTP edge's limits and its refusal counter, apart from the protocol that applies them.

``edge.py`` holds ``EdgeProtocol`` (uvicorn's httptools protocol with the limits; its module doc
says what each limit answers). What the app and its middleware need of the edge lives here, so
they do not import the server's protocol: the limits as settings name them, the ``Edge`` that
counts refusals (one per app, in its lifespan state) and the keys they share.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluiceway.config import Settings
from sluiceway.runtime.metrics import Metrics

EDGE_STATUS = "sluiceway.edge_status"
"""Scope key set when the edge answered a request itself (a body timeout's 408), so the request
metrics count that status rather than a client disconnect."""

STATE_KEY = "sluiceway.edge"
"""Key of the ``Edge`` in the app's lifespan state, where each connection's protocol finds it."""


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one connection and one process may take from the edge."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    body_min_rate: int = 1024
    max_connections: int = 1024
    max_requests: int = 1024
    retry_after_s: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        """The limits ``settings`` name."""
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            body_min_rate=settings.body_min_rate,
            max_connections=settings.max_connections,
            max_requests=settings.max_requests,
            retry_after_s=settings.retry_after_s,
        )


class Edge:
    """The edge's limits and the counter of what it refused: one per app, in its lifespan state."""

    def __init__(self, limits: EdgeLimits, metrics: Metrics | None) -> None:
        self.limits = limits
        self._refusals = metrics.edge_refusals if metrics is not None else None

    def refused(self, reason: str, status: int | None) -> None:
        """Count one refusal (``status`` ``None``: the connection was closed without answer)."""
        if self._refusals is not None:
            self._refusals.labels(reason, str(status) if status else "closed").inc()
