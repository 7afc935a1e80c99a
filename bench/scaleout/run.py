"""Split mode beside embedded mode, in one run: what the Redis hop costs and what it keeps.

    python -m bench.scaleout.run [--duration 60] [--hop-requests 400]

1. Hop latency: a closed-loop client at moderate concurrency sends the kiosk's requests to the
   embedded server, then to 1 API node + 2 workers over Redis; the median difference is the
   latency the broker hop adds (the model cost, 0.2 s a call, is the same on both sides).
2. Throughput: the kiosk benchmark's Locust load (bench/kiosk/locustfile.py: 250 kiosks,
   10 started a second, 5 restaurants) against each, one after the other.

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
from dataclasses import asdict
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.kiosk.scenario import HIGH, LOW, training_sets
from bench.loadtest import REPO, LocustResult, free_port, machine, run_locust, wait_for_port

HERE = Path(__file__).resolve().parent
USERS, SPAWN_RATE = 250, 10
WORKERS = 2
HOP_CONCURRENCY = 16


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free loopback port, no persistence; yields its URL."""
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
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


@contextmanager
def sluiceway(broker: str | None) -> Iterator[int]:
    """The server under test: embedded, or an API node and its workers; yields the HTTP port."""
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
        yield port
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


async def closed_loop(port: int, requests: int) -> list[float]:
    """Latencies (ms) of ``requests`` kiosk calls sent by HOP_CONCURRENCY looping clients."""
    restaurants = training_sets()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=HOP_CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as http:
        for restaurant in restaurants:  # fit every model first: the hop is measured warm
            (await http.post("/classify", json=_body(restaurant))).raise_for_status()
        remaining = requests

        async def client(index: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                body = _body(restaurants[index % len(restaurants)])
                began = time.perf_counter()
                response = await http.post("/classify", json=body)
                latencies.append(1000 * (time.perf_counter() - began))
                response.raise_for_status()

        await asyncio.gather(*(client(i) for i in range(HOP_CONCURRENCY)))
    return latencies


def measure(name: str, broker: str | None, args: argparse.Namespace) -> dict[str, object]:
    with sluiceway(broker) as port:
        latencies = asyncio.run(closed_loop(port, args.hop_requests))
        result = run_locust(
            REPO / "bench" / "kiosk" / "locustfile.py",
            f"http://127.0.0.1:{port}",
            USERS,
            SPAWN_RATE,
            args.duration,
            Path(args.workdir) / name,
        )
    print(
        f"{name}: closed-loop median {statistics.median(latencies):.2f} ms; locust steady "
        f"{result.rps_steady:.0f} RPS, p50 {result.p50_ms:.0f} ms, {result.failures} failures",
        flush=True,
    )
    return {"latencies_ms": latencies, "result": result}


def plot(runs: dict[str, dict[str, object]], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, run in runs.items():
        result = run["result"]
        assert isinstance(result, LocustResult)
        left.plot([r["t"] for r in result.history], [r["rps"] for r in result.history], label=name)
        latencies = sorted(run["latencies_ms"])  # type: ignore[call-overload]
        right.plot(latencies, [i / len(latencies) for i in range(len(latencies))], label=name)
    left.set(xlabel="seconds", ylabel="requests / s", title=f"Locust kiosk load ({USERS} users)")
    right.set(
        xlabel="latency (ms)",
        ylabel="fraction of requests",
        title=f"closed loop, {HOP_CONCURRENCY} clients (model cost 200 ms)",
    )
    left.legend()
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(runs: dict[str, dict[str, object]], args: argparse.Namespace, shared: bool) -> str:
    embedded, split = runs["embedded"], runs["split"]
    med = {name: statistics.median(run["latencies_ms"]) for name, run in runs.items()}  # type: ignore[arg-type]
    hop = med["split"] - med["embedded"]
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
        f"{HOP_CONCURRENCY} clients loop over the kiosk's request (5 restaurants, models fitted",
        f"first), {args.hop_requests} requests per mode. The model cost (200 ms a call) is the",
        "same in both modes, so the difference of the medians is what the Redis hop adds.",
        "",
        "| mode | median ms | p90 ms | p99 ms |",
        "| --- | --- | --- | --- |",
    ]
    for name, run in runs.items():
        latencies = sorted(run["latencies_ms"])  # type: ignore[call-overload]
        p90 = latencies[int(0.9 * (len(latencies) - 1))]
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        lines.append(f"| {name} | {med[name]:.2f} | {p90:.2f} | {p99:.2f} |")
    lines += [
        "",
        f"**Median latency added by the broker hop: {hop:.2f} ms** (target ≤ 1 ms).",
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
        "![scale-out](scaleout.png)",
        "",
    ]
    for name, run in runs.items():
        r = run["result"]
        assert isinstance(r, LocustResult)
        if r.failure_reasons:
            lines += [f"Failures ({name}): " + "; ".join(r.failure_reasons), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=60, help="seconds of Locust per mode")
    parser.add_argument("--hop-requests", type=int, default=800)
    parser.add_argument("--shared", action="store_true", help="say other work shared the CPU")
    parser.add_argument("--workdir", default=str(HERE / "runs"))
    args = parser.parse_args()
    runs: dict[str, dict[str, object]] = {"embedded": measure("embedded", None, args)}
    with redis_server() as url:
        runs["split"] = measure("split", url, args)
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
