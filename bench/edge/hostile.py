"""Hostile traffic against a server under a steady kiosk load: does the edge hold?

    python -m bench.edge.hostile [--duration 60] [--stack sluiceway|uvicorn-httptools]

Phases, each ``--duration`` seconds, one after another on one server process:

1. ``baseline``: the kiosk load alone (64 kiosks on keep-alive connections, 10-20 ms think
   time, 5 restaurants, one query vector each, every label checked);
2. ``slowloris``: plus 500 connections that send a request head a few bytes every 2 s and
   never finish it;
3. ``header-flood``: plus 4 connections at a time sending one endless header as fast as they
   can, reconnecting when cut off, up to 300 MB in all;
4. ``slow-body``: plus 50 kiosk uploads declaring 1 MB and sending 1 byte a second;
5. ``baseline-again``: the load alone once more, to tell how much p99 moves without an attack.

For each phase: the kiosk load's RPS, p50/p99 and errors; the server's RSS; and how long each
hostile connection stayed open (closed by the server, or still open when the phase ended).
Writes ``bench/edge/hostile.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from sklearn.neighbors import KNeighborsClassifier

from bench.loadtest import Server, free_port, machine, stop

HERE = Path(__file__).resolve().parent
KIOSKS = 64
SLOWLORIS = 500
FLOOD_CONNECTIONS = 4
FLOOD_BYTES = 300 * 1024 * 1024
SLOW_BODIES = 50
PHASES = ("baseline", "slowloris", "header-flood", "slow-body", "baseline-again")
"""The load alone again at the end: how far p99 moves with no attack tells the noise."""


def restaurants() -> list[tuple[bytes, dict[tuple[int, int], int]]]:
    """Five restaurants (10 rows each, as the kiosk benchmark makes them) and the label
    scikit-learn gives each query point of the grid the kiosks draw from."""
    out = []
    grid = [(x, y) for x in range(-10, 10) for y in range(-10, 10)]
    for seed in range(5):
        rng = np.random.default_rng(seed)
        rows = np.hstack([rng.integers(-10, 10, (10, 2)), rng.integers(0, 3, (10, 1))])
        model = KNeighborsClassifier(n_neighbors=3).fit(rows[:, :2], rows[:, 2])
        labels = dict(zip(grid, (int(v) for v in model.predict(np.array(grid))), strict=True))
        out.append((json.dumps({"training_data": rows.tolist()}).encode(), labels))
    return out


@dataclass
class KioskStats:
    """The kiosk load's answers from ``measure_from`` on (the warm-up and fits left out)."""

    measure_from: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    wrong: int = 0


async def kiosk(
    port: int,
    tenants: list[tuple[bytes, dict[tuple[int, int], int]]],
    stats: KioskStats,
    stop_at: float,
    seed: int,
) -> None:
    """One kiosk on one keep-alive connection, as Locust's would be; reconnects on errors."""
    rng = random.Random(seed)
    reader = writer = None
    while time.monotonic() < stop_at:
        training, labels = tenants[rng.randrange(5)]
        query = [rng.randrange(-10, 10), rng.randrange(-10, 10)]
        body = b'{"training_data": %s, "query_input": {"query_input": %s}}' % (
            training,
            json.dumps(query).encode(),
        )
        head = b"GET /classify HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\n"
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status_line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(status_line.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answer = await reader.readexactly(length)
            ok = status_line.startswith(b"HTTP/1.1 200")
            if ok and json.loads(answer)["classification_result"] != [labels[(query[0], query[1])]]:
                stats.wrong += 1
            if started >= stats.measure_from:
                if ok:
                    stats.latencies_ms.append((time.monotonic() - started) * 1000)
                else:
                    stats.errors += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, IndexError, ValueError):
            stats.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
        await asyncio.sleep(rng.uniform(0.010, 0.020))
    if writer is not None:
        writer.close()


@dataclass
class Hostile:
    """One hostile connection's life: seconds open, closed by the server or not, bytes sent."""

    open_s: float
    closed: bool
    sent: int
    answer: str


