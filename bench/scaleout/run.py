"""Split mode beside embedded mode, in one run: what the Redis hop costs and what it keeps.

    python -m bench.scaleout.run [--duration 60] [--hop-seconds 10] [--rounds 3]

1. Hop latency, two ways, in rounds that alternate the modes on fresh servers (the embedded
   server, then 1 API node + 2 workers over Redis); the difference of a round's medians is the
   latency the broker hop adds, and the median over rounds is reported.
   a. Closed loop, the seed's cost model: 8, 16 and 32 clients loop over the kiosk's request;
      every model call sleeps 0.2 s on both sides.
   b. Paced, no simulated sleep: the kiosk's requests sent at 100, 200 and 400 a second (10 to
      40 % of embedded capacity) with the KNN's simulated cost set to zero, so only real work
      remains. An event loop's timers fire on millisecond ticks, so a 200 ms sleep lasts
      anywhere from ~199.5 to ~201 ms depending on the sub-millisecond phase of the process's
      wake-ups; that moved the closed-loop medians of *either* mode by up to 1 ms from round to
      round, as much as the hop being measured. This measurement has no such timer.
      A level the server cannot keep up with is reported as saturated (the rate it achieved,
      the requests that failed or timed out) and left out of the hop; the run goes on.
2. Throughput: the kiosk benchmark's Locust load (bench/kiosk/locustfile.py: 250 kiosks,
   10 started a second, 5 restaurants) against each, one after the other, with the CPU time
   each server process spent per request.

Everything (Locust, API, workers, Redis) shares this machine's cores. Writes REPORT.md,
scaleout.png and results.json beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import matplotlib
import psutil

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.kiosk.scenario import HIGH, LOW, training_sets
from bench.loadtest import REPO, LocustResult, free_port, machine, run_locust, stop, wait_for_port

HERE = Path(__file__).resolve().parent
USERS, SPAWN_RATE = 250, 10
WORKERS = 2
HOP_CONCURRENCIES = (8, 16, 32)
PACED_RATES = (100, 200, 400)  # requests per second
NO_SLEEP = {
    "SLUICEWAY_KNN_INFER_BASE_COST_S": "0",
    "SLUICEWAY_KNN_INFER_PER_QUERY_COST_S": "0",
    "SLUICEWAY_KNN_FIT_COST_S": "0",
}
SETTLE_S = 4.0  # > two worker heartbeats (SLUICEWAY_WORKER_HEARTBEAT_S = 1) and a margin
WORKERS_MARK = "## Adding workers"  # the section bench/scaleout/workers.py writes
MODEL_MS = 200.0  # the kiosk KNN's simulated cost of one call (SLUICEWAY_KNN_INFER_BASE_COST_S)
REQUEST_TIMEOUT_S = 5.0
"""A measured request with no answer by then, waiting for a connection included, counts as
timed out: an open loop that outruns the server would otherwise pile requests into the client's
pool until one raised and ended the whole run."""
BACKLOG_S = 1.0
"""Paced, at most this many seconds' worth of requests wait for answers at once (one connection
each): past that, a request due is not sent but counted late, as the open loop would only queue
it behind the others, spending the load generator's share of the cores on doomed work. In
seconds rather than requests, so that a short stall (of the server, or of the load generator,
which then starts the requests it owes at once) weighs the same at every rate."""
HELD_FRACTION = 0.95
"""A paced level holds its rate if nothing failed or timed out and the requests answered per
second reach this share of the rate asked."""
QUEUED_FACTOR = 5.0
"""A paced level whose median is more than this many times its round's lowest rate's (same
mode, same server) is queueing, not holding: split at 200 req/s once answered 193/s, none late,
with a 186 ms median against ~5 ms at 100. In the 2026-12-02 04:18 run (results.json), levels
that kept up had 0.5-1.0x their round's 100 req/s median (batching makes more rates faster), and
those that queued 37x and more."""


@dataclass
class Cluster:
    """The server under test: where it listens and its processes by role."""

    port: int
    processes: dict[str, list[int]]
    worker_ports: list[int] = field(default_factory=list)
    """Where each worker's probes and metrics answer."""

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each role has used so far."""
        used: dict[str, float] = {}
        for role, pids in self.processes.items():
            used[role] = 0.0
            for pid in pids:
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.NoSuchProcess:
                    continue
                used[role] += times.user + times.system
        return used


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A redis-server on a free loopback port, no persistence; yields its URL and pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: run scripts/system-deps.sh")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"],
        )  # fmt: skip
        try:
            wait_for_port(port, 10)
            yield f"redis://127.0.0.1:{port}/0", process.pid
        finally:
            stop(process, timeout_s=10)


@contextmanager
def sluiceway(
    broker: str | None,
    settings: dict[str, str] | None = None,
    workers: int = WORKERS,
    named: bool = False,
    source: Path | None = None,
) -> Iterator[Cluster]:
    """The server under test: embedded, or an API node and ``workers`` workers (``settings``:
    extra environment for every process). ``named``: the workers are called worker-0,
    worker-1, ... (``SLUICEWAY_WORKER_ID``), so restaurants fall to them the same way in every
    run of that size; otherwise each gets a fresh random name. ``source``: the source tree
    the servers run (a checkout's root; this tree by default, whichever tree the virtualenv
    was installed from), to compare two versions in one go."""
    path = os.pathsep.join((str((source or REPO) / "src"), str(REPO)))
    env = {**os.environ, "PYTHONPATH": path, "SLUICEWAY_LOG_LEVEL": "WARNING"}
    env["SLUICEWAY_API_MODELS"] = "knn"  # the workers serve the kiosk's model only
    env.update(settings or {})
    python = sys.executable
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    worker_ports: list[int] = []
    try:
        if broker is not None:
            for index in range(workers):
                worker_ports.append(free_port())
                worker_env = {**env, "SLUICEWAY_WORKER_PORT": str(worker_ports[-1])}
                if named:
                    worker_env["SLUICEWAY_WORKER_ID"] = f"worker-{index}"
                command = [python, "-m", "sluiceway", "worker", "--broker", broker]
                processes.append(subprocess.Popen([*command, "--models", "knn"], env=worker_env))
        command = [python, "-m", "sluiceway", "serve", "--port", str(port)]
        if broker is not None:
            command += ["--broker", broker]
        processes.append(subprocess.Popen(command, env=env))
        wait_for_port(port, 60)
        _wait_ready(port)
        if broker is not None:
            # Workers that start together may each take every partition before they see each
            # other, then hand some over (two heartbeats): measure once ownership has settled,
            # or a moved restaurant's refit (2 s) lands in the measurement.
            time.sleep(SETTLE_S)
        roles = {"api": [processes[-1].pid]}
        if broker is not None:
            roles["workers"] = [process.pid for process in processes[:-1]]
        yield Cluster(port, roles, worker_ports)
    finally:
        stop(*processes, timeout_s=40)


def _wait_ready(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        if response.status_code == 200 and "knn" in response.json().get("models", []):
            return
        time.sleep(0.2)
    raise TimeoutError("the server never became ready for knn")


def _body(restaurant: list[list[int]]) -> dict[str, object]:
    query = [random.randrange(LOW, HIGH), random.randrange(LOW, HIGH)]
    return {
        "training_data": {"training_data": restaurant},
        "query_input": {"query_input": query},
    }


@dataclass
class Level:
    """One load (clients, or requests a second) in one round on one mode: the latencies of the
    requests answered, and what became of the others."""

    load: int
    paced: bool
    """Started at ``load`` requests a second (an open loop): it holds only if it keeps up."""
    latencies: list[float] = field(default_factory=list)
    """Milliseconds, of the requests answered with success."""
    seconds: float = 0.0
    """From the first measured request's start to the last one's end."""
    failed: int = 0
    """Answered with an error status, or the connection failed."""
    timed_out: int = 0
    """No connection from the pool, or no answer, within ``REQUEST_TIMEOUT_S``."""
    late: int = 0
    """Paced, not sent: ``BACKLOG_S`` worth of requests were still unanswered when it was due."""
    behind_s: float = 0.0
    """Paced, the most the load generator fell behind its schedule: requests late while it
    kept to it were the server's backlog; late while it did not, its own (it shares the cores)."""
    error: str = ""
    """Why the level never ran its load (its warm-up failed), if it did not."""
    baseline_ms: float | None = None
    """Paced, the median of its round's lowest rate (same mode, same server), if answered."""

    @property
    def queued(self) -> bool:
        """Paced, its median is over ``QUEUED_FACTOR`` times its round's lowest rate's."""
        if not self.paced or self.baseline_ms is None or not self.latencies:
            return False
        return _median(self.latencies) > QUEUED_FACTOR * self.baseline_ms

    @property
    def achieved(self) -> float:
        """Requests answered per second."""
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    @property
    def held(self) -> bool:
        """Every request answered and, paced, at the rate asked: only then do its latencies say
        what the mode costs at this load rather than how far behind it fell."""
        if self.error or self.failed or self.timed_out or self.late or not self.latencies:
            return False
        return not self.paced or (self.achieved >= HELD_FRACTION * self.load and not self.queued)

    def describe(self) -> str:
        """One line on what was asked and what came back."""
        unit = "req/s" if self.paced else "clients"
        state = "held" if self.held else "SATURATED"
        line = (
            f"{self.load} {unit} {state}: {self.achieved:.0f} req/s answered, "
            f"median {_median(self.latencies):.2f} ms, {self.failed} failed, "
            f"{self.timed_out} timed out, {self.late} late"
            + (f", sender up to {self.behind_s:.2f} s behind" if self.paced else "")
            + (f", over {QUEUED_FACTOR:g}x the lowest rate's median" if self.queued else "")
        )
        return line + (f" ({self.error})" if self.error else "")


