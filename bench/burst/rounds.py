"""Rounds of grouped kiosks at a few slots: what the convoy and flood benchmarks share.

Each round runs every case (a server, or a server setting) on a freshly started server, one
case after the other, so the cases of one round meet the same state of a shared machine. Under
each server, every restaurant is a ``wrk`` of its own, so a restaurant's requests in flight are
its kiosks' connections, as in life: one ``wrk`` over all restaurants would hand each request
the next restaurant's body. Each benchmark keeps its own cases, measure, plot and report.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.burst.run import bodies, run_wrk

Runs = dict[str, list[dict[str, float]]]  # case -> its result in each round


def run_rounds(
    cases: list[str], rounds: int, measure: Callable[[str, Path], dict[str, float]]
) -> Runs:
    """``measure(case, workdir)`` for every case in turn, ``rounds`` times; each result printed
    as it comes, so a long run shows its progress."""
    runs: Runs = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for case in cases:
                print(f"{case} ...", flush=True)
                result = measure(case, Path(tmp))
                runs[case].append(result)
                print(json.dumps(result), flush=True)
    return runs


def save_results(out: Path, settings: dict[str, object], runs: Runs) -> None:
    """``out/results.json``: the date (UTC, to the minute), then ``settings``, then the runs."""
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        **settings,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def report_date() -> str:
    """The date line's value in a report: now, UTC, to the minute."""
    return f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} UTC"


def folder(workdir: Path, name: str) -> Path:
    """A folder of its own for one ``wrk``: ``run_wrk`` names its bodies file by connections and
    think time only, so two ``wrk`` of one shape in one folder would share (and rewrite) it."""
    path = workdir / name
    path.mkdir(exist_ok=True)
    return path


def wrk_per_restaurant(
    port: int,
    restaurants: list[list[list[int]]],
    duration_s: int,
    kiosks: int,
    workdir: Path,
    label: str,
) -> list[subprocess.Popen[str]]:
    """One ``wrk`` (1 thread, ``kiosks`` connections, think time) per restaurant, started now;
    each in its folder ``{label}-{index}`` of ``workdir``."""
    return [
        run_wrk(
            port,
            bodies([training]),
            duration_s,
            kiosks,
            folder(workdir, f"{label}-{index}"),
            threads=1,
        )
        for index, training in enumerate(restaurants)
    ]
