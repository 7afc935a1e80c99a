"""Logging set-up: one format, the current request's id on every record, repeats held back,
and the switches and timestamps Triton's log settings turn at runtime (``log_settings.py``)."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import TextIO

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
        if record.levelno < logging.WARNING or getattr(record, ALWAYS, False):
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


ALWAYS = "sluiceway_always"
"""A record attribute: a record that has it set is written whatever the switches and repeats
(the line saying the log settings changed)."""


class LevelSwitches(logging.Filter):
    """Which levels the handler writes, as Triton switches them: INFO, WARNING and ERROR
    (CRITICAL with it) each on or off, and DEBUG only at a verbose level above 0.

    Python has a threshold where Triton has switches: a threshold cannot say "errors but not
    warnings", a filter can. The start-up level turns on itself and every level above it.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.info = level <= logging.INFO
        self.warning = level <= logging.WARNING
        self.error = level <= logging.CRITICAL  # CRITICAL goes with the ERROR switch
        self.verbose = 1 if level <= logging.DEBUG else 0

    def lowest(self) -> int:
        """The lowest level written: Sluiceway's loggers must make records from there up."""
        for on, level in (
            (self.verbose > 0, logging.DEBUG),
            (self.info, logging.INFO),
            (self.warning, logging.WARNING),
            (self.error, logging.ERROR),
        ):
            if on:
                return level
        return logging.CRITICAL + 1

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, ALWAYS, False):
            return True
        if record.levelno >= logging.ERROR:
            return self.error
        if record.levelno >= logging.WARNING:
            return self.warning
        if record.levelno >= logging.INFO:
            return self.info
        return self.verbose > 0


class LineFormatter(logging.Formatter):
    """Time, level, logger, request id and message; the time in either of Triton's formats:
    ``default``, Python's local time (``2026-12-02 01:37:01,123``), or ``ISO8601``, UTC
    (``2026-12-02T00:37:01.123Z``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        self.iso8601 = False

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if not self.iso8601:
            return super().formatTime(record, datefmt)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class SluicewayHandler(logging.StreamHandler[TextIO]):
    """The handler ``configure`` installs: stderr (or ``stream``), with the switches and the
    formatter the log settings turn."""

    def __init__(self, level: int, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.switches = LevelSwitches(level)
        self.line = LineFormatter()
        self.addFilter(self.switches)  # first: a record switched off costs nothing more
        self.addFilter(_RequestIdFilter())
        self.addFilter(RepeatFilter())
        self.setFormatter(self.line)


def installed() -> SluicewayHandler | None:
    """Sluiceway's handler, where ``configure`` installed it on the root logger of this process;
    ``None`` where the process's logging is its host's (a program that embeds the app)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, SluicewayHandler):
            return handler
    return None


def configure(level: str, stream: TextIO | None = None) -> None:
    """Send records to stderr (or ``stream``) with time, level, logger, request id and message;
    ``level`` is the start-up state of the log settings."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    root.handlers[:] = [SluicewayHandler(root.level, stream)]
    # Sluiceway's loggers follow the root's until the log settings change them.
    logging.getLogger("sluiceway").setLevel(logging.NOTSET)
    # httpx logs every request it sends at INFO: one line per downloaded image, which under the
    # bird API's load cost ~5 % of the server's CPU (py-spy, bench/peers birds workload) and
    # buries the essentials. Its lines are details: they show at DEBUG.
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