async def _measured_call(http: httpx.AsyncClient, body: dict[str, object], level: Level) -> None:
    """One request of the measurement, its outcome counted in ``level``; never raises, so a
    server that falls behind is measured rather than ending the run."""
    began = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            response = await http.post("/classify", json=body)
    except (TimeoutError, httpx.TimeoutException):
        level.timed_out += 1
        return
    except httpx.HTTPError:
        level.failed += 1
        return
    if response.is_success:
        level.latencies.append(1000 * (time.perf_counter() - began))
    else:
        level.failed += 1


async def closed_loop(port: int, clients: int, seconds: float) -> Level:
    """Kiosk calls sent for ``seconds`` by ``clients`` looping clients."""
    restaurants = training_sets()
    level = Level(clients, paced=False)
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as http:
        # Fit every model first, all at once: the hop is measured warm.
        fits = [http.post("/classify", json=_body(restaurant)) for restaurant in restaurants]
        try:
            for response in await asyncio.gather(*fits):
                response.raise_for_status()
        except httpx.HTTPError as error:
            level.error = f"the warm-up failed: {error!r}"
            return level
        start = time.perf_counter()
        stop = start + seconds

        async def client(index: int) -> None:
            while time.perf_counter() < stop:
                body = _body(restaurants[index % len(restaurants)])
                await _measured_call(http, body, level)

        await asyncio.gather(*(client(i) for i in range(clients)))
        level.seconds = time.perf_counter() - start
    return level


