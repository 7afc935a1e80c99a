"""Run the upload-page stress test: the seed's Locust load at a few user counts, two servers.

    python -m bench.web.run [--duration 30] [--users 1 4 16 32]

The baseline is Sluiceway with batching off (one compute slot, one image per model call): the
seed's single model service taking one job at a time. The candidate is Sluiceway as shipped.
Both serve the same page, ``/predict`` and ``/feedback``, run at once and take turns at each user
count (so a busy shared machine hits both alike); every report Locust got a 200 for must then be
a row of the server's feedback CSV. Writes ``bench/web/REPORT.md``, ``web.png`` and
``results.json``; Locust's CSVs go to ``bench/web/runs/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from subprocess import Popen

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadtest import ProcessWatch, Server, free_port, machine, run_locust, stop

HERE = Path(__file__).resolve().parent
ENDPOINTS = ("/", "/predict", "/feedback")


@dataclass
class Point:
    """One server at one user count."""

    users: int
    rps: float
    p50_ms: float
    p95_ms: float
    requests: int
    failures: int
    by_endpoint: dict[str, dict[str, float]] = field(default_factory=dict)
    failure_reasons: list[str] = field(default_factory=list)


@dataclass
class Series:
    """One server across user counts, and whether its feedback CSV kept every report."""

    name: str
    label: str
    points: list[Point] = field(default_factory=list)
    reports_acknowledged: int = 0
    reports_missing: int = 0
    reports_in_csv: int = 0
    peak_rss_mb: float = 0.0


def configs() -> list[tuple[str, str, dict[str, str]]]:
    """(name, description, environment) of each server under test."""
    return [
        (
            "unbatched",
            "baseline: 1 slot, 1 image per model call",
            {"SLUICEWAY_IMAGENET_SLOTS": "1", "SLUICEWAY_IMAGENET_MAX_BATCH": "1"},
        ),
        ("sluiceway", "Sluiceway as shipped (2 slots, dynamic batches up to 16)", {}),
    ]


def endpoint_stats(prefix: Path) -> dict[str, dict[str, float]]:
    """Per-endpoint requests, failures and latency percentiles from Locust's stats CSV."""
    stats: dict[str, dict[str, float]] = {}
    with Path(f"{prefix}_stats.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] in (*ENDPOINTS, "/uploads"):
                stats[row["Name"]] = {
                    "requests": float(row["Request Count"]),
                    "failures": float(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50_ms": float(row["50%"]),
                    "p95_ms": float(row["95%"]),
                }
    return stats


def reports_in(path: Path) -> list[str]:
    """The correct-label column of every row; fails if any row is torn."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle, strict=True))
    assert all(len(record) == 5 for record in records), "a feedback row is torn"
    return [record[4] for record in records[1:]]


@dataclass
class Running:
    """A server under test while the load runs, with its scratch folder and acknowledged ids."""

    series: Series
    port: int
    feedback_csv: Path
    acknowledged: list[str] = field(default_factory=list)


def start(series: Series, env: dict[str, str], scratch: Path) -> tuple[Running, Popen[bytes]]:
    port = free_port()
    feedback_csv = scratch / "feedback" / "feedback.csv"
    server = Server(
        series.name,
        [sys.executable, "-m", "sluiceway", "serve", "--port", str(port)],
        port,
        {
            "SLUICEWAY_LOG_LEVEL": "WARNING",
            "SLUICEWAY_UPLOAD_DIR": str(scratch / "uploads"),
            "SLUICEWAY_FEEDBACK_DIR": str(feedback_csv.parent),
            "SLUICEWAY_MODEL_CACHE_DIR": str(scratch / "models"),
            **env,
        },
    )
    return Running(series, port, feedback_csv), server.start()


def load(running: Running, users: int, duration_s: int, runs: Path) -> None:
    """One Locust run against one server; appends its point and acknowledged reports."""
    name = running.series.name
    prefix = runs / f"{name}_{users}u"
    result = run_locust(
        HERE / "locustfile.py",
        f"http://127.0.0.1:{running.port}",
        users=users,
        spawn_rate=max(1.0, users / 2),
        duration_s=duration_s,
        prefix=prefix,
        env={"WEB_ACK_FILE": f"{prefix}_acknowledged.txt"},
    )
    running.acknowledged += Path(f"{prefix}_acknowledged.txt").read_text().splitlines()
    point = Point(
        users=users,
        rps=result.rps_steady or result.rps_mean,
        p50_ms=result.p50_ms,
        p95_ms=result.p95_ms,
        requests=result.requests,
        failures=result.failures,
        by_endpoint=endpoint_stats(prefix),
        failure_reasons=result.failure_reasons,
    )
    running.series.points.append(point)
    print(
        f"{name:>10} {users:>3} users: {point.rps:7.1f} req/s, p50 {point.p50_ms:.0f} ms, "
        f"p95 {point.p95_ms:.0f} ms, {point.failures} failed",
        flush=True,
    )


def measure(users: list[int], duration_s: int, runs: Path) -> list[Series]:
    """Both servers up at once; at each user count the baseline runs, then the candidate.

    Interleaving keeps the pair's conditions alike when other work shares the machine.
    """
    with tempfile.TemporaryDirectory(prefix="bench-web-") as scratch, ExitStack() as stack:
        servers: list[Running] = []
        watches: list[ProcessWatch] = []
        for name, label, env in configs():
            running, process = start(Series(name, label), env, Path(scratch) / name)
            stack.callback(stop, process)
            watches.append(stack.enter_context(ProcessWatch(process.pid)))
            servers.append(running)
        for count in users:
            for running in servers:
                load(running, count, duration_s, runs)
                time.sleep(1)
        for running, watch in zip(servers, watches, strict=True):
            stored = reports_in(running.feedback_csv)
            running.series.reports_in_csv = len(stored)
            running.series.reports_acknowledged = len(running.acknowledged)
            running.series.reports_missing = len(set(running.acknowledged) - set(stored))
            running.series.peak_rss_mb = watch.peak_rss_mb
        return [running.series for running in servers]


def plot(all_series: list[Series], path: Path) -> None:
    figure, (rps_axis, latency_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for series, color in zip(all_series, ("tab:gray", "tab:blue"), strict=False):
        users = [p.users for p in series.points]
        rps_axis.plot(users, [p.rps for p in series.points], "o-", color=color, label=series.name)
        latency_axis.plot(
            users, [p.p50_ms for p in series.points], "o-", color=color, label=f"{series.name} p50"
        )
        latency_axis.plot(
            users, [p.p95_ms for p in series.points], "s--", color=color, label=f"{series.name} p95"
        )
    for axis in (rps_axis, latency_axis):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("simulated people (Locust users)")
        axis.grid(True, alpha=0.3)
        axis.legend()
    rps_axis.set_ylabel("requests per second (all endpoints)")
    rps_axis.set_title("Throughput")
    latency_axis.set_ylabel("latency, ms")
    latency_axis.set_yscale("log")
    latency_axis.set_title("Latency")
    figure.suptitle("Upload page under load: /, /predict, /feedback (weights 1:4:1)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(
    all_series: list[Series], duration_s: int, started: dt.datetime, load_at_start: float
) -> str:
    baseline, candidate = all_series[0], all_series[-1]
    lines = [
        "# Upload page stress test",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {machine()}; other work shared the machine "
        f"(load average {load_at_start:.1f} at the start) and Locust ran on the same cores.",
        f"Both servers up at once, taking turns at each user count. Each point: Locust for "
        f"{duration_s} s (ramp in about 2 s), task weights `/` 1, "
        "`/predict` 4, `/feedback` 1, 0.1–0.3 s between a person's requests; JPEG photos of "
        "the scikit-image cat; every answer checked. Command: "
        f"`python -m bench.web.run --duration {duration_s} "
        f"--users {' '.join(str(p.users) for p in candidate.points)}`.",
        "",
        "| people | server | req/s | p50 ms | p95 ms | /predict p50 ms | /feedback p50 ms "
        "| failures |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for base, cand in zip(baseline.points, candidate.points, strict=True):
        for series, point in ((baseline, base), (candidate, cand)):
            predict = point.by_endpoint.get("/predict", {})
            feedback = point.by_endpoint.get("/feedback", {})
            lines.append(
                f"| {point.users} | {series.name} | {point.rps:.1f} | {point.p50_ms:.0f} "
                f"| {point.p95_ms:.0f} | {predict.get('p50_ms', float('nan')):.0f} "
                f"| {feedback.get('p50_ms', float('nan')):.0f} | {point.failures} |"
            )
    lines += ["", "Throughput ratio, Sluiceway ÷ unbatched baseline, by people:"]
    ratios = [
        f"{cand.users}: ×{cand.rps / base.rps:.2f}" if base.rps else f"{cand.users}: n/a"
        for base, cand in zip(baseline.points, candidate.points, strict=True)
    ]
    lines += ["", "; ".join(ratios) + ".", ""]
    lines.append(
        "Feedback kept: every report answered 200 must be a row of the CSV, which must parse "
        "whole (rows beyond that are reports whose answer Locust cut off when a run stopped):"
    )
    lines.append("")
    for series in all_series:
        verdict = "all kept" if not series.reports_missing else f"{series.reports_missing} LOST"
        lines.append(
            f"- {series.name} ({series.label}): {series.reports_acknowledged} acknowledged, "
            f"{series.reports_in_csv} rows — {verdict}; peak RSS {series.peak_rss_mb:.0f} MB."
        )
    reasons = [r for s in all_series for p in s.points for r in p.failure_reasons]
    if reasons:
        lines += ["", "Failures seen: " + "; ".join(sorted(set(reasons))[:5])]
    lines += ["", "![throughput and latency against people](web.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds per user count")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 32])
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    load_at_start = os.getloadavg()[0]
    runs = HERE / "runs" / started.strftime("%Y%m%d-%H%M%S")
    runs.mkdir(parents=True, exist_ok=True)
    all_series = measure(args.users, args.duration, runs)
    plot(all_series, HERE / "web.png")
    (HERE / "REPORT.md").write_text(report(all_series, args.duration, started, load_at_start))
    (HERE / "results.json").write_text(
        json.dumps([asdict(series) for series in all_series], indent=2)
    )
    print(f"wrote {HERE / 'REPORT.md'} and {HERE / 'web.png'}")
    return 0 if all(not s.reports_missing for s in all_series) else 1


if __name__ == "__main__":
    raise SystemExit(main())
