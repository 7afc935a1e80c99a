"""Shared machinery for Locust benchmarks: start a server, load it, sample its RSS, read CSVs."""

from __future__ import annotations

import csv
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_PATH = os.pathsep.join((str(REPO / "src"), str(REPO)))
"""``PYTHONPATH`` for a server under test: this checkout's code, not whichever tree the
virtualenv installed Sluiceway from (a worktree shares the main checkout's virtualenv)."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    """Block until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}"


class ProcessWatch:
    """Samples a process tree's RSS every ``interval_s`` and its CPU time at the end."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu_s = 0.0

    def __enter__(self) -> ProcessWatch:
        self._start_cpu = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = self._cpu() - self._start_cpu
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _cpu(self) -> float:
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.interval_s):
            rss = 0
            for proc in self._tree():
                with suppress(psutil.NoSuchProcess):
                    rss += proc.memory_info().rss
            self.samples.append((time.monotonic() - started, rss / 2**20))

    @property
    def peak_rss_mb(self) -> float:
        return max((rss for _, rss in self.samples), default=0.0)


def stop(*processes: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Ask every process to stop (SIGTERM), then wait for each; kill one that will not end."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Server:
    """A server under test: how to start it and where it listens."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": CHECKOUT_PATH, **self.env}
        process = subprocess.Popen(self.command, cwd=REPO, env=env)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            process.kill()
            raise
        return process


@dataclass
class LocustResult:
    """What one Locust run measured."""

    requests: int
    failures: int
    rps_mean: float
    rps_steady: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    history: list[dict[str, float]]
    failure_reasons: list[str]


def run_locust(
    locustfile: Path,
    host: str,
    users: int,
    spawn_rate: float,
    duration_s: int,
    prefix: Path,
    env: dict[str, str] | None = None,
    user_class: str | None = None,
) -> LocustResult:
    """Run Locust headless and read back its CSV statistics.

    Steady RPS counts requests completed from 5 s after the ramp ends to the end of the run.
    """
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("locust")),
        "-f",
        str(locustfile),
        "--headless",
        "-H",
        host,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{duration_s}s",
        "--csv",
        str(prefix),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--loglevel",
        "WARNING",
    ]
    if user_class:
        command.append(user_class)
    subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": CHECKOUT_PATH, **(env or {})},
        check=False,
        timeout=duration_s + 120,
    )
    total = _aggregated(Path(f"{prefix}_stats.csv"))
    history = _history(Path(f"{prefix}_stats_history.csv"))
    steady_from = users / spawn_rate + 5
    steady = [row for row in history if row["t"] >= steady_from]
    rps_steady = 0.0
    if len(steady) >= 2:
        span = steady[-1]["t"] - steady[0]["t"]
        done = steady[-1]["total"] - steady[0]["total"]
        rps_steady = done / span if span > 0 else 0.0
    reasons = []
    failures_csv = Path(f"{prefix}_failures.csv")
    if failures_csv.exists():
        with failures_csv.open() as handle:
            reasons = [f"{row['Occurrences']}× {row['Error']}" for row in csv.DictReader(handle)]
    return LocustResult(
        requests=int(total["Request Count"]),
        failures=int(total["Failure Count"]),
        rps_mean=float(total["Requests/s"]),
        rps_steady=rps_steady,
        p50_ms=float(total["50%"]),
        p95_ms=float(total["95%"]),
        p99_ms=float(total["99%"]),
        history=history,
        failure_reasons=reasons[:5],
    )


def _aggregated(path: Path) -> dict[str, str]:
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                return row
    raise ValueError(f"no Aggregated row in {path}")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _history(path: Path) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    with path.open() as handle:
        reader = csv.DictReader(handle)
        start = None
        for row in reader:
            if row["Name"] != "Aggregated":
                continue
            stamp = float(row["Timestamp"])
            start = stamp if start is None else start
            rows.append(
                {
                    "t": stamp - start,
                    "users": _number(row["User Count"]),
                    "rps": _number(row["Requests/s"]),
                    "p50": _number(row["50%"]),
                    "p95": _number(row["95%"]),
                    "p99": _number(row["99%"]),
                    "total": _number(row["Total Request Count"]),
                }
            )
    return rows