async def paced(port: int, rate: float, seconds: float) -> Level:
    """Kiosk calls started ``rate`` times a second for ``seconds``, each without waiting for the
    others (an open loop: the load does not bend to the latency)."""
    restaurants = training_sets()
    level = Level(int(rate), paced=True)
    backlog = max(1, int(rate * BACKLOG_S))
    limits = httpx.Limits(max_connections=backlog)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as http:
        try:
            for index in range(50):  # fit every model and warm the connections first
                body = _body(restaurants[index % len(restaurants)])
                (await http.post("/classify", json=body)).raise_for_status()
        except httpx.HTTPError as error:
            level.error = f"the warm-up failed: {error!r}"
            return level

        in_flight: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        for index in range(int(rate * seconds)):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            level.behind_s = max(level.behind_s, -delay)
            if len(in_flight) >= backlog:
                level.late += 1
                continue
            body = _body(restaurants[index % len(restaurants)])
            call = asyncio.create_task(_measured_call(http, body, level))
            in_flight.add(call)
            call.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        level.seconds = time.perf_counter() - start
    return level


NOT_STARTED = (TimeoutError, OSError, httpx.HTTPError)
"""What a server under test that never comes up raises (no port, never ready, no process)."""


def _round(
    broker: str | None, loads: tuple[int, ...], seconds: float, paced_: bool
) -> dict[int, Level]:
    """One round of the hop measurement on a fresh server, each load in turn. A server that
    never came up fails every level of its round, and the run goes on to the next."""
    mode = "split" if broker else "embedded"
    levels: dict[int, Level] = {}
    try:
        with sluiceway(broker, NO_SLEEP if paced_ else None) as cluster:
            for load in loads:
                measure = paced if paced_ else closed_loop
                level = levels[load] = asyncio.run(measure(cluster.port, load, seconds))
                lowest = levels[loads[0]].latencies
                if paced_ and lowest:
                    level.baseline_ms = _median(lowest)
                print(f"{mode} {level.describe()}", flush=True)
    except NOT_STARTED as error:
        for load in loads:
            levels.setdefault(load, Level(load, paced_, error=f"the round stopped: {error!r}"))
        print(f"{mode}: the round stopped: {error!r}", flush=True)
    return levels


