"""The scale-out benchmark's hop summary: a saturated level is reported, not averaged in."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from bench.loadtest import free_port
from bench.scaleout import run
from bench.scaleout.run import HopRow, Level, hop_rows, hop_table, paced, saturation_notes


def _level(
    rate: int,
    median_ms: float,
    answered: int,
    seconds: float = 10.0,
    baseline_ms: float | None = None,
    **counts: int,
) -> Level:
    """A paced level of ``answered`` requests all taking ``median_ms``, over ``seconds``."""
    latencies = [median_ms] * answered
    return Level(
        rate, paced=True, latencies=latencies, seconds=seconds, baseline_ms=baseline_ms, **counts
    )


def _table_row(rows: list[HopRow], load: int) -> str:
    table = hop_table(rows, "req/s", rate=True)
    return next(line for line in table if line.startswith(f"| {load} |"))


def test_levels_both_modes_held_give_the_difference_of_medians() -> None:
    rounds = {
        "embedded": [{100: _level(100, 1.5, 1000)}, {100: _level(100, 1.6, 1000)}],
        "split": [{100: _level(100, 2.0, 1000)}, {100: _level(100, 2.4, 1000)}],
    }
    [row] = hop_rows(rounds, (100,))
    assert not row.saturated
    assert row.hops == pytest.approx([0.5, 0.8])
    assert row.hop == pytest.approx(0.65)
    assert "**+0.65 ms**" in _table_row([row], 100)
    assert saturation_notes([row], "req/s") == []


def test_a_mode_below_the_rate_asked_is_saturated_and_left_out_of_the_hop() -> None:
    # Split answered 3000 of 4000 in 10 s: 300 req/s where 400 were asked.
    rounds = {
        "embedded": [{400: _level(400, 1.5, 4000)}],
        "split": [{400: _level(400, 80.0, 3000, timed_out=1000)}],
    }
    [row] = hop_rows(rounds, (400,))
    assert row.saturated
    assert row.hop is None
    assert row.achieved["split"] == pytest.approx(300)
    assert row.medians["split"] == pytest.approx(80.0)  # of the requests answered
    line = _table_row([row], 400)
    assert "**saturated**" in line
    assert "| 400 / 300 |" in line  # what each mode answered, not the 400 asked
    notes = "\n".join(saturation_notes([row], "req/s"))
    assert "**400 req/s: saturated.**" in notes
    assert "split did not hold it in 1 of 1 rounds (300 req/s answered" in notes
    assert "1000 timed out" in notes
    assert "embedded did not hold" not in notes


def test_the_hop_is_the_median_of_the_rounds_both_modes_held() -> None:
    embedded = [{200: _level(200, 1.0, 2000)} for _ in range(3)]
    split = [
        {200: _level(200, 1.5, 2000)},
        {200: _level(200, 40.0, 1200)},  # 120 req/s: fell behind this round
        {200: _level(200, 1.7, 2000)},
    ]
    [row] = hop_rows({"embedded": embedded, "split": split}, (200,))
    assert row.hops[1] is None
    assert row.hop == pytest.approx(0.6)
    assert row.unheld == {"embedded": 0, "split": 1}
    line = _table_row([row], 200)
    assert "**+0.60 ms** (2 of 3 rounds held)" in line
    assert "+0.50, saturated, +0.70" in line


def test_a_level_at_the_rate_with_failures_is_not_held() -> None:
    assert _level(100, 1.0, 1000).held
    assert _level(100, 1.0, 960).held  # within 5 % of the rate
    assert not _level(100, 1.0, 900).held
    assert not _level(100, 1.0, 1000, failed=1).held
    assert not _level(100, 1.0, 1000, timed_out=1).held
    assert not _level(100, 1.0, 1000, late=1).held
    # A closed loop cannot fall behind its load: only failures count against it.
    assert Level(8, paced=False, latencies=[200.0] * 10, seconds=10).held


def test_late_requests_are_reported_with_how_far_the_load_generator_fell_behind() -> None:
    rounds = {
        "embedded": [{400: Level(400, True, [3.0] * 3000, 10.0, late=1000, behind_s=1.25)}],
        "split": [{400: _level(400, 2.0, 4000)}],
    }
    [row] = hop_rows(rounds, (400,))
    notes = "\n".join(saturation_notes([row], "req/s"))
    assert "1000 late, the load generator up to 1.25 s behind its schedule" in notes
    assert "split did not hold" not in notes


def test_a_level_with_nothing_answered_is_summarised_without_error() -> None:
    rounds = {
        "embedded": [{400: _level(400, 1.5, 4000)}],
        "split": [{400: Level(400, paced=True, seconds=15.0, timed_out=4000)}],
    }
    [row] = hop_rows(rounds, (400,))
    assert row.hop is None
    assert math.isnan(row.medians["split"])
    assert row.requests["split"] == 0
    assert "0 req/s answered over all rounds, 0 failed, 4000 timed out" in "\n".join(
        saturation_notes([row], "req/s")
    )


async def test_paced_load_on_a_port_nobody_listens_on_is_a_failed_level() -> None:
    level = await paced(free_port(), 50, 0.2)
    assert not level.held
    assert "the warm-up failed" in level.error


@pytest.fixture
async def stalling_server() -> AsyncIterator[int]:
    """An HTTP server that answers the warm-up's 50 requests, then never answers again."""
    answered = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            await reader.readexactly(length)
            answered += 1
            if answered > 50:
                await asyncio.sleep(3600)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_requests_the_server_cannot_answer_in_time_are_counted_not_raised(
    stalling_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "REQUEST_TIMEOUT_S", 0.3)
    level = await paced(stalling_server, 40, 0.5)
    assert level.timed_out == 20
    assert level.latencies == []
    assert not level.held


