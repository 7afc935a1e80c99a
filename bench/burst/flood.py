"""The flood benchmark: one restaurant floods while four keep their normal load, at 16 slots.

    python -m bench.burst.flood [--duration 10] [--rounds 2] [--quota 50] [--flooders 200]

``wrk`` (with ``kiosk.lua``, one process per restaurant) drives four ordinary restaurants at
the seed's load per restaurant (50 kiosks each, 10–20 ms think time) on a server with 16 KNN
slots, all five restaurants fitted beforehand. Another ``wrk`` is the flooder: a fifth
restaurant on ``--flooders`` connections with no think time, each sending its next request as
soon as an answer (200 or 429) arrives. Four cases, each server freshly started, in turn,
every round, all from this tree:

- ``no flooder``: the four restaurants alone (tenant quota on, which they never reach);
- ``fifth at its load``: the fifth restaurant as an ordinary one (its 50 kiosks, think time),
  quota on: the seed's own load, five restaurants, and the baseline the flood is judged by
  (the flooder is that restaurant misbehaving, so it may keep the share it had);
- ``flooder, quota off``: the flood with ``SLUICEWAY_KNN_TENANT_QUOTA=0``;
- ``flooder, quota on``: the flood with ``SLUICEWAY_KNN_TENANT_QUOTA=--quota``.

The quota counts a restaurant's jobs queued or running; at 50, what one restaurant of 50 kiosks
can have in flight, an ordinary restaurant never reaches it. Each ordinary restaurant is its own
``wrk`` of 50 connections, as its kiosks are. Target (issue 12): with the quota on, the
flooder gets 429s while the others keep their latency, with 0 failures.

Writes ``bench/burst/flood/REPORT.md``, ``flood.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.burst.rounds import (
    Runs,
    folder,
    report_date,
    run_rounds,
    save_results,
    wrk_per_restaurant,
)
from bench.burst.run import (
    PERCENTILES,
    bodies,
    children_cpu_s,
    run_wrk,
    server,
    warm_up,
    wrk_result,
)
from bench.kiosk.scenario import training_sets
from bench.loadtest import REPO, ProcessWatch, machine, stop

OUT = Path(__file__).resolve().parent / "flood"
SLOTS = 16
KIOSKS_PER_RESTAURANT = 50  # the seed's 250 kiosks over five restaurants
ORDINARY = 4
CASES = ["no flooder", "fifth at its load", "flooder, quota off", "flooder, quota on"]
FLOODS = CASES[2:]


def measure(
    case: str, duration_s: int, quota: int, flooders: int, workdir: Path
) -> dict[str, float]:
    """One freshly started server under one case; the ordinary kiosks' and the flooder's figures."""
    on = 0 if case == "flooder, quota off" else quota
    srv = server(case, REPO, SLOTS, {"SLUICEWAY_KNN_TENANT_QUOTA": str(on)})
    restaurants = training_sets()
    process = srv.start()
    try:
        warm_up(srv.port, restaurants)
        time.sleep(0.5)
        with ProcessWatch(process.pid) as watch:
            reaped_cpu_s = children_cpu_s()
            # One wrk per restaurant, so a restaurant's requests in flight never drift above
            # its kiosk count (the quota's premise).
            ordinary = wrk_per_restaurant(
                srv.port,
                restaurants[:ORDINARY],
                duration_s,
                KIOSKS_PER_RESTAURANT,
                workdir,
                "restaurant",
            )
            flood = None
            if case != "no flooder":  # the fifth restaurant, at its load or flooding
                floods = case != "fifth at its load"
                flood = run_wrk(
                    srv.port,
                    bodies(restaurants[ORDINARY:]),
                    duration_s,
                    flooders if floods else KIOSKS_PER_RESTAURANT,
                    folder(workdir, "flooder" if floods else "fifth"),
                    threads=1,
                    think=not floods,
                )
            kiosks = worst_of([wrk_result(process) for process in ordinary])
            flooded = wrk_result(flood) if flood else {}
            wrk_cpu_s = children_cpu_s() - reaped_cpu_s
    finally:
        stop(process)
    seconds = kiosks["duration_us"] / 1e6
    result = {f"{p}_ms": kiosks[f"{p}_ms"] for p in [*PERCENTILES, "max"]}
    result["requests"] = kiosks["requests"]
    result["rps"] = kiosks["requests"] / seconds
    result["failures"] = sum(kiosks[k] for k in ("not_200", "connect", "read", "write", "timeout"))
    result["status_429"] = kiosks["status_429"]
    flood_requests = flooded.get("requests", 0.0)
    refused = flooded.get("status_429", 0.0)
    other = sum(flooded.get(k, 0.0) for k in ("connect", "read", "write", "timeout"))
    result["flood_requests"] = flood_requests
    result["flood_429"] = refused
    result["flood_429_share"] = refused / flood_requests if flood_requests else 0.0
    result["flood_other_failures"] = flooded.get("not_200", 0.0) - refused + other
    result["flood_answered_rps"] = (flood_requests - flooded.get("not_200", 0.0)) / seconds
    result["server_cpu_ms_per_request"] = 1000 * watch.cpu_s / (kiosks["requests"] + flood_requests)
    result["wrk_cpu_share"] = wrk_cpu_s / seconds / (os.cpu_count() or 1)
    return result


def worst_of(restaurants: list[dict[str, float]]) -> dict[str, float]:
    """The ordinary restaurants together: counts summed, each latency percentile the worst
    restaurant's (wrk reports percentiles per process, which do not merge exactly)."""
    summed = ("requests", "not_200", "status_429", "connect", "read", "write", "timeout")
    together = {key: sum(r[key] for r in restaurants) for key in summed}
    together["duration_us"] = max(r["duration_us"] for r in restaurants)
    for key in [*(f"{p}_ms" for p in PERCENTILES), "max_ms"]:
        together[key] = max(r[key] for r in restaurants)
    return together


