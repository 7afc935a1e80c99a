"""People's reports of wrong predictions, appended to one CSV file that is never torn.

Every row goes to disk in one ``write`` on an ``O_APPEND`` descriptor, under an exclusive
``flock`` (so processes sharing the folder never interleave), followed by ``fsync`` before the
report is acknowledged. Reports arriving together in one process are written as one group: one
write and one fsync for all of them. A tail left by a crash mid-write (a row not ending in a
newline, never acknowledged) is cut off by the next writer, so the file always parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import fcntl
import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HEADER = ("time", "image", "prediction", "score", "correct label")
FILE_NAME = "feedback.csv"
MAX_TEXT = 200
"""Longest prediction or correct label kept, in characters; longer reports are refused."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class FeedbackError(ValueError):
    """A report that cannot be stored as it is; the message says which field and why."""


def clean_text(value: str, field: str, *, required: bool) -> str:
    """One line of text: control characters and newlines become spaces; bounded length.

    One-line fields keep the file's only newlines the row ends, which is what lets a torn tail
    be found by its missing newline.
    """
    text = " ".join(_CONTROL.sub(" ", value).split())
    if required and not text:
        raise FeedbackError(f"{field} is required")
    if len(text) > MAX_TEXT:
        raise FeedbackError(f"{field} is {len(text)} characters; at most {MAX_TEXT} are accepted")
    return text


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """One person's report: which stored image, what the model said, what it really is."""

    image: str
    prediction: str
    score: float
    correct_label: str = ""
    time: datetime | None = None

    def row(self) -> bytes:
        """This report as one CSV row (quoted by the csv module), ready to append."""
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise FeedbackError(f"score must be a number between 0 and 1, got {self.score!r}")
        stamp = (self.time or datetime.now(UTC)).isoformat(timespec="milliseconds")
        fields = (
            stamp,
            clean_text(self.image, "image", required=True),
            clean_text(self.prediction, "prediction", required=True),
            f"{self.score:.4f}",
            clean_text(self.correct_label, "correct label", required=False),
        )
        return _csv_line(fields)


def _csv_line(fields: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue().encode("utf-8")


class FeedbackLog:
    """The feedback CSV in ``directory``: safe to append from many tasks, threads and processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self._lock = asyncio.Lock()
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writing: set[asyncio.Task[None]] = set()

    async def append(self, report: FeedbackReport) -> None:
        """Append one report; returns once it is on disk. ``FeedbackError`` if invalid."""
        row = report.row()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, done))
        async with self._lock:
            if not done.done():
                # Whoever holds the lock writes every row waiting so far: one write, one fsync.
                group, self._pending = self._pending, []
                writing = self._start_write([r for r, _ in group])
                writing.add_done_callback(lambda task: _settle(task, [f for _, f in group]))
                # Shielded: a cancelled request must not leave its group's rows unacknowledged.
                # A failed write reaches every waiter, this one included, through its future.
                with contextlib.suppress(Exception):
                    await asyncio.shield(writing)
        await done

    def _start_write(self, rows: list[bytes]) -> asyncio.Task[None]:
        task = asyncio.create_task(asyncio.to_thread(self.write_rows, rows))
        self._writing.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._writing.discard)
        return task

    def write_rows(self, rows: Sequence[bytes]) -> None:
        """Append complete rows in one write and fsync them. Blocking; any thread or process."""
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = b"".join(rows)
        with _locked_append(self.path) as fd:
            size = os.fstat(fd).st_size
            size = _cut_torn_tail(fd, size)
            if size == 0:
                payload = _csv_line(HEADER) + payload
            _write_all(fd, payload)
            os.fsync(fd)
        if size == 0:
            _fsync_directory(self.directory)

    def rows(self) -> list[dict[str, str]]:
        """Every stored report, oldest first, keyed by the header's names."""
        if not self.path.exists():
            return []
        with self.path.open(newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))


def _settle(task: asyncio.Future[None], waiters: list[asyncio.Future[None]]) -> None:
    error = None if task.cancelled() else task.exception()
    for waiter in waiters:
        if waiter.done():
            continue
        if task.cancelled():
            waiter.cancel()
        elif error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(None)


@contextlib.contextmanager
def _locked_append(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


def _cut_torn_tail(fd: int, size: int) -> int:
    """Truncate a last line with no newline (a crashed write); return the new size."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - 4096)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    return keep


def _write_all(fd: int, payload: bytes) -> None:
    # One write for a regular file in practice; the loop only guards a short write, and the
    # flock keeps any continuation contiguous.
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