async def test_requests_due_while_every_connection_waits_are_late_not_queued(
    stalling_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "REQUEST_TIMEOUT_S", 0.3)
    monkeypatch.setattr(run, "BACKLOG_S", 0.1)
    level = await paced(stalling_server, 40, 0.5)
    # 0.1 s at 40 a second is 4 at once: 12 fall due in the 0.3 s the first 4 wait, 8 late.
    assert level.late > 0
    assert level.timed_out + level.late == 20
    assert not level.held


def test_a_paced_level_at_the_rate_that_queues_is_not_held() -> None:
    # The 03:35 run's split at 200 req/s: 193 answered a second, none late, a 186 ms median
    # against 5 ms at 100 req/s in the same round. It queued: not held.
    lowest = _level(100, 5.0, 1000)
    queued = _level(200, 186.0, 1930, baseline_ms=5.0)
    kept_up = _level(200, 4.6, 1930, baseline_ms=5.0)
    assert lowest.held and kept_up.held
    assert queued.queued and not queued.held
    assert "over 5x the lowest rate's median" in queued.describe()
    # A closed loop's latency grows with its clients by design: no such clause.
    assert Level(32, paced=False, latencies=[186.0] * 10, seconds=10, baseline_ms=5.0).held
    rounds = {"embedded": [{200: _level(200, 3.4, 2000)}], "split": [{200: queued}]}
    [row] = hop_rows(rounds, (200,))
    assert row.saturated and row.hop is None


async def test_each_paced_level_is_judged_against_its_rounds_lowest_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    medians = {100: 5.0, 200: 186.0}

    async def measured(port: int, rate: float, seconds: float) -> Level:
        return _level(int(rate), medians[int(rate)], int(rate * seconds * 0.97), seconds)

    class Cluster:
        port = 0

    class Server:
        def __enter__(self) -> Cluster:
            return Cluster()

        def __exit__(self, *_: object) -> None:
            return None

    monkeypatch.setattr(run, "paced", measured)
    monkeypatch.setattr(run, "sluiceway", lambda broker, settings: Server())
    levels = await asyncio.to_thread(run._round, "redis://x", (100, 200), 10.0, True)
    assert levels[100].baseline_ms == 5.0 and levels[100].held
    assert levels[200].baseline_ms == 5.0 and not levels[200].held
