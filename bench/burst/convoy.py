"""The convoy benchmark: restaurants whose kiosks are answered together, at 16 slots.

    python -m bench.burst.convoy --before-src TREE [--before-label NAME] [--duration 10]
        [--rounds 2] [--out DIR]

Four restaurants of 50 kiosks each, every restaurant its own ``wrk`` (with ``kiosk.lua``, 1
thread, 50 connections, 10–20 ms think time), so a restaurant's kiosks are one fixed group as
in life, on a server with 16 KNN slots, all restaurants fitted beforehand. Before the fix, a
restaurant whose 50 requests all arrived while no slot was free ran them as one call of
0.2 + 0.05·49 = 2.65 s, got them back together and met the same again (a convoy), while the
other slots ran small calls. ``before`` is Sluiceway from ``--before-src``, ``after`` this
tree, one after the other in each round, each freshly started.

The bound: 200 kiosks over 16 slots, each call carrying 200 / 16 of them, 200 / (0.165 +
0.05·200/16) = 253 requests a second. Target (issue 12): ≥ 0.9 × the bound.

Writes ``bench/burst/convoy/REPORT.md``, ``convoy.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.burst.rounds import Runs, report_date, run_rounds, save_results, wrk_per_restaurant
from bench.burst.run import server, warm_up, wrk_result
from bench.kiosk.scenario import training_sets
from bench.loadtest import REPO, ProcessWatch, machine, stop

OUT = Path(__file__).resolve().parent / "convoy"
SLOTS = 16
RESTAURANTS = 4
KIOSKS = 50  # the seed's 250 kiosks over five restaurants
BOUND = RESTAURANTS * KIOSKS / (0.165 + 0.05 * RESTAURANTS * KIOSKS / SLOTS)
SERVERS = ["before", "after"]


def scraped(port: int, name: str) -> float:
    """One KNN sample of the server's Prometheus metrics (0 when it has none)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    found = re.search(rf'^{name}\{{model="knn"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def measure(src: Path, name: str, duration_s: int, workdir: Path) -> dict[str, float]:
    """One freshly started server under the grouped load; totals and per-restaurant latency."""
    srv = server(name, src, SLOTS)
    restaurants = training_sets()[:RESTAURANTS]
    process = srv.start()
    try:
        warm_up(srv.port, restaurants)
        time.sleep(0.5)
        calls_before = scraped(srv.port, "sluiceway_batch_size_count")
        jobs_before = scraped(srv.port, "sluiceway_batch_size_sum")
        with ProcessWatch(process.pid) as watch:
            label = f"{name}-restaurant"
            groups = wrk_per_restaurant(srv.port, restaurants, duration_s, KIOSKS, workdir, label)
            each = [wrk_result(group) for group in groups]
        calls = scraped(srv.port, "sluiceway_batch_size_count") - calls_before
        jobs = scraped(srv.port, "sluiceway_batch_size_sum") - jobs_before
        deferred = scraped(srv.port, "sluiceway_deferred_calls_total")
    finally:
        stop(process)
    seconds = max(r["duration_us"] for r in each) / 1e6
    requests = sum(r["requests"] for r in each)
    p50s = [r["p50_ms"] for r in each]
    return {
        "requests": requests,
        "rps": requests / seconds,
        "vs_bound": requests / seconds / BOUND,
        "failures": sum(
            r[k] for r in each for k in ("not_200", "connect", "read", "write", "timeout")
        ),
        "p50_ms_best": min(p50s),
        "p50_ms_worst": max(p50s),
        "p99_ms_worst": max(r["p99_ms"] for r in each),
        "max_ms": max(r["max_ms"] for r in each),
        "mean_batch": jobs / calls if calls else 0.0,
        "deferred_calls": deferred,
        "server_cpu_ms_per_request": 1000 * watch.cpu_s / requests if requests else 0.0,
    }


def plot(runs: Runs, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"before": "tab:red", "after": "tab:blue"}
    names, rps, shades = [], [], []
    for name, rounds in runs.items():
        for index, r in enumerate(rounds, 1):
            names.append(f"{name}\nround {index}")
            rps.append(r["rps"])
            shades.append(colors[name])
            label = name if index == 1 else None
            left.plot(
                ["best p50", "worst p50", "worst p99"],
                [r["p50_ms_best"], r["p50_ms_worst"], r["p99_ms_worst"]],
                marker="o",
                color=colors[name],
                label=label,
            )
    left.set_ylabel("ms")
    left.set_title("the four restaurants' latency, each round")
    left.legend()
    right.bar(names, rps, color=shades)
    right.axhline(BOUND, color="grey", linestyle=":", label=f"bound {BOUND:.0f}")
    right.axhline(0.9 * BOUND, color="grey", linestyle="--", label="0.9 × bound")
    right.set_ylabel("requests per second")
    right.set_title(f"throughput at {SLOTS} slots")
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(runs: Runs, duration_s: int, rounds: int, before: str) -> str:
    lines = [
        "# Convoy benchmark: restaurants answered together, at 16 slots",
        "",
        f"- Date: {report_date()}",
        f"- Machine: {machine()}; shared with other work while it ran (other engineers' builds"
        " and tests), so compare the rows of one round: before and after ran one after the other.",
        f"- Server: {SLOTS} KNN slots, cost model fit 2.0 s, a call 0.2 + 0.05·(n−1) s; the four"
        f" restaurants fitted before the load starts. before: Sluiceway at {before};"
        " after: this tree.",
        f"- Load: `wrk` with `kiosk.lua`, {duration_s} s, {RESTAURANTS} restaurants of {KIOSKS}"
        f" kiosks, one `wrk` per restaurant (1 thread, {KIOSKS} connections, 10–20 ms think"
        f" time), so a restaurant's kiosks are one group. {rounds} rounds.",
        f"- Bound: {RESTAURANTS * KIOSKS} / (0.165 + 0.05·{RESTAURANTS * KIOSKS}/{SLOTS}) ="
        f" {BOUND:.0f} RPS; target ≥ 0.9 × bound = {0.9 * BOUND:.0f}.",
        "- p50 best / worst: the least and most of the four restaurants' medians (a convoyed"
        " restaurant's median is about one call of 50, 2.65 s); mean batch and deferred calls"
        " from the server's metrics.",
        "",
        "| server | round | requests | RPS | vs bound | failures | p50 best ms | p50 worst ms |"
        " p99 worst ms | max ms | mean batch | deferred calls | server CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for index in range(rounds):
        for name in SERVERS:
            r = runs[name][index]
            lines.append(
                f"| {name} | {index + 1} | {r['requests']:.0f} | {r['rps']:.0f} |"
                f" {r['vs_bound']:.2f}× | {r['failures']:.0f} | {r['p50_ms_best']:.0f} |"
                f" {r['p50_ms_worst']:.0f} | {r['p99_ms_worst']:.0f} | {r['max_ms']:.0f} |"
                f" {r['mean_batch']:.1f} | {r['deferred_calls']:.0f} |"
                f" {r['server_cpu_ms_per_request']:.2f} |"
            )
    lines += ["", "![latency and throughput](convoy.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-src", type=Path, required=True, help="the baseline's tree")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each server, interleaved")
    parser.add_argument("--out", type=Path, default=OUT, help="where the report goes")
    parser.add_argument("--before-label", default="the --before-src tree", help="its name")
    args = parser.parse_args()
    trees = {"before": args.before_src, "after": REPO}
    runs = run_rounds(
        SERVERS,
        args.rounds,
        lambda name, workdir: measure(trees[name], name, args.duration, workdir),
    )
    out: Path = args.out
    save_results(
        out,
        {"duration_s": args.duration, "slots": SLOTS, "bound_rps": BOUND, "machine": machine()},
        runs,
    )
    plot(runs, out / "convoy.png")
    (out / "REPORT.md").write_text(report(runs, args.duration, args.rounds, args.before_label))
    print(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
