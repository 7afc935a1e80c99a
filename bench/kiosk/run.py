"""Run the kiosk benchmark: ceiling, naive and Sluiceway under one Locust load, one after another.

    python -m bench.kiosk.run [--duration 180] [--only sluiceway ceiling]

Writes ``bench/kiosk/REPORT.md``, ``kiosk.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TypedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadtest import (
    REPO,
    LocustResult,
    ProcessWatch,
    Server,
    free_port,
    machine,
    run_locust,
    stop,
)

HERE = Path(__file__).resolve().parent
USERS, SPAWN_RATE = 250, 10
SLOTS_LIMITED = 16


class KioskRun(TypedDict):
    """One server's run: Locust's figures and the server process tree's."""

    result: LocustResult
    rss_peak_mb: float
    rss: list[tuple[float, float]]
    """(seconds since the start, MB) every second."""
    server_cpu_ms_per_request: float
    labels_checked: bool


def servers(before_src: Path | None = None) -> list[tuple[Server, bool]]:
    """Each server under test and whether its labels are checked; with ``before_src`` (a
    source tree, e.g. main before a change) also Sluiceway from there, for a before/after."""
    python = sys.executable
    quiet = {"SLUICEWAY_LOG_LEVEL": "WARNING"}
    port = free_port
    before: list[tuple[Server, bool]] = []
    if before_src is not None:
        old = {**quiet, "PYTHONPATH": f"{before_src / 'src'}:{REPO}"}
        serve = [python, "-m", "sluiceway", "serve", "--port"]
        before = [
            (Server("sluiceway-before", [*serve, str(p := port())], p, old), True),
            (
                Server(
                    f"sluiceway-before-{SLOTS_LIMITED}-slots",
                    [*serve, str(p := port())],
                    p,
                    {**old, "SLUICEWAY_KNN_SLOTS": str(SLOTS_LIMITED)},
                ),
                True,
            ),
        ]
    return [
        *before,
        (
            Server(
                "ceiling",
                [python, "-m", "bench.kiosk.servers", "ceiling", "--port", str(p := port())],
                p,
            ),
            False,
        ),
        (
            Server(
                "naive",
                [python, "-m", "bench.kiosk.servers", "naive", "--port", str(p := port())],
                p,
            ),
            True,
        ),
        (
            Server(
                "sluiceway",
                [python, "-m", "sluiceway", "serve", "--port", str(p := port())],
                p,
                quiet,
            ),
            True,
        ),
        (
            Server(
                f"sluiceway-{SLOTS_LIMITED}-slots",
                [python, "-m", "sluiceway", "serve", "--port", str(p := port())],
                p,
                {**quiet, "SLUICEWAY_KNN_SLOTS": str(SLOTS_LIMITED)},
            ),
            True,
        ),
    ]


def measure(server: Server, check_labels: bool, duration_s: int, workdir: Path) -> KioskRun:
    process = server.start()
    try:
        with ProcessWatch(process.pid) as watch:
            result = run_locust(
                HERE / "locustfile.py",
                f"http://127.0.0.1:{server.port}",
                USERS,
                SPAWN_RATE,
                duration_s,
                workdir / server.name,
                env={"KIOSK_CHECK_LABELS": "1" if check_labels else "0"},
            )
    finally:
        stop(process)
    cpu_ms = 1000 * watch.cpu_s / max(result.requests, 1)
    print(
        f"{server.name}: steady {result.rps_steady:.0f} RPS, p99 {result.p99_ms:.0f} ms, "
        f"{result.failures} failures, peak RSS {watch.peak_rss_mb:.0f} MB",
        flush=True,
    )
    return {
        "result": result,
        "rss_peak_mb": watch.peak_rss_mb,
        "rss": watch.samples,
        "server_cpu_ms_per_request": cpu_ms,
        "labels_checked": check_labels,
    }