def paced_runs(broker: str | None, seconds: float) -> dict[int, Level]:
    """One round of the hop measurement without simulated sleep: a fresh server, each rate."""
    return _round(broker, PACED_RATES, seconds, paced_=True)


def closed_loops(broker: str | None, seconds: float) -> dict[int, Level]:
    """One round of the hop measurement: a fresh server, each concurrency in turn."""
    return _round(broker, HOP_CONCURRENCIES, seconds, paced_=False)


def locust_load(
    name: str, broker: str | None, redis_pid: int | None, args: argparse.Namespace
) -> tuple[LocustResult, dict[str, float]]:
    """The Locust run, and the CPU time each server role spent per request during it. A server
    that never came up, or a Locust that wrote no statistics, is a run of no requests whose
    failure says why: the hop rounds before it are still reported."""
    try:
        with sluiceway(broker) as cluster:
            if redis_pid is not None:
                cluster.processes["redis"] = [redis_pid]
            before = cluster.cpu_seconds()
            result = run_locust(
                REPO / "bench" / "kiosk" / "locustfile.py",
                f"http://127.0.0.1:{cluster.port}",
                USERS,
                SPAWN_RATE,
                args.duration,
                Path(args.workdir) / name,
            )
            after = cluster.cpu_seconds()
    except (*NOT_STARTED, ValueError, subprocess.SubprocessError) as error:
        print(f"{name}: no Locust result: {error!r}", flush=True)
        nan = float("nan")
        return LocustResult(0, 0, nan, 0.0, nan, nan, nan, [], [f"no result: {error!r}"]), {}
    # Over the whole run (ramp included), per server role.
    cpu_ms = {role: 1000 * (after[role] - before[role]) / max(result.requests, 1) for role in after}
    print(
        f"{name}: locust steady {result.rps_steady:.0f} RPS, p50 {result.p50_ms:.0f} ms, "
        f"{result.failures} failures; CPU ms/request {cpu_ms}",
        flush=True,
    )
    return result, cpu_ms


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[int(fraction * (len(ordered) - 1))]


def _median(values: list[float]) -> float:
    """The median, or NaN when nothing was answered (a level that failed whole)."""
    return statistics.median(values) if values else float("nan")


@dataclass
class HopRow:
    """The hop at one load (clients, or requests a second): each mode's answered latencies over
    all rounds, and each round's hop (the difference of the two modes' medians in that round,
    None where either mode did not hold the load: a saturated mode's latency is its backlog)."""

    load: int
    medians: dict[str, float]
    p90s: dict[str, float]
    requests: dict[str, int]
    hops: list[float | None]
    achieved: dict[str, float]
    """Requests answered per second, over all rounds."""
    failed: dict[str, int]
    timed_out: dict[str, int]
    late: dict[str, int]
    behind_s: dict[str, float]
    """The most the load generator fell behind its schedule in any round."""
    unheld: dict[str, int]
    """The rounds in which the mode did not hold the load."""
    errors: dict[str, list[str]] = field(default_factory=dict)
    """Per mode, why a round never ran its load, for each round that did not."""

    @property
    def hop(self) -> float | None:
        """The median of the held rounds' hops: robust to one round's luck with the machine;
        None if no round had both modes hold the load."""
        held = [hop for hop in self.hops if hop is not None]
        return statistics.median(held) if held else None

    @property
    def saturated(self) -> bool:
        """Whether either mode failed to hold the load in some round."""
        return any(self.unheld.values())


Rounds = Mapping[str, list[dict[int, Level]]]
"""Per mode, per round, per load: what came back."""


