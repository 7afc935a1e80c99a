"""Logging set-up: one format, the current request's id on every record, repeats held back."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

REPEAT_WINDOW_S = 10.0
"""An identical warning is written at most once per this many seconds."""


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class RepeatFilter(logging.Filter):
    """Let an identical warning (same logger, level and text) through once per window.

    During an outage every request may fail the same way; hundreds of identical lines a second
    bury everything else and cost CPU when it is scarcest. The first line of a window is
    written, the rest counted, and the next written line says how many were held back.
    Records below ``WARNING`` are not touched: DEBUG and INFO are asked for.
    """

    _MAX_KEYS = 1024  # distinct texts remembered; beyond this the memory starts afresh

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        key = (record.name, record.levelno, text)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if len(self._seen) >= self._MAX_KEYS:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if seen is not None and seen[1]:
            record.msg = f"{text} ({seen[1]} identical lines held back in {self.window_s:g} s)"
            record.args = None
        return True


def configure(level: str) -> None:
    """Send records to stderr with time, level, logger, request id and message."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(RepeatFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request it sends at INFO: one line per downloaded image, which under the
    # bird API's load cost ~5 % of the server's CPU (py-spy, bench/peers birds workload) and
    # buries the essentials. Its lines are details: they show at DEBUG.
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
