"""Logging set-up: one format, and the current request's id on every record."""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Callable

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(level: str) -> None:
    """Send records to stderr with time, level, logger, request id and message."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Repeats:
    """Lets one of each identical message through per interval and counts the rest.

    During an outage every request can fail the same way (hundreds of identical 503 warnings
    a second): the first says it, and the first after each interval says how many were held
    back. Each owner (an app's error table) keeps its own, so apps in one process do not
    silence each other.
    """

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}

    def admit(self, message: str) -> int | None:
        """``None`` to hold ``message`` back; otherwise how many like it were held back."""
        now = self._clock()
        said, held = self._seen.get(message, (-math.inf, 0))
        if now - said < self.interval_s:
            self._seen[message] = (said, held + 1)
            return None
        if len(self._seen) >= 1024:  # many distinct messages: forget those quiet for a while
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval_s}
        self._seen[message] = (now, 0)
        return held

    def note(self, held: int) -> str:
        """The suffix that says how many were held back (empty for none)."""
        return f" ({held} more like it in the last {self.interval_s:g} s)" if held else ""