async def _watch_close(reader: asyncio.StreamReader) -> str:
    """The first line the server answers before closing ("" for a silent close)."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := await reader.read(4096):
            data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


async def slowloris(port: int, stop_at: float, out: list[Hostile]) -> None:
    head = b"GET /ping HTTP/1.1\r\nHost: s\r\n"
    await _trickle(port, stop_at, out, head, b"X-a: b\r\n", every_s=2)


async def header_flood(port: int, stop_at: float, budget: list[int], out: list[Hostile]) -> None:
    chunk = b"a" * 65536
    while time.monotonic() < stop_at and budget[0] > 0:
        opened = time.monotonic()
        sent = 0
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        closing = asyncio.ensure_future(_watch_close(reader))
        try:
            writer.write(b"GET /ping HTTP/1.1\r\nHost: f\r\nX-Flood: ")
            while not closing.done() and budget[0] > 0 and time.monotonic() < stop_at:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                budget[0] -= len(chunk)
        except OSError:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closing), 2)
        closed = closing.done()
        answer = closing.result() if closed else ""
        out.append(Hostile(time.monotonic() - opened, closed, sent, answer))
        closing.cancel()
        writer.close()


async def slow_body(port: int, stop_at: float, out: list[Hostile]) -> None:
    head = (
        b"POST /classify HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n{"
    )
    await _trickle(port, stop_at, out, head, b" ", every_s=1)


async def _trickle(
    port: int, stop_at: float, out: list[Hostile], head: bytes, piece: bytes, every_s: float
) -> None:
    """One connection that sends ``head``, then ``piece`` every ``every_s`` seconds, until the
    server closes it or the phase ends (what slowloris and slow-body have in common)."""
    opened = time.monotonic()
    sent = 0
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        out.append(Hostile(0.0, True, 0, "refused"))
        return
    closing = asyncio.ensure_future(_watch_close(reader))
    try:
        writer.write(head)
        while time.monotonic() < stop_at and not closing.done():
            await asyncio.wait([closing], timeout=every_s)
            if closing.done():
                break
            writer.write(piece)
            sent += len(piece)
            with contextlib.suppress(OSError):
                await writer.drain()
    finally:
        closed = closing.done()
        out.append(
            Hostile(time.monotonic() - opened, closed, sent, closing.result() if closed else "")
        )
        closing.cancel()
        writer.close()


def rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    rss: int = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    return rss / 2**20


async def phase(name: str, port: int, pid: int, duration_s: float) -> dict[str, object]:
    warm_up_s = min(5.0, duration_s / 4)  # the kiosks are warm and fitted before the attack
    stats = KioskStats(measure_from=time.monotonic() + warm_up_s)
    hostile: list[Hostile] = []
    stop_at = time.monotonic() + duration_s
    rss_before = rss_mb(pid)
    peak = [rss_before]

    async def sample() -> None:
        while time.monotonic() < stop_at:
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(1)

    tenants = restaurants()
    tasks = [
        asyncio.create_task(kiosk(port, tenants, stats, stop_at, seed)) for seed in range(KIOSKS)
    ]
    tasks.append(asyncio.create_task(sample()))
    await asyncio.sleep(warm_up_s)
    if name == "slowloris":
        tasks += [asyncio.create_task(slowloris(port, stop_at, hostile)) for _ in range(SLOWLORIS)]
    elif name == "header-flood":
        budget = [FLOOD_BYTES]
        tasks += [
            asyncio.create_task(header_flood(port, stop_at, budget, hostile))
            for _ in range(FLOOD_CONNECTIONS)
        ]
    elif name == "slow-body":
        tasks += [
            asyncio.create_task(slow_body(port, stop_at, hostile)) for _ in range(SLOW_BODIES)
        ]
    await asyncio.gather(*tasks)
    latencies = sorted(stats.latencies_ms)
    lives = [h.open_s for h in hostile if h.closed]
    answers: dict[str, int] = {}
    for h in hostile:
        key = h.answer or ("(closed silently)" if h.closed else "(still open at the end)")
        answers[key] = answers.get(key, 0) + 1
    result: dict[str, object] = {
        "kiosk_requests": len(latencies),
        "kiosk_rps": len(latencies) / (duration_s - warm_up_s),
        "kiosk_p50_ms": statistics.median(latencies) if latencies else None,
        "kiosk_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "kiosk_errors": stats.errors,
        "kiosk_wrong_labels": stats.wrong,
        "rss_before_mb": rss_before,
        "rss_peak_mb": peak[0],
        "rss_after_mb": rss_mb(pid),
        "hostile_connections": len(hostile),
        "hostile_closed_by_server": len(lives),
        "hostile_open_s_max": max(lives) if lives else None,
        "hostile_open_s_median": statistics.median(lives) if lives else None,
        "hostile_bytes_sent": sum(h.sent for h in hostile),
        "hostile_answers": answers,
    }
    print(name, json.dumps(result), flush=True)
    return result


def start(stack: str) -> tuple[Server, subprocess.Popen[bytes]]:
    port = free_port()
    python = sys.executable
    env = {"SLUICEWAY_LOG_LEVEL": "WARNING"}
    if stack == "sluiceway":
        command = [python, "-m", "sluiceway", "serve", "--port", str(port)]
    else:
        command = [python, "-m", "uvicorn", "sluiceway.app:create_app", "--factory"]
        command += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        command += ["--log-level", "warning", "--backlog", "4096", "--port", str(port)]
    server = Server(stack, command, port, env)
    return server, server.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--stack", default="sluiceway", choices=["sluiceway", "uvicorn-httptools"])
    args = parser.parse_args()
    server, process = start(args.stack)
    phases: dict[str, object] = {}
    try:
        for name in PHASES:
            phases[name] = asyncio.run(phase(name, server.port, process.pid, args.duration))
    finally:
        stop(process)
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": machine(),
        "stack": args.stack,
        "duration_s": args.duration,
        "phases": phases,
    }
    path = HERE / f"hostile-{args.stack}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