def hop_rows(rounds: Rounds, loads: tuple[int, ...]) -> list[HopRow]:
    """Per load, both modes' latencies pooled over the rounds and each round's hop (split's
    median less embedded's), the hop counted only from rounds in which both held the load."""
    rows = []
    for load in loads:
        levels = {name: [one[load] for one in runs] for name, runs in rounds.items()}
        pooled = {
            name: [latency for level in runs for latency in level.latencies]
            for name, runs in levels.items()
        }
        hops: list[float | None] = []
        for split, embedded in zip(levels["split"], levels["embedded"], strict=True):
            held = split.held and embedded.held
            hops.append(_median(split.latencies) - _median(embedded.latencies) if held else None)
        rows.append(
            HopRow(
                load=load,
                medians={name: _median(values) for name, values in pooled.items()},
                p90s={name: _percentile(values, 0.9) for name, values in pooled.items()},
                requests={name: len(values) for name, values in pooled.items()},
                hops=hops,
                achieved={
                    name: len(pooled[name]) / max(sum(level.seconds for level in runs), 1e-9)
                    for name, runs in levels.items()
                },
                failed={name: sum(level.failed for level in runs) for name, runs in levels.items()},
                timed_out={
                    name: sum(level.timed_out for level in runs) for name, runs in levels.items()
                },
                late={name: sum(level.late for level in runs) for name, runs in levels.items()},
                behind_s={
                    name: max(level.behind_s for level in runs) for name, runs in levels.items()
                },
                unheld={
                    name: sum(not level.held for level in runs) for name, runs in levels.items()
                },
                errors={
                    name: [level.error for level in runs if level.error]
                    for name, runs in levels.items()
                },
            )
        )
    return rows


@dataclass
class Mode:
    """Everything measured for one mode."""

    rounds: list[dict[int, Level]]
    paced: list[dict[int, Level]]
    result: LocustResult
    cpu_ms: dict[str, float]


