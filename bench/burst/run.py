"""The burst benchmark: every kiosk sends its first request at the same instant.

    python -m bench.burst.run [--duration 10] [--before-src DIR]

``wrk`` (Debian's ``wrk``, driven by ``kiosk.lua``) opens 250 connections at once, each a
kiosk of one of five restaurants with 10–20 ms think time, as after a network blip. Two
scenarios, each run against the batcher before this change (the source tree in
``--before-src``, by default ``git merge-base HEAD main`` unpacked to a temporary folder) and
against this tree, one after the other in the same go:

- ``warm``: all five restaurants fitted beforehand; wrk's latency over the whole run.
- ``cold``: four fitted; wrk's 200 kiosks load them while, at the same instant, 50 kiosks of
  the fifth (not fitted yet) send their first request; each of those 50 is timed here.
- ``fair``: 16 compute slots; wrk's 240 kiosks of four restaurants, and one lone kiosk of the
  fifth (timed here, same think time): its p99 against the busy kiosks' p50.

Writes ``bench/burst/REPORT.md``, ``burst.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.kiosk.scenario import HIGH, LOW, training_sets
from bench.loadtest import REPO, ProcessWatch, Server, free_port, machine, stop

HERE = Path(__file__).resolve().parent
CONNECTIONS = 250
COLD_KIOSKS = 50
FIT_COST_S = 2.0
PERCENTILES = ["p50", "p75", "p90", "p95", "p99", "p99.9"]

WrkResult = dict[str, float | str]
"""One run's figures: wrk's numbers (and ``other_statuses``, a string), then ours."""
Runs = dict[str, dict[str, list[WrkResult]]]  # scenario -> server -> rounds


def bodies(restaurants: list[list[list[int]]], per_restaurant: int = 20) -> list[str]:
    """Kiosk bodies, restaurants in turn, each with its own random query vector."""
    rng = np.random.default_rng(7)
    lines = []
    for _ in range(per_restaurant):
        for training in restaurants:
            query = rng.integers(LOW, HIGH, size=2).tolist()
            body = {
                "training_data": {"training_data": training},
                "query_input": {"query_input": query},
            }
            lines.append(json.dumps(body, separators=(",", ":")))
    return lines


def before_tree() -> Path:
    """The source tree at the branch point from main, unpacked once."""
    base = subprocess.run(
        ["git", "merge-base", "HEAD", "main"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = Path(tempfile.gettempdir()) / f"sluiceway-before-{base[:12]}"
    if not target.exists():
        target.mkdir()
        archive = subprocess.run(
            ["git", "archive", base], cwd=REPO, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def server(name: str, src: Path, slots: int = 256, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    env = {
        "SLUICEWAY_LOG_LEVEL": "WARNING",
        "SLUICEWAY_KNN_SLOTS": str(slots),
        "PYTHONPATH": f"{src / 'src'}:{REPO}",
        **(env or {}),
    }
    return Server(
        name, [sys.executable, "-m", "sluiceway", "serve", "--port", str(port)], port, env
    )


def ceiling() -> Server:
    """The kiosk benchmark's ceiling: parses the body, sleeps one call's 0.2 s, no model."""
    port = free_port()
    command = [sys.executable, "-m", "bench.kiosk.servers", "ceiling", "--port", str(port)]
    return Server("ceiling", command, port)


def warm_up(port: int, restaurants: list[list[list[int]]]) -> None:
    """Fit each restaurant's model with one request (they fit in parallel)."""
    body = bodies(restaurants, per_restaurant=1)

    async def fit_all() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for _ in range(20):  # the port may answer a moment before the app does
                try:
                    await http.get("/ping")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.25)
            headers = {"content-type": "application/json"}
            answers = await asyncio.gather(
                *(http.request("GET", "/classify", content=b, headers=headers) for b in body)
            )
            assert all(a.status_code == 200 for a in answers), [a.status_code for a in answers]

    asyncio.run(fit_all())


def classify_request(body: str) -> bytes:
    """The whole HTTP request of a kiosk sending ``body``, for the raw-socket clients below."""
    payload = body.encode()
    return (
        b"GET /classify HTTP/1.1\r\nhost: kiosk\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )


async def first_requests(port: int, body: str, kiosks: int) -> list[float]:
    """Connect ``kiosks`` sockets, then send one request on each at once; seconds to each answer."""
    request = classify_request(body)
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(kiosks)]
    started = time.perf_counter()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        took = time.perf_counter() - started
        writer.close()
        return took if status == 200 else float("nan")

    return list(await asyncio.gather(*(one(r, w) for r, w in connections)))


