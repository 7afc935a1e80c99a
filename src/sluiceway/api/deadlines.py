"""A request's deadline: the configured timeout, or less if the client asks for less."""

from __future__ import annotations

import time

from starlette.requests import Request

from sluiceway.api.errors import RequestError

TIMEOUT_HEADER = "x-request-timeout"


def deadline_of(request: Request, default_timeout_s: float) -> float:
    """Epoch seconds by which the answer is due; ``X-Request-Timeout`` may shorten it."""
    return deadline_from(request.headers.get(TIMEOUT_HEADER), default_timeout_s)


def deadline_from(asked: str | None, default_timeout_s: float) -> float:
    """``deadline_of`` from the ``X-Request-Timeout`` header's value (``None``: not sent)."""
    timeout = default_timeout_s
    if asked is not None:
        try:
            seconds = float(asked)
        except ValueError:
            raise RequestError(400, f"{TIMEOUT_HEADER} must be seconds, got {asked!r}") from None
        if not seconds > 0:
            raise RequestError(400, f"{TIMEOUT_HEADER} must be positive, got {asked!r}")
        timeout = min(timeout, seconds)
    return time.time() + timeout
