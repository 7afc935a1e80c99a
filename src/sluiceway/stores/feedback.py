"""People's reports of wrong predictions, appended to one CSV file that is never torn.

Every row goes to disk in one ``write`` on an ``O_APPEND`` descriptor, under an exclusive
``flock`` (so processes sharing the folder never interleave), followed by ``fsync`` before the
report is acknowledged. Reports arriving together in one process are written as one group: one
write and one fsync for all of them. A tail left by a crash mid-write (a row not ending in a
newline, never acknowledged) is cut off by the next writer, so the file always parses.
"""

from __future__ import annotations

import ast
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

HEADER = ("time", "image", "prediction", "score", "correct label", "report")
FILE_NAME = "feedback.csv"
MAX_TEXT = 200
"""Longest prediction or correct label kept, in characters; longer reports are refused."""
MAX_REPORT = 1000
"""Longest report text kept, in characters."""

_OLD_HEADER = HEADER[:5]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_FORMULA_START = ("=", "+", "-", "@")


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
    return inert(text)


def inert(text: str) -> str:
    """``text`` as a spreadsheet shows it rather than runs it: a would-be formula gets a ``'``."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def read_report(text: str) -> dict[str, str | float]:
    """The ``filename``, ``prediction`` and ``score`` a report text states, those that are valid.

    The seed's page writes a Python dict literal; anything else (or a wrong type) reads as
    nothing, and the text is still kept.
    """
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    fields: dict[str, str | float] = {}
    for key in ("filename", "prediction"):
        if isinstance(value.get(key), str):
            fields[key] = value[key]
    score = value.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        return fields
    if math.isfinite(score) and 0.0 <= score <= 1.0:
        fields["score"] = float(score)
    return fields


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """One person's report: which stored image, what the model said, what it really is.

    Without ``report`` text, image, prediction and score are required; with it, each may be
    empty (the text says what the person saw).
    """

    image: str = ""
    prediction: str = ""
    score: float | None = None
    correct_label: str = ""
    report: str = ""
    time: datetime | None = None

    @classmethod
    def from_text(cls, report: str, correct_label: str = "") -> FeedbackReport:
        """A report in the seed page's words: the text as sent, its fields read when it parses."""
        fields = read_report(report)
        score = fields.get("score")
        return cls(
            image=str(fields.get("filename", "")),
            prediction=str(fields.get("prediction", "")),
            score=score if isinstance(score, float) else None,
            correct_label=correct_label,
            report=report,
        )

    def row(self) -> bytes:
        """This report as one CSV row (quoted by the csv module), ready to append."""
        report = _CONTROL.sub(" ", self.report)  # one line, otherwise as sent
        if len(report) > MAX_REPORT:
            raise FeedbackError(
                f"report is {len(report)} characters; at most {MAX_REPORT} are accepted"
            )
        structured = not report.strip()
        if self.score is None:
            if structured:
                raise FeedbackError("score is required")
            score = ""
        elif math.isfinite(self.score) and 0.0 <= self.score <= 1.0:
            score = f"{self.score:.4f}"
        else:
            raise FeedbackError(f"score must be a number between 0 and 1, got {self.score!r}")
        stamp = (self.time or datetime.now(UTC)).isoformat(timespec="milliseconds")
        fields = (
            stamp,
            clean_text(self.image, "image", required=structured),
            clean_text(self.prediction, "prediction", required=structured),
            score,
            clean_text(self.correct_label, "correct label", required=False),
            inert(report),
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
            elif _first_line(fd).rstrip(b"\r\n") == _csv_line(_OLD_HEADER).rstrip(b"\n"):
                _add_report_column(self.path, fd)
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
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # The file may have been replaced (a header upgrade) while this writer waited on the
        # old one's lock: then its rows belong in the new file.
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


def _first_line(fd: int) -> bytes:
    head = os.pread(fd, 4096, 0)
    return head.split(b"\n", 1)[0]


def _add_report_column(path: Path, fd: int) -> None:
    """Rewrite a file from before the ``report`` column with it (empty), then put the new file
    in place; the caller's ``fd`` is re-pointed at the new file, still holding its lock."""
    with os.fdopen(os.dup(fd), "r", encoding="utf-8", newline="") as old:
        old.seek(0)
        records = list(csv.reader(old))
    upgraded = path.with_name(path.name + ".upgrade")
    with upgraded.open("w", encoding="utf-8", newline="") as new:
        writer = csv.writer(new, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows([*record, ""] for record in records[1:])
        new.flush()
        os.fsync(new.fileno())
    new_fd = os.open(upgraded, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    fcntl.flock(new_fd, fcntl.LOCK_EX)  # nobody else can know this file yet
    os.replace(upgraded, path)
    os.dup2(new_fd, fd)  # the old file's lock goes with its descriptor; writers waiting re-open
    os.close(new_fd)


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
