"""Logging: identical warnings are held back, everything else passes."""

from __future__ import annotations

import logging

import pytest

from sluiceway.logs import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> tuple[logging.Logger, list[str], Clock]:
    """A logger whose handler has a ``RepeatFilter`` on a clock the test moves."""
    clock = Clock()
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.getMessage()}")

    handler = Collect()
    handler.addFilter(RepeatFilter(window_s=10, clock=clock))
    logger = logging.getLogger("tests.repeat")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, lines, clock


def test_an_identical_warning_is_written_once_per_window_with_the_count_held_back(
    logged: tuple[logging.Logger, list[str], Clock],
) -> None:
    logger, lines, clock = logged
    for _ in range(560):  # an outage's second of 503s
        logger.warning("model unavailable: %s", "no live worker serves 'knn'")
    clock.now = 10.5
    logger.warning("model unavailable: %s", "no live worker serves 'knn'")
    assert lines == [
        "WARNING model unavailable: no live worker serves 'knn'",
        "WARNING model unavailable: no live worker serves 'knn' "
        "(559 identical lines held back in 10 s)",
    ]


def test_different_warnings_and_lower_levels_are_not_held_back(
    logged: tuple[logging.Logger, list[str], Clock],
) -> None:
    logger, lines, _ = logged
    for i in range(3):
        logger.warning("slot %d lost", i)
        logger.info("same info")
        logger.debug("same debug")
    assert lines == [
        "WARNING slot 0 lost", "INFO same info", "DEBUG same debug",
        "WARNING slot 1 lost", "INFO same info", "DEBUG same debug",
        "WARNING slot 2 lost", "INFO same info", "DEBUG same debug",
    ]  # fmt: skip


def test_each_download_is_a_detail_not_an_essential() -> None:
    """httpx's one INFO line per request it sends shows only when details are asked for."""
    from sluiceway.logs import configure

    httpx_logger = logging.getLogger("httpx")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure("INFO")
        assert not httpx_logger.isEnabledFor(logging.INFO)
        assert logging.getLogger("sluiceway").isEnabledFor(logging.INFO)
        configure("DEBUG")
        assert httpx_logger.isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = handlers, level
        httpx_logger.setLevel(logging.NOTSET)
        logging.getLogger("httpcore").setLevel(logging.NOTSET)
