"""The pipelined line beside redis-py (hiredis parser, pipelining) on split mode's hot paths.

    python -m bench.line.run [--commands 20000] [--rounds 3]

Issue 17 asked whether the hand-written ``RedisLine`` (``split/line.py``) still earns its
place: if redis-py's asyncio client, with hiredis and pipelining, comes within 10 % of it,
drop the line. Both clients do the same work against one local redis-server, on uvloop as
the servers run:

1. Admissions: ``k`` ADMIT script calls (a 200-byte job each) written together, as the API
   node writes a loop turn's admissions, for k = 1, 8 and 64.
2. Replies: messages on a Pub/Sub channel, handed to a callback (the line's subscriber) or
   read by redis-py's ``PubSub`` reader, as the API node takes its answers.

What counts is the client's CPU per command (``time.process_time``), since CPU per request is
what split mode is held to and it does not depend on what else the machine runs; wall time is
reported beside it. The figure per case is the median of the rounds. Writes REPORT.md,
results.json and line.png beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import matplotlib
import uvloop

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadtest import machine
from bench.scaleout.run import redis_server
from sluiceway.split.connection import connect
from sluiceway.split.line import RedisLine, pack
from sluiceway.split.scripts import ADMIT

HERE = Path(__file__).resolve().parent
BATCHES = (1, 8, 64)
JOB = b"x" * 200
BOUND = 10**9


async def _timed(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    await work()
    return time.process_time() - cpu, time.perf_counter() - wall


async def admissions(url: str, client: str, k: int, commands: int) -> tuple[float, float]:
    """CPU and wall µs per ADMIT call, ``k`` written together."""
    redis = connect(url)
    await ADMIT.load(redis)
    stream, queued = f"bench:jobs:{client}:{k}", f"bench:queued:{client}:{k}"
    turns = commands // k
    line = await RedisLine.open(url)

    async def by_line() -> None:
        for _ in range(turns):
            calls = b"".join(ADMIT.call([stream, queued], [BOUND, JOB]) for _ in range(k))
            await line.send(calls, k)

    async def by_redis_py() -> None:
        for _ in range(turns):
            if k == 1:
                await redis.evalsha(ADMIT.sha, 2, stream, queued, BOUND, JOB)
                continue
            async with redis.pipeline(transaction=False) as pipe:
                for _ in range(k):
                    pipe.evalsha(ADMIT.sha, 2, stream, queued, BOUND, JOB)
                await pipe.execute()

    await (by_line if client == "line" else by_redis_py)()  # warm up: connections, caches
    cpu, wall = await _timed(by_line if client == "line" else by_redis_py)
    await redis.delete(stream, queued)
    line.close()
    await redis.aclose()
    return cpu / (turns * k) * 1e6, wall / (turns * k) * 1e6


async def replies(url: str, client: str, messages: int) -> tuple[float, float]:
    """CPU and wall µs per Pub/Sub message received (the publisher's cost taken out)."""
    channel = f"bench:reply:{client}"
    publisher = await RedisLine.open(url)
    message = pack("PUBLISH", channel, JOB)
    got = 0
    done = asyncio.get_running_loop().create_future()

    def count(reply: Any) -> None:
        nonlocal got
        if isinstance(reply, list) and reply[0] == b"message":
            got += 1
            if got == messages and not done.done():
                done.set_result(None)

    async def publish() -> None:
        for start in range(0, messages, 64):
            n = min(64, messages - start)
            await publisher.send(message * n, n)

    cpu_publish, _ = await _timed(publish)  # what publishing alone costs this process
    if client == "line":
        subscriber = await RedisLine.open(url, on_push=count)
        subscriber.write(pack("SUBSCRIBE", channel))
        await asyncio.sleep(0.2)

        async def receive() -> None:
            await asyncio.gather(publish(), done)

        cpu, wall = await _timed(receive)
        subscriber.close()
    else:
        redis = connect(url)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)
        await asyncio.sleep(0.2)

        async def listen() -> None:
            async for item in pubsub.listen():
                count([b"message", channel.encode(), item["data"]])
                if got == messages:
                    return

        async def receive() -> None:
            await asyncio.gather(publish(), listen())

        cpu, wall = await _timed(receive)
        # redis-py leaves PubSub.aclose unannotated; its annotated aliases are deprecated.
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()
    publisher.close()
    return (cpu - cpu_publish) / messages * 1e6, wall / messages * 1e6


async def measure(url: str, commands: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for client in ("line", "redis-py"):
            for k in BATCHES:
                cpu, wall = await admissions(url, client, k, commands)
                case = results.setdefault(f"admit x{k}", {})
                case.setdefault(f"{client} cpu", []).append(cpu)
                case.setdefault(f"{client} wall", []).append(wall)
            cpu, wall = await replies(url, client, commands)
            case = results.setdefault("replies", {})
            case.setdefault(f"{client} cpu", []).append(cpu)
            case.setdefault(f"{client} wall", []).append(wall)
    return results


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    lines = [
        "# The pipelined line beside redis-py on split mode's hot paths",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {args.commands} "
        f"commands per case, median of {args.rounds} rounds, uvloop, redis-py with hiredis.",
        "The machine was shared with other work; client CPU per command does not depend on it,",
        "wall time does.",
        "",
        "| case | line CPU µs | redis-py CPU µs | **redis-py / line** | line wall µs "
        "| redis-py wall µs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case, values in results.items():
        m = {name: statistics.median(v) for name, v in values.items()}
        lines.append(
            f"| {case} | {m['line cpu']:.1f} | {m['redis-py cpu']:.1f} "
            f"| **{m['redis-py cpu'] / m['line cpu']:.2f}** | {m['line wall']:.1f} "
            f"| {m['redis-py wall']:.1f} |"
        )
    lines += ["", "![line beside redis-py](line.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, list[float]]], path: Path) -> None:
    cases = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    for offset, client in ((-width / 2, "line"), (width / 2, "redis-py")):
        values = [statistics.median(results[case][f"{client} cpu"]) for case in cases]
        ax.bar([i + offset for i in range(len(cases))], values, width, label=client)
    ax.set_xticks(range(len(cases)), cases)
    ax.set_ylabel("client CPU per command (µs)")
    ax.set_title("Split mode's hot paths: pipelined line vs redis-py")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with redis_server() as (url, _pid):
        results = uvloop.run(measure(url, args.commands, args.rounds))
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    (HERE / "REPORT.md").write_text(report(results, args))
    plot(results, HERE / "line.png")
    print((HERE / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