def plot(runs: dict[str, KioskRun], path: Path) -> None:
    fig, (ax_rps, ax_lat) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name, run in runs.items():
        result = run["result"]
        t = [row["t"] for row in result.history]
        ax_rps.plot(t, [row["rps"] for row in result.history], label=name)
        ax_lat.plot(t, [row["p95"] for row in result.history], label=f"{name} p95")
    ax_rps.set_ylabel("requests/s")
    ax_rps.set_title(f"Kiosk load: {USERS} users, {SPAWN_RATE}/s ramp, 10–20 ms think time")
    ax_rps.legend()
    ax_rps.grid(alpha=0.3)
    ax_lat.set_ylabel("p95 latency (ms, log)")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("seconds")
    ax_lat.legend()
    ax_lat.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(runs: dict[str, KioskRun], duration_s: int) -> str:
    ceiling = runs.get("ceiling")
    ceiling_rps = ceiling["result"].rps_steady if ceiling else None
    bound = USERS / (0.165 + 0.05 * USERS / SLOTS_LIMITED)
    lines = [
        "# Kiosk benchmark",
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {machine()}; Locust and the server share it.",
        f"- Load: Locust (HttpUser), {USERS} kiosks, {SPAWN_RATE} started per second, "
        f"{duration_s} s, 5 restaurants with fixed random training data (10 rows), "
        "10–20 ms think time, GET /classify with a JSON body, one query vector per request.",
        "- Cost model: fit 2.0 s; one inference call over n vectors 0.2 + 0.05·(n−1) s.",
        "- Steady RPS counts from 5 s after the ramp ends. Latencies are Locust's, whole run.",
        *(
            [
                "- `sluiceway-before*`: Sluiceway from the `--before-src` tree (a baseline),"
                " same run."
            ]
            if any("before" in name for name in runs)
            else []
        ),
        "",
        "| server | steady RPS | mean RPS | vs ceiling | p50 ms | p95 ms | p99 ms | requests "
        "| failures | peak RSS MB | server CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        r = run["result"]
        ratio = f"{r.rps_steady / ceiling_rps:.2f}" if ceiling_rps else "–"
        lines.append(
            f"| {name} | {r.rps_steady:.0f} | {r.rps_mean:.0f} | {ratio} | {r.p50_ms:.0f} | "
            f"{r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.requests} | {r.failures} | "
            f"{run['rss_peak_mb']:.0f} | {run['server_cpu_ms_per_request']:.2f} |"
        )
    lines += [
        "",
        f"Bound with {SLOTS_LIMITED} slots: {USERS} / (0.165 + 0.05·{USERS}/{SLOTS_LIMITED}) "
        f"= {bound:.0f} RPS (without batching {SLOTS_LIMITED} slots cap at "
        f"{SLOTS_LIMITED / 0.2:.0f}).",
        "",
        "Labels are checked against scikit-learn for every answer of naive and Sluiceway "
        "(a wrong label counts as a failure); the ceiling computes nothing and is not checked.",
        "",
    ]
    for name, run in runs.items():
        r = run["result"]
        if r.failure_reasons:
            lines.append(f"- {name} failures: " + "; ".join(r.failure_reasons))
    lines += ["", "![RPS and p95 latency over time](kiosk.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=180, help="seconds per server")
    parser.add_argument("--only", nargs="*", help="run only these servers")
    parser.add_argument("--out", type=Path, default=HERE, help="where the report goes")
    parser.add_argument(
        "--before-src", type=Path, help="also run Sluiceway from this source tree (a baseline)"
    )
    args = parser.parse_args()
    workdir = HERE / "runs" / time.strftime("%Y%m%d-%H%M%S")
    runs: dict[str, KioskRun] = {}
    for server, check in servers(args.before_src):
        if args.only and server.name not in args.only:
            continue
        runs[server.name] = measure(server, check, args.duration, workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "kiosk.png")
    (args.out / "REPORT.md").write_text(report(runs, args.duration))
    summary = {
        name: {
            **{k: v for k, v in asdict(run["result"]).items() if k != "history"},
            "rss_peak_mb": run["rss_peak_mb"],
            "server_cpu_ms_per_request": run["server_cpu_ms_per_request"],
        }
        for name, run in runs.items()
    }
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "machine": machine(),
                "duration_s": args.duration,
                "runs": summary,
            },
            indent=2,
        )
    )
    print((args.out / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