def plot(modes: dict[str, Mode], path: Path) -> None:
    figure, (left, closed, open_, right) = plt.subplots(1, 4, figsize=(21, 4.5))
    closed_rows = hop_rows({name: mode.rounds for name, mode in modes.items()}, HOP_CONCURRENCIES)
    paced_rows = hop_rows({name: mode.paced for name, mode in modes.items()}, PACED_RATES)
    for offset, (name, mode) in zip((-0.2, 0.2), modes.items(), strict=True):
        history = mode.result.history
        left.plot([r["t"] for r in history], [r["rps"] for r in history], label=name)
        above = [row.medians[name] - MODEL_MS for row in closed_rows]
        closed.bar([i + offset for i in range(len(closed_rows))], above, width=0.4, label=name)
        medians = [row.medians[name] for row in paced_rows]
        open_.bar([i + offset for i in range(len(paced_rows))], medians, width=0.4, label=name)
    for axis, rows, unit in ((closed, closed_rows, "clients"), (open_, paced_rows, "req/s")):
        axis.set_xticks(range(len(rows)), [f"{row.load} {unit}" for row in rows])
        for i, row in enumerate(rows):
            text = "saturated" if row.hop is None else f"hop {row.hop:+.2f}"
            text += " (saturated)" if row.saturated and row.hop is not None else ""
            spot = (i, 0.02)  # near the bottom of the bars, whatever the axis's scale
            axis.annotate(text, spot, xycoords=("data", "axes fraction"), ha="center")
    if any(row.saturated for row in paced_rows):
        open_.set_yscale("log")  # a saturated level's backlog would flatten the other bars
    left.set(xlabel="seconds", ylabel="requests / s", title=f"Locust kiosk load ({USERS} users)")
    closed.set(
        ylabel="median latency above the model's 200 ms (ms)",
        title="closed loop, seed's 200 ms sleep per call",
    )
    open_.set(ylabel="median latency (ms)", title="paced, no simulated sleep")
    bottoms = [0.0] * len(modes)
    for role in ("api", "workers", "redis"):
        heights = [mode.cpu_ms.get(role, 0.0) for mode in modes.values()]
        right.bar(list(modes), heights, bottom=bottoms, label=role)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    right.set(ylabel="CPU ms per request", title="server CPU per request under Locust")
    for axis in (left, closed, open_, right):
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def hop_table(rows: list[HopRow], unit: str, rate: bool) -> list[str]:
    """The report's table of ``rows``; ``rate``: their loads are requests a second, not clients."""
    lines = [
        f"| {unit} | ≈ RPS | embedded median | split median | **hop** (median of rounds) "
        "| each round's hop | embedded p90 | split p90 | requests (e / s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        rps = f"{row.load if rate else row.load * 1000 / row.medians['split']:.0f}"
        if row.saturated:  # what each mode answered, not what was asked
            rps = f"{row.achieved['embedded']:.0f} / {row.achieved['split']:.0f}"
        each = ", ".join("saturated" if hop is None else f"{hop:+.2f}" for hop in row.hops)
        cell = "**saturated**" if row.hop is None else f"**{row.hop:+.2f} ms**"
        if row.saturated and row.hop is not None:
            held = sum(hop is not None for hop in row.hops)
            cell += f" ({held} of {len(row.hops)} rounds held)"
        lines.append(
            f"| {row.load} | {rps} | {row.medians['embedded']:.2f} "
            f"| {row.medians['split']:.2f} | {cell} | {each} "
            f"| {row.p90s['embedded']:.2f} | {row.p90s['split']:.2f} "
            f"| {row.requests['embedded']} / {row.requests['split']} |"
        )
    return lines


def saturation_notes(rows: list[HopRow], unit: str) -> list[str]:
    """A line per load that some mode did not hold in some round: what it achieved instead."""
    lines = []
    for row in rows:
        if not row.saturated:
            continue
        rounds = len(row.hops)
        said = []
        for name, unheld in row.unheld.items():
            if not unheld:
                continue
            counts = f"{row.failed[name]} failed, {row.timed_out[name]} timed out"
            if row.late[name]:
                counts += (
                    f", {row.late[name]} late, the load generator up to "
                    f"{row.behind_s[name]:.2f} s behind its schedule"
                )
            said.append(
                f"{name} did not hold it in {unheld} of {rounds} rounds "
                f"({row.achieved[name]:.0f} req/s answered over all rounds, {counts})"
                + "".join(f", {error}" for error in row.errors.get(name, []))
            )
        lines.append(f"- **{row.load} {unit}: saturated.** " + "; ".join(said) + ".")
    if lines:
        lines += [
            "",
            "A level is held when every request is answered (none failed, none waited over "
            f"{REQUEST_TIMEOUT_S:g} s",
            "for a connection and an answer) and, paced, the answers kept up with "
            f"{HELD_FRACTION:.0%} of the rate asked",
            f"with a median at most {QUEUED_FACTOR:g}x that of the round's lowest rate (more "
            "is a queue, not a hop).",
            f"A paced request falling due while {BACKLOG_S:g} s worth of others still wait "
            "for their answers is not sent",
            "but counted late: the server's backlog if the load generator kept to its schedule, "
            "its own",
            "if it fell behind by about as much (it shares the cores, and then starts the "
            "requests it owes at once).",
            "Medians and p90s of a saturated level are of the requests answered; its ≈ RPS is",
            "what each mode answered (embedded / split); its round's hop is left out of the "
            "median.",
        ]
    return ["", *lines] if lines else []


def report(modes: dict[str, Mode], args: argparse.Namespace, shared: bool) -> str:
    closed_rows = hop_rows({name: mode.rounds for name, mode in modes.items()}, HOP_CONCURRENCIES)
    paced_rows = hop_rows({name: mode.paced for name, mode in modes.items()}, PACED_RATES)
    e, s = modes["embedded"].result, modes["split"].result
    ratio = s.rps_steady / e.rps_steady if e.rps_steady else float("nan")
    lines = [
        "# Scale-out benchmark: split mode (1 API node + 2 workers over Redis) beside embedded",
        "",
        f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} on {machine()}.",
        "Locust, the API node, both workers and redis-server all ran on this machine's cores."
        + (" Other work shared the machine during this run." if shared else ""),
        "",
        "## Broker hop latency",
        "",
        f"In {args.rounds} rounds that alternate the modes, each on freshly started servers (so",
        "new worker ids, so a new assignment of restaurants to workers), the kiosk's requests",
        "(5 restaurants, models fitted first) go to each mode for",
        f"{args.hop_seconds:g} s per load. The difference of a round's medians is what the Redis",
        "hop adds; the hop reported is the median over rounds. Target: ≤ 1 ms at moderate load.",
        "",
        "### Paced, no simulated sleep",
        "",
        "Requests start at a fixed rate (an open loop) and the KNN's simulated cost is set to",
        "zero on both sides, so a request's latency is HTTP, the KNN itself and, in split mode,",
        "the broker: nothing else differs between the modes.",
        "",
        *hop_table(paced_rows, "req/s", rate=True),
        *saturation_notes(paced_rows, "req/s"),
        "",
        "### Closed loop, with the seed's 200 ms sleep per model call",
        "",
        "N clients loop over the request; each model call sleeps 200 ms, in both modes. Event",
        "loop timers fire on millisecond ticks, so that sleep lasts ~199.5 to ~201 ms depending",
        "on the sub-millisecond phase of the process's wake-ups, which differs by process and",
        "by round: it moves either mode's median by up to a millisecond between rounds, which",
        "is why the paced measurement above is the one held to the target.",
        "",
        *hop_table(closed_rows, "clients", rate=False),
        *saturation_notes(closed_rows, "clients"),
    ]
    lines += [
        "",
        f"## Throughput (Locust, {USERS} kiosks, {SPAWN_RATE}/s, {args.duration} s each)",
        "",
        "| mode | steady RPS | mean RPS | p50 ms | p95 ms | p99 ms | requests | failures |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, mode in modes.items():
        r = mode.result
        lines.append(
            f"| {name} | {r.rps_steady:.0f} | {r.rps_mean:.0f} | {r.p50_ms:.0f} | {r.p95_ms:.0f} "
            f"| {r.p99_ms:.0f} | {r.requests} | {r.failures} |"
        )
    lines += [
        "",
        f"**Split-mode RPS / embedded RPS: {ratio:.2f}** (target ≥ 0.8).",
        "",
        "Server CPU per request over the Locust run (user + system, ms):",
        "",
        "| mode | API node | workers | redis-server | total |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, mode in modes.items():
        cpu = mode.cpu_ms
        lines.append(
            f"| {name} | {cpu.get('api', 0):.3f} | {cpu.get('workers', 0):.3f} "
            f"| {cpu.get('redis', 0):.3f} | {sum(cpu.values()):.3f} |"
        )
    lines += ["", "![scale-out](scaleout.png)", ""]
    for name, mode in modes.items():
        if mode.result.failure_reasons:
            lines += [f"Failures ({name}): " + "; ".join(mode.result.failure_reasons), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=60, help="seconds of Locust per mode")
    parser.add_argument("--hop-seconds", type=float, default=10, help="per mode and concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="hop rounds, alternating modes")
    parser.add_argument("--shared", action="store_true", help="say other work shared the CPU")
    parser.add_argument("--workdir", default=str(HERE / "runs"))
    args = parser.parse_args()
    with redis_server() as (url, redis_pid):
        brokers = {"embedded": None, "split": url}
        rounds: Rounds = {name: [] for name in brokers}
        paced_rounds: Rounds = {name: [] for name in brokers}
        for number in range(args.rounds):
            for name, broker in brokers.items():
                paced_rounds[name].append(paced_runs(broker, args.hop_seconds))
                rounds[name].append(closed_loops(broker, args.hop_seconds))
            for label, runs, load in (
                ("req/s paced", paced_rounds, PACED_RATES[1]),
                ("clients", rounds, HOP_CONCURRENCIES[1]),
            ):
                medians = {
                    name: round(_median(one[-1][load].latencies), 3) for name, one in runs.items()
                }
                print(f"hop round {number + 1}: medians at {load} {label} {medians}", flush=True)
        modes = {}
        for name, broker in brokers.items():
            result, cpu_ms = locust_load(name, broker, redis_pid if broker else None, args)
            modes[name] = Mode(rounds[name], paced_rounds[name], result, cpu_ms)
    # The adding-workers section (workers.py) is measured apart: keep it and its results.
    report_path, results_path = HERE / "REPORT.md", HERE / "results.json"
    previous = report_path.read_text() if report_path.exists() else ""
    kept = previous[previous.index(WORKERS_MARK) :] if WORKERS_MARK in previous else ""
    report_path.write_text(report(modes, args, args.shared) + ("\n" + kept if kept else ""))
    plot(modes, HERE / "scaleout.png")
    old = json.loads(results_path.read_text()) if results_path.exists() else {}
    serialisable: dict[str, object] = {"workers": old["workers"]} if "workers" in old else {}
    serialisable |= {
        name: {
            "rounds": [{load: asdict(level) for load, level in one.items()} for one in mode.rounds],
            "paced_rounds": [
                {load: asdict(level) for load, level in one.items()} for one in mode.paced
            ],
            "cpu_ms_per_request": mode.cpu_ms,
            "result": asdict(mode.result),
        }
        for name, mode in modes.items()
    }
    results_path.write_text(json.dumps(serialisable, indent=1))
    print((HERE / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
