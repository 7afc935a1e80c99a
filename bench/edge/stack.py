"""What the edge's limits cost on the kiosk path: one Locust kiosk load, four HTTP stacks.

    python -m bench.edge.stack [--duration 60]

- ``uvicorn-httptools``: the stack before the edge limits (no header, time or connection
  limits); the baseline.
- ``sluiceway``: ``sluiceway serve``, httptools with ``EdgeProtocol`` (``sluiceway/edge.py``).
- ``uvicorn-h11``: what uvicorn alone offers: the h11 parser (whose incomplete-event limit does
  bound the header size) and ``--limit-concurrency`` (503 without Retry-After); still no header
  or body timeout.
- ``ceiling``: the kiosk benchmark's do-nothing server, to tell the machine's state.

Writes ``bench/edge/stack.json``; ``bench/edge/REPORT.md`` quotes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from bench.kiosk.run import measure
from bench.loadtest import Server, free_port, machine

HERE = Path(__file__).resolve().parent


def servers() -> list[Server]:
    """The stacks, each serving the same app with the same settings."""
    python = sys.executable
    quiet = {"SLUICEWAY_LOG_LEVEL": "WARNING"}
    uvicorn = [python, "-m", "uvicorn", "sluiceway.app:create_app", "--factory"]
    common = ["--loop", "uvloop", "--no-access-log", "--backlog", "4096", "--log-level", "warning"]
    stacks = []
    p = free_port()
    stacks.append(
        Server("uvicorn-httptools", [*uvicorn, *common, "--http", "httptools", "--port", str(p)], p)
    )
    p = free_port()
    stacks.append(Server("sluiceway", [python, "-m", "sluiceway", "serve", "--port", str(p)], p))
    p = free_port()
    h11 = ["--http", "h11", "--h11-max-incomplete-event-size", "32768"]
    h11 += ["--limit-concurrency", "1024"]
    stacks.append(Server("uvicorn-h11", [*uvicorn, *common, *h11, "--port", str(p)], p))
    p = free_port()
    stacks.append(
        Server("ceiling", [python, "-m", "bench.kiosk.servers", "ceiling", "--port", str(p)], p)
    )
    for server in stacks:
        server.env.update(quiet)
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=60, help="seconds per stack and round")
    parser.add_argument("--rounds", type=int, default=2, help="each stack this many times, in turn")
    parser.add_argument("--only", nargs="*", help="run only these stacks, in this order")
    parser.add_argument("--out", default="stack.json", help="file name in bench/edge")
    args = parser.parse_args()
    workdir = HERE / "runs" / time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, list[dict[str, float]]] = {}
    stacks = [s for s in servers() if not args.only or s.name in args.only]
    if args.only:  # in the order given: alternate it between runs to tell order from effect
        stacks.sort(key=lambda server: args.only.index(server.name))
    for round_ in range(args.rounds):
        for server in stacks:
            if server.name == "ceiling" and round_:
                continue  # it only tells the machine's state; once is enough
            run = measure(server, server.name != "ceiling", args.duration, workdir / str(round_))
            result = run["result"]
            results.setdefault(server.name, []).append(
                {
                    "rps_steady": result.rps_steady,
                    "p50_ms": result.p50_ms,
                    "p99_ms": result.p99_ms,
                    "failures": result.failures,
                    "rss_peak_mb": run["rss_peak_mb"],
                    "server_cpu_ms_per_request": run["server_cpu_ms_per_request"],
                }
            )
    out: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": machine(),
    }
    out |= {"duration_s": args.duration, "rounds": results}
    (HERE / args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