def plot(runs: Runs, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = dict(zip(CASES, ["tab:grey", "tab:green", "tab:red", "tab:blue"], strict=True))
    for case, rounds in runs.items():
        for index, r in enumerate(rounds):
            values = [r[f"{p}_ms"] for p in PERCENTILES]
            label = case if index == 0 else None
            left.plot(PERCENTILES, values, marker="o", color=colors[case], label=label)
    left.set_yscale("log")
    left.set_ylabel("ms")
    left.set_title("the four ordinary restaurants: latency percentiles, each round")
    left.legend()
    names, answered, refused = [], [], []
    for case in CASES[1:]:
        for index, r in enumerate(runs.get(case, []), 1):
            seconds = r["requests"] / r["rps"]
            names.append(f"{case.removeprefix('flooder, ')}\nround {index}")
            answered.append(r["flood_answered_rps"])
            refused.append(r["flood_429"] / seconds)
    right.bar(names, answered, color="tab:green", label="200")
    right.bar(names, refused, bottom=answered, color="tab:orange", label="429")
    right.set_ylabel("answers per second")
    right.set_title("the fifth restaurant's answers")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(runs: Runs, duration_s: int, rounds: int, quota: int, flooders: int) -> str:
    lines = [
        "# Flood benchmark: the per-restaurant admission quota under a flooding restaurant",
        "",
        f"- Date: {report_date()}",
        f"- Machine: {machine()}; shared with other work while it ran (four other engineers'",
        "  builds and tests), so compare the rows of one run: the cases ran one after the other.",
        f"- Server: this tree, {SLOTS} KNN slots, cost model fit 2.0 s, a call 0.2 + 0.05·(n−1) s;"
        " all five restaurants fitted before the load starts.",
        f"- Load: `wrk` with `kiosk.lua`, {duration_s} s: {ORDINARY} ordinary restaurants with"
        f" {KIOSKS_PER_RESTAURANT} kiosks each, one `wrk` (1 thread, {KIOSKS_PER_RESTAURANT}"
        " connections, 10–20 ms think time) per restaurant, so a restaurant never has more than"
        f" {KIOSKS_PER_RESTAURANT} requests in flight; each latency percentile of the ordinary"
        " restaurants is the worst of the four restaurants'; the flooder: a fifth restaurant on"
        f" {flooders} connections (1 thread), no think time, the next request as soon as an"
        " answer (200 or 429) arrives, `Retry-After` ignored.",
        f"- Cases: no flooder (quota {quota}); the fifth restaurant at its ordinary load"
        f" ({KIOSKS_PER_RESTAURANT} kiosks, think time; quota {quota}); flooder with the quota"
        " off; flooder with"
        f" `SLUICEWAY_KNN_TENANT_QUOTA={quota}` (a restaurant's jobs queued or running; an"
        f" ordinary restaurant of {KIOSKS_PER_RESTAURANT} kiosks never has more). {rounds}"
        " rounds.",
        "",
        "| case | round | ordinary requests | ordinary RPS | ordinary failures | p50 ms | p90 ms |"
        " p99 ms | max ms | fifth requests | fifth 200/s | fifth 429 | 429 share |"
        " fifth other failures | server CPU ms/request | wrk CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, results in runs.items():
        for index, r in enumerate(results, 1):
            lines.append(
                f"| {case} | {index} | {r['requests']:.0f} | {r['rps']:.0f} | {r['failures']:.0f} |"
                f" {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} |"
                f" {r['flood_requests']:.0f} | {r['flood_answered_rps']:.0f} |"
                f" {r['flood_429']:.0f} | {100 * r['flood_429_share']:.1f}% |"
                f" {r['flood_other_failures']:.0f} | {r['server_cpu_ms_per_request']:.2f} |"
                f" {100 * r['wrk_cpu_share']:.0f}% |"
            )
    for baseline in ("no flooder", "fifth at its load"):
        base_runs = runs.get(baseline, [])
        if not base_runs:
            continue
        lines += [
            "",
            f'The ordinary restaurants\' latency against "{baseline}", round by round:',
            "",
            "| case | round | p50 ratio | p99 ratio | RPS ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for case in CASES[CASES.index(baseline) + 1 :]:
            for index, (r, base) in enumerate(zip(runs.get(case, []), base_runs, strict=False), 1):
                lines.append(
                    f"| {case} | {index} | {r['p50_ms'] / base['p50_ms']:.2f} |"
                    f" {r['p99_ms'] / base['p99_ms']:.2f} | {r['rps'] / base['rps']:.2f} |"
                )
    lines += [
        "",
        "wrk's CPU share is of the whole machine (all cores), both wrk processes together.",
        "",
        "![ordinary latency and the flooder's answers](flood.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each case, interleaved")
    parser.add_argument("--quota", type=int, default=KIOSKS_PER_RESTAURANT, help="tenant quota")
    parser.add_argument("--flooders", type=int, default=200, help="the flooder's connections")
    parser.add_argument("--out", type=Path, default=OUT, help="where the report goes")
    args = parser.parse_args()
    runs = run_rounds(
        CASES,
        args.rounds,
        lambda case, workdir: measure(case, args.duration, args.quota, args.flooders, workdir),
    )
    out: Path = args.out
    save_results(
        out,
        {
            "duration_s": args.duration,
            "slots": SLOTS,
            "quota": args.quota,
            "flooders": args.flooders,
        },
        runs,
    )
    plot(runs, out / "flood.png")
    text = report(runs, args.duration, args.rounds, args.quota, args.flooders)
    (out / "REPORT.md").write_text(text)


if __name__ == "__main__":
    main()
