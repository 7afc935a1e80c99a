"""Split mode beside embedded mode, in one run: what the Redis hop costs and what it keeps.

    python -m bench.scaleout.run [--duration 60] [--hop-seconds 10] [--rounds 3]

1. Hop latency: closed-loop clients (8, 16 and 32 of them: light to moderate load) send the
   kiosk's requests to the embedded server, then to 1 API node + 2 workers over Redis, in
   rounds that alternate the modes on fresh servers; the difference of a round's medians is
   the latency the broker hop adds (the model cost, 0.2 s a call, is the same on both sides),
   and the median over rounds is reported.
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
from dataclasses import asdict, dataclass
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
SETTLE_S = 4.0  # > two worker heartbeats (SLUICEWAY_WORKER_HEARTBEAT_S = 1) and a margin
MODEL_MS = 200.0  # the kiosk KNN's simulated cost of one call (SLUICEWAY_KNN_INFER_BASE_COST_S)


@dataclass
class Cluster:
    """The server under test: where it listens and its processes by role."""

    port: int
    processes: dict[str, list[int]]

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
def sluiceway(broker: str | None) -> Iterator[Cluster]:
    """The server under test: embedded, or an API node and its workers."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLUICEWAY_LOG_LEVEL": "WARNING"}
    python = sys.executable
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if broker is not None:
            for _ in range(WORKERS):
                worker_env = {**env, "SLUICEWAY_WORKER_PORT": str(free_port())}
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
        yield Cluster(port, roles)
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
        for restaurant in restaurants:  # fit every model first: the hop is measured warm
            (await http.post("/classify", json=_body(restaurant))).raise_for_status()
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
    """The hop at one concurrency: each mode's latencies over all rounds, and each round's hop
    (the difference of the two modes' medians in that round)."""

    clients: int
    medians: dict[str, float]
    p90s: dict[str, float]
    requests: dict[str, int]
    hops: list[float]

    @property
    def hop(self) -> float:
        """The median of the rounds' hops: robust to one round's luck with the machine."""
        return statistics.median(self.hops)


def _hops(rounds: dict[str, list[dict[int, list[float]]]]) -> list[HopRow]:
    rows = []
    for clients in HOP_CONCURRENCIES:
        pooled = {
            name: [latency for one in runs for latency in one[clients]]
            for name, runs in rounds.items()
        }
        round_medians = {
            name: [statistics.median(one[clients]) for one in runs] for name, runs in rounds.items()
        }
        pairs = zip(round_medians["split"], round_medians["embedded"], strict=True)
        rows.append(
            HopRow(
                clients=clients,
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
    result: LocustResult
    cpu_ms: dict[str, float]


def plot(modes: dict[str, Mode], path: Path) -> None:
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    rows = _hops({name: mode.rounds for name, mode in modes.items()})
    for offset, (name, mode) in zip((-0.2, 0.2), modes.items(), strict=True):
        history = mode.result.history
        left.plot([r["t"] for r in history], [r["rps"] for r in history], label=name)
        above = [row.medians[name] - MODEL_MS for row in rows]
        middle.bar([i + offset for i in range(len(rows))], above, width=0.4, label=name)
    middle.set_xticks(range(len(rows)), [f"{row.clients} clients" for row in rows])
    for i, row in enumerate(rows):
        middle.annotate(f"hop {row.hop:+.2f}", (i, 0.2), ha="center", color="white")
    left.set(xlabel="seconds", ylabel="requests / s", title=f"Locust kiosk load ({USERS} users)")
    middle.set(
        ylabel="median latency above the model's 200 ms (ms)",
        title="closed loop: what the server adds, by concurrency",
    )
    bottoms = [0.0] * len(modes)
    for role in ("api", "workers", "redis"):
        heights = [mode.cpu_ms.get(role, 0.0) for mode in modes.values()]
        right.bar(list(modes), heights, bottom=bottoms, label=role)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    right.set(ylabel="CPU ms per request", title="server CPU per request under Locust")
    for axis in (left, middle, right):
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(modes: dict[str, Mode], args: argparse.Namespace, shared: bool) -> str:
    rows = _hops({name: mode.rounds for name, mode in modes.items()})
    e, s = modes["embedded"].result, modes["split"].result
    ratio = s.rps_steady / e.rps_steady if e.rps_steady else float("nan")
    lines = [
        "# Scale-out benchmark: split mode (1 API node + 2 workers over Redis) beside embedded",
        "",
        f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} on {machine()}.",
        "Locust, the API node, both workers and redis-server all ran on this machine's cores."
        + (" Other work shared the machine during this run." if shared else ""),
        "",
        "## Broker hop latency (closed loop)",
        "",
        "N clients loop over the kiosk's request (5 restaurants, models fitted first) for",
        f"{args.hop_seconds:g} s per mode and concurrency, in {args.rounds} rounds that alternate",
        "the modes, each round on freshly started servers (so new worker ids, so a new",
        "assignment of restaurants to workers). The model cost (200 ms a call) is the same in",
        "both modes, so the difference of a round's medians is what the Redis hop adds; the",
        "hop reported is the median over rounds. Target: ≤ 1 ms at moderate load.",
        "",
        "| clients | ≈ RPS | embedded median | split median | **hop** (median of rounds) "
        "| each round's hop | embedded p90 | split p90 | requests (e / s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        rps = row.clients * 1000 / row.medians["split"]
        each = ", ".join(f"{hop:+.2f}" for hop in row.hops)
        lines.append(
            f"| {row.clients} | {rps:.0f} | {row.medians['embedded']:.2f} "
            f"| {row.medians['split']:.2f} | **{row.hop:+.2f} ms** | {each} "
            f"| {row.p90s['embedded']:.2f} | {row.p90s['split']:.2f} "
            f"| {row.requests['embedded']} / {row.requests['split']} |"
        )
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
        rounds: dict[str, list[dict[int, list[float]]]] = {name: [] for name in brokers}
        for number in range(args.rounds):
            for name, broker in brokers.items():
                rounds[name].append(closed_loops(broker, args.hop_seconds))
            medians = {
                name: statistics.median(runs[-1][HOP_CONCURRENCIES[1]])
                for name, runs in rounds.items()
            }
            print(f"hop round {number + 1}: medians at {HOP_CONCURRENCIES[1]} clients {medians}")
        modes = {}
        for name, broker in brokers.items():
            result, cpu_ms = locust_load(name, broker, redis_pid if broker else None, args)
            modes[name] = Mode(rounds[name], result, cpu_ms)
    (HERE / "REPORT.md").write_text(report(modes, args, args.shared))
    plot(modes, HERE / "scaleout.png")
    serialisable = {
        name: {
            "rounds": mode.rounds,
            "cpu_ms_per_request": mode.cpu_ms,
            "result": asdict(mode.result),
        }
        for name, mode in modes.items()
    }
    (HERE / "results.json").write_text(json.dumps(serialisable, indent=1))
    print((HERE / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
