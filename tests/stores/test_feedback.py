"""The feedback CSV: whole rows, none lost, torn or interleaved under concurrency or crashes."""

from __future__ import annotations

import asyncio
import csv
import multiprocessing
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluiceway.stores.feedback import (
    HEADER,
    MAX_TEXT,
    FeedbackError,
    FeedbackLog,
    FeedbackReport,
)

IMAGE = "a" * 64 + ".png"


def report(index: int, label: str = "") -> FeedbackReport:
    return FeedbackReport(image=IMAGE, prediction=f"class {index}", score=0.5, correct_label=label)


def parsed(path: Path) -> list[list[str]]:
    """Every record of the file, header included; fails on a malformed one."""
    with path.open(newline="", encoding="utf-8") as file:
        records = list(csv.reader(file, strict=True))
    assert records[0] == list(HEADER)
    assert all(len(record) == len(HEADER) for record in records), "a row is torn or merged"
    return records


async def test_rows_round_trip_with_commas_and_quotes(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "feedback")
    when = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    await log.append(
        FeedbackReport(
            image=IMAGE,
            prediction="tabby, tabby cat",
            score=0.71659,
            correct_label='a "lynx", surely',
            time=when,
        )
    )
    await log.append(report(2, "line one\nline two\r\n\tend"))
    rows = log.rows()
    assert rows[0] == {
        "time": "2026-11-24T12:00:00.000+00:00",
        "image": IMAGE,
        "prediction": "tabby, tabby cat",
        "score": "0.7166",
        "correct label": 'a "lynx", surely',
        "report": "",
    }
    # A one-line field: newlines and tabs become single spaces, so only rows end in newlines.
    assert rows[1]["correct label"] == "line one line two end"
    assert len(parsed(log.path)) == 3
    assert log.path.read_bytes().count(b"\n") == 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prediction": ""}, "prediction is required"),
        ({"image": "  "}, "image is required"),
        ({"correct_label": "x" * (MAX_TEXT + 1)}, "at most"),
        ({"score": float("nan")}, "score"),
        ({"score": 1.5}, "score"),
        ({"score": -0.1}, "score"),
    ],
)
async def test_invalid_reports_are_refused_and_nothing_is_written(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    log = FeedbackLog(tmp_path)
    values: dict[str, object] = {"image": IMAGE, "prediction": "cat", "score": 0.5}
    values.update(fields)
    with pytest.raises(FeedbackError, match=message):
        await log.append(FeedbackReport(**values))
    assert not log.path.exists()


async def test_many_concurrent_reports_all_land_whole(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)
    await asyncio.gather(*(log.append(report(i, "x," * 40)) for i in range(300)))
    records = parsed(log.path)
    assert sorted(record[2] for record in records[1:]) == sorted(f"class {i}" for i in range(300))


async def test_a_cancelled_report_is_still_written(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)
    tasks = [asyncio.create_task(log.append(report(i))) for i in range(50)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(log.append(report(50)))
    assert len(parsed(log.path)) == 52


def test_threads_never_interleave(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)

    def writer(thread: int) -> None:
        for i in range(40):
            log.write_rows([report(thread * 1000 + i, "y" * 150).row()])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = parsed(log.path)
    assert len(records) == 1 + 8 * 40
    assert len({record[2] for record in records[1:]}) == 8 * 40


def _process_writer(directory: str, worker: int, count: int) -> None:
    log = FeedbackLog(Path(directory))
    for i in range(count):
        log.write_rows([report(worker * 1000 + i, "z" * 180).row()])


def test_processes_never_interleave(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_process_writer, args=(str(tmp_path), w, 50)) for w in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    records = parsed(FeedbackLog(tmp_path).path)
    assert len(records) == 1 + 4 * 50  # one header, whoever came first wrote it
    assert len({record[2] for record in records[1:]}) == 4 * 50


def _write_forever(directory: str) -> None:
    log = FeedbackLog(Path(directory))
    i = 0
    while True:
        log.write_rows([report(i, "w" * 199).row() for _ in range(20)])
        i += 1


def test_a_killed_writer_leaves_only_whole_rows(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    writer = context.Process(target=_write_forever, args=(str(tmp_path),))
    writer.start()
    log = FeedbackLog(tmp_path)
    deadline = time.monotonic() + 60  # a bound for a loaded machine, not a speed claim
    while (not log.path.exists() or log.path.stat().st_size < 50_000) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(10)
    assert log.path.exists() and log.path.stat().st_size >= 50_000, "the writer never got going"
    # Linux may end a multi-page write early when SIGKILL arrives, so the killed writer's last
    # group can be cut short: never acknowledged, and cut off by the next writer. What is
    # promised is that every other row is whole and the file parses once anyone writes again.
    torn = not log.path.read_bytes().endswith(b"\n")
    log.write_rows([report(-1).row()])
    records = parsed(log.path)
    assert len(records) > 100
    assert records[-1][2] == "class -1"
    assert log.path.read_bytes().endswith(b"\n"), f"torn tail before the append: {torn}"


async def test_a_torn_tail_from_a_crash_is_cut_before_the_next_row(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)
    await log.append(report(1))
    with log.path.open("ab") as file:  # what a power cut mid-write could leave behind
        file.write(b"2026-11-24T00:00:00.000+00:00," + IMAGE.encode() + b',"half a ro')
    await log.append(report(2))
    records = parsed(log.path)
    assert [record[2] for record in records[1:]] == ["class 1", "class 2"]


async def test_a_file_holding_only_a_torn_header_is_restarted(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)
    log.path.write_bytes(b"time,ima")
    await log.append(report(1))
    assert [record[2] for record in parsed(log.path)[1:]] == ["class 1"]


async def test_a_report_text_is_kept_verbatim_and_read_for_its_fields(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)
    text = "{'filename': 'test', 'prediction': 'test-pred', 'score': 1. }"
    await log.append(FeedbackReport.from_text(text))
    [row] = log.rows()
    assert row["report"] == text
    assert (row["image"], row["prediction"], row["score"]) == ("test", "test-pred", "1.0000")


@pytest.mark.parametrize(
    ("text", "image", "prediction", "score"),
    [
        (
            "{'filename': 'a.jpg', 'prediction': 'Eskimo_dog', 'score': 0.9346}",
            "a.jpg",
            "Eskimo_dog",
            "0.9346",
        ),
        ('{"filename": "b.png", "prediction": "tench"}', "b.png", "tench", ""),
        ("{'prediction': 'crane', 'score': 7}", "", "crane", ""),  # out of range: not taken
        ("{'prediction': 3, 'score': True}", "", "", ""),  # wrong types: not taken
        ("__import__('os').system('touch /tmp/pwned')", "", "", ""),  # never evaluated
        ("the model is wrong, it is a cat", "", "", ""),
        ("[" * 500 + "]" * 500, "", "", ""),  # too deep for the parser: read as nothing
        ('=HYPERLINK("http://x")', "", "", ""),
    ],
)
async def test_any_report_text_is_stored_and_only_plain_literals_are_read(
    tmp_path: Path, text: str, image: str, prediction: str, score: str
) -> None:
    log = FeedbackLog(tmp_path)
    await log.append(FeedbackReport.from_text(text))
    [row] = log.rows()
    assert (row["image"], row["prediction"], row["score"]) == (image, prediction, score)
    assert row["report"] == ("'" + text if text.startswith("=") else text)


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
async def test_formula_text_is_stored_inert(tmp_path: Path, start: str) -> None:
    log = FeedbackLog(tmp_path)
    formula = f"{start}cmd|' /C calc'!A0"
    await log.append(
        FeedbackReport(image=IMAGE, prediction=formula, score=0.5, correct_label=formula)
    )
    [row] = log.rows()
    assert row["prediction"] == row["correct label"] == "'" + formula


async def test_an_overlong_report_is_refused(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)
    with pytest.raises(FeedbackError, match="at most 1000"):
        await log.append(FeedbackReport.from_text("x" * 1001))
    assert not log.path.exists()


async def test_a_file_from_before_the_report_column_gains_it(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)
    old = (
        "time,image,prediction,score,correct label\n"
        '2026-11-01T00:00:00.000+00:00,a.png,"cat, tabby",0.5000,dog\n'
    )
    log.path.write_text(old, encoding="utf-8")
    await asyncio.gather(*(log.append(report(i)) for i in range(20)))
    records = parsed(log.path)
    assert records[1] == [
        "2026-11-01T00:00:00.000+00:00",
        "a.png",
        "cat, tabby",
        "0.5000",
        "dog",
        "",
    ]
    assert sorted(record[2] for record in records[2:]) == sorted(f"class {i}" for i in range(20))


def test_processes_racing_a_header_upgrade_lose_nothing(tmp_path: Path) -> None:
    old = "time,image,prediction,score,correct label\n"
    (tmp_path / "feedback.csv").write_text(old, encoding="utf-8")
    context = multiprocessing.get_context("fork")
    writers = [
        context.Process(target=_process_writer, args=(str(tmp_path), w, 25)) for w in range(4)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
        assert writer.exitcode == 0
    records = parsed(tmp_path / "feedback.csv")
    assert len({record[2] for record in records[1:]}) == len(records) - 1 == 4 * 25
    assert not list(tmp_path.glob("*.upgrade"))
