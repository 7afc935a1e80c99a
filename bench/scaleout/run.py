"""Split mode beside embedded mode, in one run: what the Redis hop costs and what it keeps.

    python -m bench.scaleout.run [--duration 60] [--hop-seconds 10]

1. Hop latency: closed-loop clients (8, 16 and 32 of them: light to moderate load) send the
   kiosk's requests to the embedded server, then to 1 API node + 2 workers over Redis; the
   difference of the medians is the latency the broker hop adds (the model cost, 0.2 s a call,
   is the same on both sides).
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
from bench.loadtest import REPO, LocustResult, free_port, machine, run_locust, wait_for_port

HERE = Path(__file__).resolve().parent
USERS, SPAWN_RATE = 250, 10
WORKERS = 2
HOP_CONCURRENCIES = (8, 16, 32)
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
            process.terminate()
            process.wait(10)


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
        roles = {"api": [processes[-1].pid]}
        if broker is not None:
            roles["workers"] = [process.pid for process in processes[:-1]]
        yield Cluster(port, roles)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()


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


def measure(
    name: str, broker: str | None, redis_pid: int | None, args: argparse.Namespace
) -> dict[str, object]:
    with sluiceway(broker) as cluster:
        if redis_pid is not None:
            cluster.processes["redis"] = [redis_pid]
        hops = {
            clients: asyncio.run(closed_loop(cluster.port, clients, args.hop_seconds))
            for clients in HOP_CONCURRENCIES
        }
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
    # CPU per request over the whole Locust run (ramp included), per server role.
    cpu_ms = {role: 1000 * (after[role] - before[role]) / max(result.requests, 1) for role in after}
    medians = ", ".join(f"{c} clients {statistics.median(v):.2f} ms" for c, v in hops.items())
    print(
        f"{name}: closed-loop medians {medians}; locust steady {result.rps_steady:.0f} RPS, "
        f"p50 {result.p50_ms:.0f} ms, {result.failures} failures; CPU ms/request {cpu_ms}",
        flush=True,
    )
    return {"latencies_ms": hops, "cpu_ms_per_request": cpu_ms, "result": result}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[int(fraction * (len(ordered) - 1))]


def _hops(runs: dict[str, dict[str, object]]) -> dict[int, dict[str, float]]:
    """Per concurrency: each mode's median and p90, and the hop (difference of medians)."""
    table: dict[int, dict[str, float]] = {}
    for clients in HOP_CONCURRENCIES:
        row: dict[str, float] = {}
        for name, run in runs.items():
            latencies = run["latencies_ms"][clients]  # type: ignore[index]
            row[f"{name}_median"] = statistics.median(latencies)
            row[f"{name}_p90"] = _percentile(latencies, 0.9)
            row[f"{name}_requests"] = len(latencies)
        row["hop"] = row["split_median"] - row["embedded_median"]
        table[clients] = row
    return table


def plot(runs: dict[str, dict[str, object]], path: Path) -> None:
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    hops = _hops(runs)
    clients = list(HOP_CONCURRENCIES)
    for offset, (name, run) in zip((-0.2, 0.2), runs.items(), strict=True):
        result = run["result"]
        assert isinstance(result, LocustResult)
        left.plot([r["t"] for r in result.history], [r["rps"] for r in result.history], label=name)
        above = [hops[c][f"{name}_median"] - MODEL_MS for c in clients]
        middle.bar([i + offset for i in range(len(clients))], above, width=0.4, label=name)
    middle.set_xticks(range(len(clients)), [f"{c} clients" for c in clients])
    for i, c in enumerate(clients):
        middle.annotate(f"hop {hops[c]['hop']:+.2f}", (i, 0.2), ha="center", color="white")
    left.set(xlabel="seconds", ylabel="requests / s", title=f"Locust kiosk load ({USERS} users)")
    middle.set(
        ylabel="median latency above the model's 200 ms (ms)",
        title="closed loop: what the server adds, by concurrency",
    )
    roles = ("api", "workers", "redis")
    bottoms = [0.0, 0.0]
    for role in roles:
        heights = [run["cpu_ms_per_request"].get(role, 0.0) for run in runs.values()]  # type: ignore[attr-defined]
        right.bar(list(runs), heights, bottom=bottoms, label=role)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    right.set(ylabel="CPU ms per request", title="server CPU per request under Locust")
    for axis in (left, middle, right):
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(runs: dict[str, dict[str, object]], args: argparse.Namespace, shared: bool) -> str:
    embedded, split = runs["embedded"], runs["split"]
    hops = _hops(runs)
    e, s = embedded["result"], split["result"]
    assert isinstance(e, LocustResult) and isinstance(s, LocustResult)
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
        f"{args.hop_seconds} s per mode and concurrency. The model cost (200 ms a call) is the",
        "same in both modes, so the difference of the medians is what the Redis hop adds.",
        "Target: ≤ 1 ms at moderate load.",
        "",
        "| clients | ≈ RPS | embedded median | split median | **hop** | embedded p90 | split p90 "
        "| requests (e / s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for clients, row in hops.items():
        rps = clients * 1000 / row["split_median"]
        lines.append(
            f"| {clients} | {rps:.0f} | {row['embedded_median']:.2f} | {row['split_median']:.2f} "
            f"| **{row['hop']:+.2f} ms** | {row['embedded_p90']:.2f} | {row['split_p90']:.2f} "
            f"| {row['embedded_requests']:.0f} / {row['split_requests']:.0f} |"
        )
    lines += [
        "",
        f"## Throughput (Locust, {USERS} kiosks, {SPAWN_RATE}/s, {args.duration} s each)",
        "",
        "| mode | steady RPS | mean RPS | p50 ms | p95 ms | p99 ms | requests | failures |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in runs.items():
        r = run["result"]
        assert isinstance(r, LocustResult)
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
    for name, run in runs.items():
        cpu = run["cpu_ms_per_request"]
        assert isinstance(cpu, dict)
        lines.append(
            f"| {name} | {cpu.get('api', 0):.3f} | {cpu.get('workers', 0):.3f} "
            f"| {cpu.get('redis', 0):.3f} | {sum(cpu.values()):.3f} |"
        )
    lines += ["", "![scale-out](scaleout.png)", ""]
    for name, run in runs.items():
        r = run["result"]
        assert isinstance(r, LocustResult)
        if r.failure_reasons:
            lines += [f"Failures ({name}): " + "; ".join(r.failure_reasons), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=60, help="seconds of Locust per mode")
    parser.add_argument("--hop-seconds", type=float, default=10, help="per mode and concurrency")
    parser.add_argument("--shared", action="store_true", help="say other work shared the CPU")
    parser.add_argument("--workdir", default=str(HERE / "runs"))
    args = parser.parse_args()
    runs: dict[str, dict[str, object]] = {"embedded": measure("embedded", None, None, args)}
    with redis_server() as (url, redis_pid):
        runs["split"] = measure("split", url, redis_pid, args)
    (HERE / "REPORT.md").write_text(report(runs, args, args.shared))
    plot(runs, HERE / "scaleout.png")
    serialisable = {
        name: {**run, "result": asdict(run["result"])}  # type: ignore[call-overload]
        for name, run in runs.items()
    }
    (HERE / "results.json").write_text(json.dumps(serialisable, indent=1))
    print((HERE / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
