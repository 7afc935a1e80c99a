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
from collections.abc import Iterator
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


async def closed_loop(port: int, clients: int, seconds: float) -> list[float]:
    """Latencies (ms) of kiosk calls sent for ``seconds`` by ``clients`` looping clients."""
    restaurants = training_sets()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as http:
        # Fit every model first, all at once: the hop is measured warm.
        fits = [http.post("/classify", json=_body(restaurant)) for restaurant in restaurants]
        for response in await asyncio.gather(*fits):
            response.raise_for_status()
        stop = time.perf_counter() + seconds

        async def client(index: int) -> None:
            while time.perf_counter() < stop:
                body = _body(restaurants[index % len(restaurants)])
                began = time.perf_counter()
                response = await http.post("/classify", json=body)
                latencies.append(1000 * (time.perf_counter() - began))
                response.raise_for_status()

        await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies


async def paced(port: int, rate: float, seconds: float) -> list[float]:
    """Latencies (ms) of kiosk calls started ``rate`` times a second for ``seconds``, each
    without waiting for the others (an open loop: the load does not bend to the latency)."""
    restaurants = training_sets()
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for index in range(50):  # fit every model and warm the connections first
            body = _body(restaurants[index % len(restaurants)])
            (await http.post("/classify", json=body)).raise_for_status()

        async def call(index: int) -> None:
            body = _body(restaurants[index % len(restaurants)])
            began = time.perf_counter()
            response = await http.post("/classify", json=body)
            latencies.append(1000 * (time.perf_counter() - began))
            response.raise_for_status()

        calls = []
        start = time.perf_counter()
        for index in range(int(rate * seconds)):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.create_task(call(index)))
        await asyncio.gather(*calls)
    return latencies


def paced_runs(broker: str | None, seconds: float) -> dict[int, list[float]]:
    """One round of the hop measurement without simulated sleep: a fresh server, each rate."""
    with sluiceway(broker, NO_SLEEP) as cluster:
        return {rate: asyncio.run(paced(cluster.port, rate, seconds)) for rate in PACED_RATES}


def closed_loops(broker: str | None, seconds: float) -> dict[int, list[float]]:
    """One round of the hop measurement: a fresh server, each concurrency in turn."""
    with sluiceway(broker) as cluster:
        return {
            clients: asyncio.run(closed_loop(cluster.port, clients, seconds))
            for clients in HOP_CONCURRENCIES
        }


def locust_load(
    name: str, broker: str | None, redis_pid: int | None, args: argparse.Namespace
) -> tuple[LocustResult, dict[str, float]]:
    """The Locust run, and the CPU time each server role spent per request during it."""
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
    # Over the whole run (ramp included), per server role.
    cpu_ms = {role: 1000 * (after[role] - before[role]) / max(result.requests, 1) for role in after}
    print(
        f"{name}: locust steady {result.rps_steady:.0f} RPS, p50 {result.p50_ms:.0f} ms, "
        f"{result.failures} failures; CPU ms/request {cpu_ms}",
        flush=True,
    )
    return result, cpu_ms


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[int(fraction * (len(ordered) - 1))]


@dataclass
class HopRow:
    """The hop at one load (clients, or requests a second): each mode's latencies over all
    rounds, and each round's hop (the difference of the two modes' medians in that round)."""

    load: int
    medians: dict[str, float]
    p90s: dict[str, float]
    requests: dict[str, int]
    hops: list[float]

    @property
    def hop(self) -> float:
        """The median of the rounds' hops: robust to one round's luck with the machine."""
        return statistics.median(self.hops)


Rounds = dict[str, list[dict[int, list[float]]]]
"""Per mode, per round, per load: the latencies (ms)."""


def _hops(rounds: Rounds, loads: tuple[int, ...]) -> list[HopRow]:
    rows = []
    for load in loads:
        pooled = {
            name: [latency for one in runs for latency in one[load]]
            for name, runs in rounds.items()
        }
        round_medians = {
            name: [statistics.median(one[load]) for one in runs] for name, runs in rounds.items()
        }
        pairs = zip(round_medians["split"], round_medians["embedded"], strict=True)
        rows.append(
            HopRow(
                load=load,
                medians={name: statistics.median(values) for name, values in pooled.items()},
                p90s={name: _percentile(values, 0.9) for name, values in pooled.items()},
                requests={name: len(values) for name, values in pooled.items()},
                hops=[split - embedded for split, embedded in pairs],
            )
        )
    return rows


@dataclass
class Mode:
    """Everything measured for one mode."""

    rounds: list[dict[int, list[float]]]
    paced: list[dict[int, list[float]]]
    result: LocustResult
    cpu_ms: dict[str, float]


def plot(modes: dict[str, Mode], path: Path) -> None:
    figure, (left, closed, open_, right) = plt.subplots(1, 4, figsize=(21, 4.5))
    closed_rows = _hops({name: mode.rounds for name, mode in modes.items()}, HOP_CONCURRENCIES)
    paced_rows = _hops({name: mode.paced for name, mode in modes.items()}, PACED_RATES)
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
            axis.annotate(f"hop {row.hop:+.2f}", (i, 0.2), ha="center", color="white")
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


def _hop_table(rows: list[HopRow], unit: str, rate: bool) -> list[str]:
    lines = [
        f"| {unit} | ≈ RPS | embedded median | split median | **hop** (median of rounds) "
        "| each round's hop | embedded p90 | split p90 | requests (e / s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        rps = row.load if rate else row.load * 1000 / row.medians["split"]
        each = ", ".join(f"{hop:+.2f}" for hop in row.hops)
        lines.append(
            f"| {row.load} | {rps:.0f} | {row.medians['embedded']:.2f} "
            f"| {row.medians['split']:.2f} | **{row.hop:+.2f} ms** | {each} "
            f"| {row.p90s['embedded']:.2f} | {row.p90s['split']:.2f} "
            f"| {row.requests['embedded']} / {row.requests['split']} |"
        )
    return lines


def report(modes: dict[str, Mode], args: argparse.Namespace, shared: bool) -> str:
    closed_rounds = {name: mode.rounds for name, mode in modes.items()}
    paced_rounds = {name: mode.paced for name, mode in modes.items()}
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
        *_hop_table(_hops(paced_rounds, PACED_RATES), "req/s", rate=True),
        "",
        "### Closed loop, with the seed's 200 ms sleep per model call",
        "",
        "N clients loop over the request; each model call sleeps 200 ms, in both modes. Event",
        "loop timers fire on millisecond ticks, so that sleep lasts ~199.5 to ~201 ms depending",
        "on the sub-millisecond phase of the process's wake-ups, which differs by process and",
        "by round: it moves either mode's median by up to a millisecond between rounds, which",
        "is why the paced measurement above is the one held to the target.",
        "",
        *_hop_table(_hops(closed_rounds, HOP_CONCURRENCIES), "clients", rate=False),
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
                    name: round(statistics.median(one[-1][load]), 3) for name, one in runs.items()
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
            "rounds": mode.rounds,
            "paced_rounds": mode.paced,
            "cpu_ms_per_request": mode.cpu_ms,
            "result": asdict(mode.result),
        }
        for name, mode in modes.items()
    }
    results_path.write_text(json.dumps(serialisable, indent=1))
    print((HERE / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
