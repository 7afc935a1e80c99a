"""Adding workers adds capacity: 1, 2 and 4 split-mode workers under a load that saturates them.

    python -m bench.scaleout.workers [--seconds 20] [--counts 1,2,4] [--shared] [--random-names]
                                     [--before DIR]

Each worker has 8 compute slots for the KNN (``SLUICEWAY_KNN_SLOTS=8``) and the seed's cost
model (a call of n queries sleeps 0.15 + 0.05·n s, a fit 2 s), so the work is bound by slots,
not by this machine's 2 cores. The load is a closed loop of kiosks, 250 per worker (the kiosk
benchmark's 250 saturate one worker's 8 slots; ``wrk`` with ``bench/burst/kiosk.lua``, light on
CPU), the requests spread evenly over the kiosk's 5 restaurants. With
N workers and 5 restaurants, some worker owns more restaurants than the others: the load
counts as "adding capacity" only if a saturated owner's backlog is served elsewhere too
(a second consumer of its partition, ``split/helping.py``). Each count runs twice, with
help (the default) and without (``SLUICEWAY_WORKER_HELP_AFTER_S=0``), on fresh servers whose
workers have the same names (``SLUICEWAY_WORKER_ID``), so both split the restaurants alike.

With ``--before DIR`` (a checkout of an earlier commit, e.g. made with ``git worktree add``),
each run with help is also made on that tree's servers, right before the same run on this
tree's: a change to the helping rule is measured against the old one in the same go.

Measured per run, over the steady window after every model is fitted and ownership settled:
requests per second, that RPS over N times the one-worker RPS (the target is ≥ 0.9), the
mean KNN batch size (every batch holds one restaurant's queries) and the partitions the
workers helped. Writes a section of REPORT.md, workers.png and the ``workers`` entry of
results.json beside this file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.burst.run import run_wrk, wrk_result
from bench.kiosk.scenario import training_sets
from bench.loadtest import machine
from bench.scaleout.run import HERE, WORKERS_MARK, _body, redis_server, sluiceway

SLOTS = 8
CLIENTS_PER_WORKER = 250
WARM_S = 6.0  # every restaurant fitted (2 s) and the helpers' fits paid before measuring
SLOT_SETTINGS = {"SLUICEWAY_KNN_SLOTS": str(SLOTS), "SLUICEWAY_WORKER_PREFETCH": "256"}
MARK = WORKERS_MARK


@dataclass
class Run:
    """One cluster size, with or without help."""

    workers: int
    help: bool
    clients: int
    rps: float
    requests: int
    failures: int
    mean_batch: float
    helped: float
    split: str
    """Restaurants fitted per worker before the load: how ownership fell."""
    failure_kinds: str = ""
    """wrk's count of each kind of failure (not 200, timed out, read or connect errors)."""
    tree: str = ""
    """The source tree the servers ran: empty for this one, else the ``--before`` label."""
    per_worker: str = ""
    """Each worker's mean KNN batch in the window, with the restaurants it fitted by the end
    (its own, plus any it fitted as a second consumer), busiest first: "batch (fits)"."""


def _metrics_port(port: int) -> int:
    """Where a worker asked for ``port`` answers: the next free port above, if it was taken."""
    for candidate in range(port, port + 8):
        try:
            response = httpx.get(f"http://127.0.0.1:{candidate}/metrics", timeout=5)
        except httpx.HTTPError:
            continue
        if "sluiceway_batch_size" in response.text:
            return candidate
    raise RuntimeError(f"no worker metrics at or above port {port}")


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    wanted = {
        "batch_sum": r'^sluiceway_batch_size_sum\{model="knn"\} (\S+)',
        "batch_count": r'^sluiceway_batch_size_count\{model="knn"\} (\S+)',
        "helped": r"^sluiceway_partitions_helped_total (\S+)",
        "fits": r'^sluiceway_model_loads_total\{model="knn"\} (\S+)',
    }
    found = {}
    for name, pattern in wanted.items():
        match = re.search(pattern, text, re.MULTILINE)
        found[name] = float(match.group(1)) if match else 0.0
    return found