async def lone_kiosk(port: int, body: str, seconds: float) -> list[float]:
    """One kiosk on one connection, 10–20 ms think time, for ``seconds``; each latency."""
    request = classify_request(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = np.random.default_rng(11)
    latencies = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        await reader.readexactly(int(found.group(1)) if found else 0)
        ok = head.split(b" ", 2)[1] == b"200"
        latencies.append(time.perf_counter() - started if ok else float("nan"))
        await asyncio.sleep(rng.uniform(0.010, 0.020))
    writer.close()
    return latencies


def run_wrk(
    port: int,
    lines: list[str],
    duration_s: int,
    connections: int,
    workdir: Path,
    *,
    threads: int = 2,
    think: bool = True,
) -> subprocess.Popen[str]:
    """Start wrk's kiosks (10–20 ms think time, or none: a flooding client)."""
    path = workdir / f"bodies-{connections}-{'think' if think else 'nothink'}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    command = [
        "wrk", f"-c{connections}", f"-t{threads}", f"-d{duration_s}s", "--timeout", "30s",
        "-s", str(HERE / "kiosk.lua"), f"http://127.0.0.1:{port}", "--", str(path),
        "think" if think else "nothink",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def children_cpu_s() -> float:
    """CPU seconds of the child processes reaped so far (wrk's, once it has been waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    """wrk's figures (numbers), and ``other_statuses``: the first few failing statuses seen."""
    out, _ = process.communicate()
    match = re.search(r"^WRK_JSON (.*)$", out, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk said:\n{out}")
    parsed: dict[str, Any] = json.loads(match.group(1))
    return parsed


def measure(srv: Server, scenario: str, duration_s: int, workdir: Path) -> WrkResult:
    restaurants = training_sets()
    warm = restaurants if scenario == "warm" else restaurants[:4]
    if scenario == "fair":
        warm = restaurants
    process = srv.start()
    try:
        if srv.name != "ceiling":
            warm_up(srv.port, warm)
        time.sleep(0.5)
        with ProcessWatch(process.pid) as server_watch:
            connections = {"warm": CONNECTIONS, "cold": CONNECTIONS - COLD_KIOSKS, "fair": 240}
            reaped_cpu_s = children_cpu_s()
            loaded = restaurants[:4] if scenario == "fair" else warm
            wrk = run_wrk(srv.port, bodies(loaded), duration_s, connections[scenario], workdir)
            cold: list[float] = []
            fifth = bodies([restaurants[4]], per_restaurant=1)[0]
            if scenario == "cold":
                cold = asyncio.run(first_requests(srv.port, fifth, COLD_KIOSKS))
            elif scenario == "fair":
                cold = asyncio.run(lone_kiosk(srv.port, fifth, duration_s - 0.5))
            result: WrkResult = wrk_result(wrk)
            wrk_cpu_s = children_cpu_s() - reaped_cpu_s
        seconds = float(result["duration_us"]) / 1e6
        requests = float(result["requests"]) + len(cold)
        result["rps"] = float(result["requests"]) / seconds
        result["failures"] = sum(
            int(result[k]) for k in ("not_200", "connect", "read", "write", "timeout")
        ) + sum(1 for t in cold if t != t)
        result["server_cpu_ms_per_request"] = 1000 * server_watch.cpu_s / requests
        result["wrk_cpu_share"] = wrk_cpu_s / seconds / (os.cpu_count() or 1)
        if scenario == "fair":
            ok = sorted(t for t in cold if t == t)
            result["lone_p99_ms"] = 1000 * ok[int(0.99 * (len(ok) - 1))] if ok else float("nan")
            result["lone_requests"] = len(cold)
        elif cold:
            ok = sorted(t for t in cold if t == t)
            result["cold_first_max_ms"] = 1000 * ok[-1] if ok else float("nan")
            result["cold_first_p50_ms"] = 1000 * ok[len(ok) // 2] if ok else float("nan")
        return result
    finally:
        stop(process)


def plot(runs: Runs, path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    styles = {"ceiling": ("tab:grey", ":"), "before": ("tab:red", "--"), "after": ("tab:blue", "-")}
    for axis, scenario in zip(axes[0], runs, strict=True):
        for name, rounds in runs[scenario].items():
            color, line = styles[name]
            for index, result in enumerate(rounds):
                values = [float(result[f"{p}_ms"]) for p in PERCENTILES]
                label = name if index == 0 else None
                axis.plot(PERCENTILES, values, linestyle=line, marker="o", color=color, label=label)
        axis.axhline(300, color="black", linewidth=0.6)
        axis.set_yscale("log")
        axis.set_title(f"{scenario}: wrk latency percentiles, each round (line: 300 ms)")
        axis.set_ylabel("ms")
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(runs: Runs, duration_s: int, rounds: int) -> str:
    lines = [
        "# Burst benchmark",
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {machine()}; shared with other work while it ran, so compare the rows",
        "  of one run (before and after ran one after the other in the same go).",
        f"- Load: `wrk` with `kiosk.lua`, {CONNECTIONS} connections opened at once, 2 threads,"
        f" {duration_s} s, 10–20 ms think time, GET /classify with a JSON body, five restaurants"
        " in turn; cost model fit 2.0 s, a call 0.2 + 0.05·(n−1) s, 256 slots.",
        f"- {rounds} rounds; in each, the servers ran one after the other, each freshly started.",
        "- before: the batcher at the branch point from main; after: cost-aware batch formation;"
        " ceiling: `bench.kiosk.servers ceiling` (parses the body, sleeps 0.2 s, no model), the"
        " floor this machine and load generator allow.",
        "- cold: 200 wrk kiosks on four fitted restaurants; at the same instant 50 kiosks of a"
        " fifth, not fitted, send their first request (timed one by one here; target: within"
        f" the fit cost + 0.3 s = {1000 * FIT_COST_S + 300:.0f} ms).",
        "",
        "| scenario | server | round | requests | RPS | failures | p50 ms | p90 ms | p99 ms |"
        " max ms | cold first p50 ms | cold first max ms | server CPU ms/request | wrk CPU share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, servers in runs.items():
        for name, r, index in [
            (name, r, index) for name, rs in servers.items() for index, r in enumerate(rs, 1)
        ]:
            cold_p50 = f"{r['cold_first_p50_ms']:.0f}" if "cold_first_p50_ms" in r else "–"
            cold_max = f"{r['cold_first_max_ms']:.0f}" if "cold_first_max_ms" in r else "–"
            lines.append(
                f"| {scenario} | {name} | {index} | {r['requests']} | {r['rps']:.0f} |"
                f" {r['failures']} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} |"
                f" {r['max_ms']:.0f} |"
                f" {cold_p50} | {cold_max} | {r['server_cpu_ms_per_request']:.2f} |"
                f" {100 * float(r['wrk_cpu_share']):.0f}% |"
            )
    if "fair" in runs:
        lines += [
            "",
            "Fairness, 16 slots: 240 wrk kiosks of four restaurants and one lone kiosk of a fifth"
            " (target: the lone kiosk's p99 ≤ 1.5 × the busy kiosks' p50).",
            "",
            "| server | round | busy p50 ms | lone p99 ms | ratio | lone requests | RPS |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, fair_rounds in runs["fair"].items():
            for index, r in enumerate(fair_rounds, 1):
                busy, lone = float(r["p50_ms"]), float(r["lone_p99_ms"])
                lines.append(
                    f"| {name} | {index} | {busy:.0f} | {lone:.0f} | {lone / busy:.2f} |"
                    f" {r['lone_requests']} | {r['rps']:.0f} |"
                )
    lines += [
        "",
        "wrk's CPU share is of the whole machine (all cores).",
        "",
        "![latency percentiles](burst.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server, interleaved")
    parser.add_argument("--before-src", type=Path, help="source tree of the baseline")
    parser.add_argument("--scenarios", nargs="*", default=["warm", "cold", "fair"])
    parser.add_argument("--out", type=Path, default=HERE, help="where the report goes")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    before = args.before_src or before_tree()
    runs: Runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios:
            runs[scenario] = {}
            slots = 16 if scenario == "fair" else 256
            for _ in range(args.rounds):
                servers = [server("before", before, slots), server("after", REPO, slots)]
                if scenario == "warm":
                    servers.insert(0, ceiling())
                for srv in servers:
                    print(f"{scenario} / {srv.name} ...", flush=True)
                    result = measure(srv, scenario, args.duration, Path(tmp))
                    runs[scenario].setdefault(srv.name, []).append(result)
                    print(json.dumps(result), flush=True)
    # A run of some scenarios replaces those in the report and keeps the others.
    path = out / "results.json"
    kept = json.loads(path.read_text())["runs"] if path.exists() else {}
    merged = {**{k: v for k, v in kept.items() if k not in runs}, **runs}
    merged = {k: merged[k] for k in ["warm", "cold", "fair"] if k in merged}
    results = {"date": dt.date.today().isoformat(), "duration_s": args.duration, "runs": merged}
    path.write_text(json.dumps(results, indent=2) + "\n")
    plot(merged, out / "burst.png")
    (out / "REPORT.md").write_text(report(merged, args.duration, args.rounds))


if __name__ == "__main__":
    main()
