"""Triton's logging extension: the log settings a client reads and changes while the server
runs (``GET``/``POST /v2/logging``, gRPC ``LogSettings``), applied to Sluiceway's handler
(``logs.py``). Both transports call ``current`` and ``update``, so they say the same things.

The settings are Triton's, with its names and types:

- ``log_info``, ``log_warning``, ``log_error`` (bool): those levels written or not (``error``
  covers CRITICAL too);
- ``log_verbose_level`` (0 to 2³²−1): above 0, Sluiceway's loggers write DEBUG records (every
  level above 0 alike; other libraries keep the level ``SLUICEWAY_LOG_LEVEL`` gave them);
- ``log_format``: ``"default"`` or ``"ISO8601"``, the timestamp (``logs.LineFormatter``);
- ``log_file``: always ``""``, logs go to stderr. It cannot be changed: a client that names a
  file for the server to write could write wherever the server's user can.

The start-up state is ``SLUICEWAY_LOG_LEVEL``'s: its level and those above it on, verbose 1 at
DEBUG. An update names any subset; a ``null`` (gRPC: a value with no field set) leaves a setting
as it is, as in Triton. It is checked whole before any of it applies (Triton applies a request's
settings one by one and may stop half-way): an unknown name, a wrong type or a value out of
range is ``BadInput`` naming the setting. The settings are the process's: with several worker
processes a change is refused (``update``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sluiceway import logs
from sluiceway.errors import BadInput, LogSettingsUnavailable

logger = logging.getLogger(__name__)

Value = bool | int | str
"""A setting's value: Triton's ``$boolean``, ``$uint32`` or ``$string``."""

LOG_FILE = ""
"""Triton's ``log_file`` when logs go to the console: here they always go to stderr."""

FORMATS = ("default", "ISO8601")
SWITCHES = ("log_info", "log_warning", "log_error")
NAMES = ("log_file", *SWITCHES, "log_verbose_level", "log_format")
MAX_VERBOSE = 2**32 - 1
"""Triton's ``log_verbose_level`` is a uint32."""

ADMIN_ACTION = "changing log settings"
"""What the admin token turns on (``SLUICEWAY_ADMIN_TOKEN``), as its refusals name it."""


def current() -> dict[str, Value]:
    """Every setting, in Triton's order, as the handler applies them now."""
    handler = _handler()
    switches = handler.switches
    return {
        "log_file": LOG_FILE,
        "log_info": switches.info,
        "log_warning": switches.warning,
        "log_error": switches.error,
        "log_verbose_level": switches.verbose,
        "log_format": "ISO8601" if handler.line.iso8601 else "default",
    }


def update(changes: Mapping[str, object], processes: int = 1) -> dict[str, Value]:
    """Apply ``changes`` (any subset of the settings) and answer every setting afterwards;
    ``BadInput`` naming the first that cannot be applied, and then none is.

    ``processes``: the server's worker processes (``SLUICEWAY_WORKERS``). With several, a
    change would reach only the one a connection landed on, and a client keeping its
    connection (as tritonclient does) could never reach the others: refused,
    ``LogSettingsUnavailable`` saying what to do instead.
    """
    handler = _handler()
    checked = _checked(changes)
    if checked and processes > 1:
        raise LogSettingsUnavailable(
            f"log settings cannot be changed with SLUICEWAY_WORKERS={processes}: a change would "
            "reach only the process this connection reached; set SLUICEWAY_LOG_LEVEL and "
            "restart, or serve with one worker process"
        )
    if checked:
        # Written whatever the switches and repeats, so that every change leaves a trace,
        # those turning warnings or everything off included (``logs.ALWAYS``).
        described = ", ".join(f"{name}={value!r}" for name, value in checked.items())
        record = logger.makeRecord(
            logger.name, logging.WARNING, __file__, 0,
            "log settings changed by a client: %s", (described,), None,
            extra={logs.ALWAYS: True},
        )  # fmt: skip
        logger.handle(record)  # past the logger's level too: it may have every level off
    switches = handler.switches
    switches.info = bool(checked.get("log_info", switches.info))
    switches.warning = bool(checked.get("log_warning", switches.warning))
    switches.error = bool(checked.get("log_error", switches.error))
    switches.verbose = int(checked.get("log_verbose_level", switches.verbose))
    if "log_format" in checked:
        handler.line.iso8601 = checked["log_format"] == "ISO8601"
    # Records below a logger's level are never made: Sluiceway's loggers make them down to the
    # lowest level switched on (DEBUG while verbose), whatever the root's start-up level.
    logging.getLogger("sluiceway").setLevel(switches.lowest())
    return current()


def _handler() -> logs.SluicewayHandler:
    handler = logs.installed()
    if handler is None:
        raise LogSettingsUnavailable(
            "this process's logging was set up by the program that runs the app, not by "
            "'sluiceway serve', so its log settings are that program's; to serve them, start "
            "with 'sluiceway serve' or 'uvicorn sluiceway.cli:served_app --factory'"
        )
    return handler


def _checked(changes: Mapping[str, object]) -> dict[str, Value]:
    """The settings ``changes`` sets (those given as ``None`` left out), each checked."""
    checked: dict[str, Value] = {}
    for name, value in changes.items():
        if name not in NAMES:
            raise BadInput(f"unknown log setting {name!r}: the settings are {', '.join(NAMES)}")
        if value is None:
            continue
        if name in SWITCHES:
            if not isinstance(value, bool):
                raise BadInput(f"{name!r} must be true or false")
        elif name == "log_verbose_level":
            if type(value) is not int or not 0 <= value <= MAX_VERBOSE:  # not a bool either
                raise BadInput(f"{name!r} must be a whole number from 0 to {MAX_VERBOSE}")
        elif name == "log_format":
            if value not in FORMATS:
                raise BadInput(f"'log_format' must be {' or '.join(map(repr, FORMATS))}")
        elif value != LOG_FILE:
            raise BadInput(
                "'log_file' cannot be set: a client naming a file for the server to write could "
                'write wherever the server\'s user can; logs go to stderr (log_file is "")'
            )
        assert isinstance(value, bool | int | str)
        checked[name] = value
    return checked