def _totals(scrapes: list[dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for scrape in scrapes:
        for name, value in scrape.items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def _per_worker(before: list[dict[str, float]], after: list[dict[str, float]]) -> str:
    """Each worker's mean batch over the window and its fits by the end, busiest first.

    Every KNN call holds one restaurant's queries, so a worker's mean batch is the mean over
    the restaurants it served; its fits say how many it served (as owner or helper)."""
    rows = []
    for old, new in zip(before, after, strict=True):
        ran, calls = new["batch_sum"] - old["batch_sum"], new["batch_count"] - old["batch_count"]
        rows.append((ran, ran / max(calls, 1), int(new["fits"])))
    rows.sort(reverse=True)
    return ", ".join(f"{batch:.1f} ({fits})" for _, batch, fits in rows)


def _load(port: int, clients: int, warm_s: float, seconds: float, ports: list[int]) -> Run:
    """``clients`` wrk kiosks (a closed loop, 10-20 ms of think time) for warm + seconds;
    what the workers ran in the last ``seconds`` is the throughput."""
    restaurants = training_sets()
    ports = sorted({_metrics_port(p) for p in ports})
    for restaurant in restaurants:  # fit every restaurant once, on its owner
        httpx.post(f"http://127.0.0.1:{port}/classify", json=_body(restaurant), timeout=60)
    fits = sorted((int(_scrape(p)["fits"]) for p in ports), reverse=True)
    lines = [json.dumps(_body(restaurants[i % len(restaurants)])) for i in range(500)]
    with tempfile.TemporaryDirectory() as workdir:
        wrk = run_wrk(port, lines, int(warm_s + seconds + 1), clients, Path(workdir))
        time.sleep(warm_s)
        scraped, began = [_scrape(p) for p in ports], time.monotonic()
        time.sleep(seconds)
        ended, elapsed = [_scrape(p) for p in ports], time.monotonic() - began
        result = wrk_result(wrk)
    before, after = _totals(scraped), _totals(ended)
    batches = after["batch_count"] - before["batch_count"]
    ran = after["batch_sum"] - before["batch_sum"]
    return Run(
        workers=len(ports),
        help=True,
        clients=clients,
        rps=ran / elapsed,
        requests=int(ran),
        failures=int(sum(result[k] for k in ("not_200", "timeout", "read", "connect"))),
        mean_batch=ran / max(batches, 1),
        helped=after["helped"],
        split="+".join(map(str, fits)),
        per_worker=_per_worker(scraped, ended),
        failure_kinds=", ".join(
            f"{kind} {int(result[kind])}"
            for kind in ("not_200", "timeout", "read", "connect")
            if result.get(kind)
        )
        + (f" (first statuses:{result['other_statuses']})" if result.get("other_statuses") else ""),
    )


def measure(
    url: str, workers: int, help: bool, seconds: float, named: bool, before: Path | None = None
) -> Run:
    tree = _label(before) if before else ""
    # A fresh namespace per run, even when a size is measured again in the same go.
    prefix = f"workers{workers}{'help' if help else ''}{tree}-{uuid.uuid4().hex[:6]}"
    settings = {**SLOT_SETTINGS, "SLUICEWAY_BROKER_PREFIX": prefix}
    if not help:
        settings["SLUICEWAY_WORKER_HELP_AFTER_S"] = "0"
    with sluiceway(url, settings, workers=workers, named=named, source=before) as cluster:
        clients = CLIENTS_PER_WORKER * workers
        run = _load(cluster.port, clients, WARM_S, seconds, cluster.worker_ports)
    run.help, run.tree = help, tree
    print(run, flush=True)
    return run


def _label(tree: Path) -> str:
    """The commit a source tree is checked out at (short), or its folder's name."""
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return tree.name
    return head.stdout.strip()


def plot(runs: list[Run], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    one = next(r.rps for r in runs if r.workers == 1 and r.help and not r.tree)
    trees = sorted({r.tree for r in runs if r.tree})
    lines = [(True, "", "o-"), (False, "", "s--"), *((True, t, "^:") for t in trees)]
    for help, tree, style in lines:
        # One worker has no one to help: its run starts every line.
        chosen = [r for r in runs if r.tree == tree and (r.help == help or r.workers == 1)]
        label = "second consumers on" if help else "one owner per partition"
        label += f" ({tree}, before)" if tree else ""
        left.plot([r.workers for r in chosen], [r.rps for r in chosen], style, label=label)
        right.plot([r.workers for r in chosen], [r.mean_batch for r in chosen], style, label=label)
    counts = sorted({r.workers for r in runs})
    target = [0.9 * n * one for n in counts]
    left.plot(counts, target, ":", color="grey", label="0.9 × N × 1 worker")
    left.set(xlabel="workers", ylabel="requests / s", title=f"{SLOTS} KNN slots per worker")
    right.set(xlabel="workers", ylabel="queries per KNN call", title="mean batch (one restaurant)")
    for axis in (left, right):
        axis.set_xticks(counts)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def section(runs: list[Run], seconds: float, shared: bool, named: bool) -> str:
    one = next(r.rps for r in runs if r.workers == 1 and r.help and not r.tree)
    lines = [
        f"{MARK} (8 KNN slots per worker)",
        "",
        f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} on {machine()} by "
        "`python -m bench.scaleout.workers`: an API node, N workers and redis-server with a",
        f"closed loop of {CLIENTS_PER_WORKER} kiosks per worker (5 restaurants), "
        f"{seconds:g} s measured after {WARM_S:g} s of warm-up, per run."
        + (" Other work shared the machine during this run." if shared else ""),
        "Each worker has 8 KNN slots and a read-ahead of 256 jobs; the seed's cost model.",
        "",
        "| workers | second consumers | source | restaurants per worker | kiosks | RPS "
        "| RPS / (N × 1 worker) | mean batch | per worker: batch (restaurants fitted) "
        "| partitions helped | failures |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        ratio = r.rps / (r.workers * one)
        source = f"{r.tree} (before)" if r.tree else "this tree"
        lines.append(
            f"| {r.workers} | {'on' if r.help else 'off'} | {source} | {r.split} | {r.clients} "
            f"| {r.rps:.0f} "
            f"| **{ratio:.2f}** | {r.mean_batch:.1f} | {r.per_worker} | {r.helped:.0f} "
            f"| {r.failures} |"
        )
    lines += [
        "",
        "Target: RPS ≥ 0.9 × N × the one-worker RPS (this tree's). wrk hands the requests to the",
        "restaurants in turn, so each restaurant gets the same share of the requests and a",
        "worker owning more of them than its share of slots holds every kiosk back: without",
        "second consumers the busiest owner caps the cluster and the others' batches run",
        "nearly empty.",
        (
            "The workers are named worker-0, worker-1, ... in every run, so the runs with and "
            "without help split the restaurants the same way."
            if named
            else "Ownership falls anew in each run (fresh worker names), so the runs with and "
            "without help may split the restaurants differently (the column says how)."
        ),
        "Per worker: its mean batch in the window and, in brackets, the restaurants it had "
        "fitted by the end (its own, and those it helped with); busiest first. Every KNN call "
        "holds one restaurant, so a worker's mean batch is over the restaurants it served.",
    ]
    failed = [r for r in runs if r.failure_kinds]
    for r in failed:
        help = "on" if r.help else "off"
        lines.append(f"Failures with {r.workers} workers, help {help}: {r.failure_kinds}.")
    lines += ["", "![workers](workers.png)", ""]
    return "\n".join(lines)


def _write(runs: list[Run], seconds: float, shared: bool, named: bool) -> None:
    report = HERE / "REPORT.md"
    text = report.read_text()
    if MARK in text:
        text = text[: text.index(MARK)].rstrip() + "\n"
    report.write_text(text + "\n" + section(runs, seconds, shared, named))
    results = HERE / "results.json"
    data = json.loads(results.read_text()) if results.exists() else {}
    data["workers"] = [asdict(r) for r in runs]
    results.write_text(json.dumps(data, indent=1))
    plot(runs, HERE / "workers.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per run")
    parser.add_argument("--counts", default="1,2,4", help="cluster sizes")
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs without help")
    parser.add_argument("--shared", action="store_true", help="say other work shared the CPU")
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout of an earlier commit: each run with help is made on its servers too",
    )
    parser.add_argument(
        "--random-names",
        action="store_true",
        help="fresh random worker names per run (by default worker-0, worker-1, ...: the runs "
        "with and without help then split the restaurants the same way)",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    named = not args.random_names
    runs = []
    with redis_server() as (url, _):
        for workers in counts:
            if args.before is not None:
                runs.append(measure(url, workers, True, args.seconds, named, args.before))
            runs.append(measure(url, workers, True, args.seconds, named))
            if workers > 1 and not args.no_baseline:
                runs.append(measure(url, workers, False, args.seconds, named))
    _write(runs, args.seconds, args.shared, named)
    print(section(runs, args.seconds, args.shared, named))


if __name__ == "__main__":
    main()
