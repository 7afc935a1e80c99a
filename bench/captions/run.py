"""Captions benchmark: the batched ceiling, then the server with and without batching, one run.

    python -m bench.captions.run [--duration 90] [--clients 16] [--ceiling-batches 4]

The model has git-base's real size and shapes (``GitConfig()`` defaults, a 30 522-token
vocabulary, CLIP processor at 224) with random weights, built offline once into ``--model-dir``,
so every cost is the real one; random weights never emit the end token, so every title runs to
the token limit (real titles stop earlier: this is the worst case).

- ceiling: ``Captioner.predict_batch`` on batches of ``max_batch`` in a tight loop, no HTTP;
- batched: ``sluiceway serve`` with the default caption policy, ``--clients`` closed-loop clients;
- one at a time: the same server with ``SLUICEWAY_CAPTION_MAX_BATCH=1``.

Writes ``bench/captions/REPORT.md``, ``captions.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import io
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import psutil
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadtest import Server, free_port, machine, stop
from sluiceway.models.base import BatchPolicy
from sluiceway.models.captioner import Captioner, CaptionInput, GitCaptioning
from tests.fixtures.tiny_git import build_base_sized_git

HERE = Path(__file__).resolve().parent
PATH = "/api/v1/predictions"
DEFAULT_MODEL_DIR = Path("~/.cache/sluiceway/bench/git-base-random").expanduser()


@dataclass
class Served:
    """One server run: steady captions/s and latency of the requests that finished in time."""

    name: str
    max_batch: int
    completed: int
    failed: int
    captions_per_s: float
    captions_per_cpu_s: float
    p50_s: float
    p95_s: float
    mean_batch: float


@dataclass
class Ceiling:
    """Captions/s of ``predict_batch`` in a tight loop at one batch size."""

    batch: int
    calls: int
    captions_per_s: float
    captions_per_cpu_s: float
    seconds_per_call: float


@dataclass
class Breakdown:
    """Where a caption's time goes: a per-picture part and a per-token part, per batch size."""

    batch: int
    one_token_s: float
    all_tokens_s: float
    tokens: int

    @property
    def per_step_s(self) -> float:
        return (self.all_tokens_s - self.one_token_s) / (self.tokens - 1)


def photos(count: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Distinct camera-sized JPEGs: smooth colour fields with noise, so decoding costs what
    a photo costs."""
    rng = np.random.default_rng(0)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pictures = []
    for _ in range(count):
        a, b, c = rng.uniform(0.002, 0.03, 3)
        base = np.stack([np.sin(a * x + b * y), np.cos(b * x - c * y), np.sin(c * (x + y))], -1)
        pixels = (base * 100 + 128 + rng.normal(0, 12, (height, width, 3))).clip(0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        pictures.append(buffer.getvalue())
    return pictures


def ensure_model(folder: Path) -> Path:
    if not (folder / "model.safetensors").exists():
        print(f"building a git-base-sized model with random weights in {folder} ...", flush=True)
        build_base_sized_git(folder)
    return folder


def load_captioner(folder: Path, threads: int, max_new_tokens: int) -> Captioner:
    kind = GitCaptioning(
        BatchPolicy(slots=1, max_batch=8),
        source=str(folder),
        threads=threads,
        max_new_tokens=max_new_tokens,
    )
    return asyncio.run(kind.load(None))


def measure_ceiling(
    captioner: Captioner, arrays: list[np.ndarray], batch: int, calls: int
) -> Ceiling:
    captioner.predict_batch(arrays[:batch])  # warm-up: first call of a shape
    started, cpu = time.perf_counter(), time.process_time()
    for call in range(calls):
        start = (call * batch) % len(arrays)
        chunk = (arrays + arrays)[start : start + batch]
        captioner.predict_batch(chunk)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    captions = batch * calls
    return Ceiling(batch, calls, captions / elapsed, captions / cpu, elapsed / calls)


def measure_breakdown(
    folder: Path, threads: int, arrays: list[np.ndarray], ceilings: list[Ceiling], tokens: int
) -> list[Breakdown]:
    """Time ``generate`` with one new token at each ceiling's batch size; the ceilings' own
    calls are the all-tokens times."""
    one = load_captioner(folder, threads, 1)
    rows = []
    for ceiling in ceilings:
        chunk = arrays[: ceiling.batch]
        one.predict_batch(chunk)
        started = time.perf_counter()
        one.predict_batch(chunk)
        rows.append(
            Breakdown(
                ceiling.batch, time.perf_counter() - started, ceiling.seconds_per_call, tokens
            )
        )
    return rows


@dataclass
class Outcome:
    """What the callers of one served run saw."""

    finishes: list[float]  # seconds from the start, successes within the duration
    latencies: list[float]  # every success
    failed: int


async def closed_loop(port: int, bodies: list[bytes], clients: int, duration_s: float) -> Outcome:
    """``clients`` callers, each sending its next request as soon as the last is answered,
    until ``duration_s`` has passed; the requests in flight then are still awaited."""
    outcome = Outcome([], [], 0)
    limits = httpx.Limits(max_connections=clients)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        started = time.perf_counter()

        async def caller(index: int) -> None:
            sent = 0
            while time.perf_counter() - started < duration_s:
                body = bodies[(index + sent * clients) % len(bodies)]
                sent += 1
                begin = time.perf_counter()
                response = await http.post(PATH, content=body)
                end = time.perf_counter()
                if response.status_code != 200:
                    outcome.failed += 1
                    continue
                outcome.latencies.append(end - begin)
                if end - started <= duration_s:
                    outcome.finishes.append(end - started)

        await asyncio.gather(*(caller(i) for i in range(clients)))
    return outcome


def steady_rate(finishes: list[float]) -> float:
    """Completions per second after the first one, up to the last: batches finish in bursts,
    so counting whole bursts between two burst ends gives the steady rate."""
    finishes = sorted(finishes)
    if len(finishes) < 2:
        return 0.0
    first = finishes[0]
    later = [t for t in finishes if t > first + 0.5]
    return len(later) / (finishes[-1] - first) if later else 0.0


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def serve_and_load(
    name: str,
    folder: Path,
    max_batch: int,
    args: argparse.Namespace,
    bodies: list[bytes],
) -> Served:
    """Start ``sluiceway serve`` on the model, load it with closed-loop clients, stop it."""
    port = free_port()
    env = {
        "SLUICEWAY_CAPTION_MODEL": str(folder),
        "SLUICEWAY_CAPTION_MAX_BATCH": str(max_batch),
        "SLUICEWAY_CAPTION_THREADS": str(args.threads),
        "SLUICEWAY_CAPTION_MAX_NEW_TOKENS": str(args.tokens),
        "SLUICEWAY_CAPTION_MAX_QUEUE": str(max(32, 2 * args.clients)),
        "SLUICEWAY_REQUEST_TIMEOUT_S": "900",
        "SLUICEWAY_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "sluiceway", "serve", "--port", str(port)]
    process = Server(name, command, port, env).start()
    try:
        httpx.post(f"http://127.0.0.1:{port}{PATH}", content=bodies[0], timeout=900)  # load it
        print(f"{name}: {args.clients} clients for {args.duration:.0f} s ...", flush=True)
        server = psutil.Process(process.pid)
        cpu = sum(server.cpu_times()[:2])
        outcome = asyncio.run(closed_loop(port, bodies, args.clients, args.duration))
        cpu = sum(server.cpu_times()[:2]) - cpu
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        stop(process)
    latencies = sorted(outcome.latencies)
    count = metric_value(text, 'sluiceway_batch_size_count{model="caption"}')
    total = metric_value(text, 'sluiceway_batch_size_sum{model="caption"}')
    return Served(
        name=name,
        max_batch=max_batch,
        completed=len(latencies),
        failed=outcome.failed,
        captions_per_s=steady_rate(outcome.finishes),
        captions_per_cpu_s=len(latencies) / cpu if cpu else 0.0,
        p50_s=statistics.median(latencies) if latencies else 0.0,
        p95_s=latencies[int(0.95 * (len(latencies) - 1))] if latencies else 0.0,
        mean_batch=total / count if count else 0.0,
    )


def plot(ceilings: list[Ceiling], served: list[Served], path: Path) -> None:
    """Throughput per wall second and per CPU second, and latency of the served runs."""
    figure, (rates, latency) = plt.subplots(1, 2, figsize=(12, 4.4))
    names = [f"ceiling\nbatch {c.batch}" for c in ceilings] + [f"served\n{s.name}" for s in served]
    wall = [c.captions_per_s for c in ceilings] + [s.captions_per_s for s in served]
    cpu = [c.captions_per_cpu_s for c in ceilings] + [s.captions_per_cpu_s for s in served]
    x = np.arange(len(names))
    for offset, values, label in ((-0.2, wall, "per wall second"), (0.2, cpu, "per CPU second")):
        bars = rates.bar(x + offset, values, 0.4, label=label)
        rates.bar_label(bars, fmt="%.2f", fontsize=8)
    rates.set_xticks(x, names)
    rates.set_ylabel("captions")
    rates.set_title("Throughput, git-base size on CPU")
    rates.legend()
    x = np.arange(len(served))
    p50 = latency.bar(x - 0.2, [s.p50_s for s in served], 0.4, label="p50")
    p95 = latency.bar(x + 0.2, [s.p95_s for s in served], 0.4, label="p95")
    latency.bar_label(p50, fmt="%.1f")
    latency.bar_label(p95, fmt="%.1f")
    latency.set_xticks(x, [s.name for s in served])
    latency.set_ylabel("seconds")
    latency.set_title("Latency under the closed-loop load")
    latency.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(
    args: argparse.Namespace,
    ceilings: list[Ceiling],
    served: list[Served],
    breakdown: list[Breakdown],
    load: tuple[float, float],
) -> str:
    """The markdown report of one run."""
    single_ceiling, top = ceilings
    batched, single = served
    rows = [
        f"| ceiling, batch {c.batch} (no HTTP) | {c.captions_per_s:.3f} | "
        f"{c.captions_per_cpu_s:.3f} | {c.seconds_per_call:.2f} s per call | {c.calls} calls |"
        for c in ceilings
    ] + [
        f"| served, {s.name} (max_batch={s.max_batch}) | {s.captions_per_s:.3f} | "
        f"{s.captions_per_cpu_s:.3f} | p50 {s.p50_s:.1f} s, p95 {s.p95_s:.1f} s | "
        f"mean batch {s.mean_batch:.1f}; {s.completed} ok, {s.failed} failed |"
        for s in served
    ]
    split = "\n".join(
        f"| {b.batch} | {b.one_token_s:.2f} s | {b.one_token_s / b.batch:.3f} s | "
        f"{b.per_step_s * 1000:.0f} ms | {b.per_step_s * 1000 / b.batch:.1f} ms |"
        for b in breakdown
    )

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "n/a"

    table = "\n".join(rows)
    return f"""# Captions benchmark

Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Machine: {machine()}.
Load average (1 min) before / after the run: {load[0]:.1f} / {load[1]:.1f}. {args.note}

Model: git-base's size and shapes (`GitConfig()` defaults, 177 M parameters, CLIP processor at
224, 30 522-token vocabulary), random weights, built offline; random weights never emit the end
token, so every title runs to the limit ({args.tokens} new tokens, greedy): the worst case.
torch threads: {args.threads}, one compute slot, max_batch {args.max_batch}. Pictures: 640×480
JPEGs sent as data URLs. Served runs: {args.clients} closed-loop clients for {args.duration:.0f} s
each; captions/s counts whole batches between the first and the last completion (steady state).
Captions per CPU second divide every caption answered by the server process's CPU time (HTTP,
decoding and model), or the loop's for the ceiling: on a shared machine it is the steadier
measure of the work a caption costs.

| run | captions / wall s | captions / CPU s | time | notes |
| --- | ---: | ---: | --- | --- |
{table}

## Against the targets

| ratio | per wall second | per CPU second | target |
| --- | ---: | ---: | ---: |
| served batched / batched ceiling | {ratio(batched.captions_per_s, top.captions_per_s)} \
| {ratio(batched.captions_per_cpu_s, top.captions_per_cpu_s)} | ≥ 0.8 |
| served batched / served one at a time | {ratio(batched.captions_per_s, single.captions_per_s)} \
| {ratio(batched.captions_per_cpu_s, single.captions_per_cpu_s)} | ≥ 2 |
| ceiling batch {top.batch} / ceiling batch 1 (the most batching can give) \
| {ratio(top.captions_per_s, single_ceiling.captions_per_s)} \
| {ratio(top.captions_per_cpu_s, single_ceiling.captions_per_cpu_s)} | |

## Where the time goes

`generate` with 1 new token (vision encoder over 197 patches, then the text decoder's prefill
over them) against {args.tokens} new tokens, at batch 1 and {top.batch}:

| batch | 1-token call | per picture | each further token | per picture |
| ---: | ---: | ---: | ---: | ---: |
{split}

The 1-token part is dense compute (about 50 GFLOP a picture at 224×224) that a batch does not
share on a CPU; only the decoding steps, each reading the whole decoder, get cheaper per picture
in a batch. The ceiling ratio above is therefore the most batching can buy on this hardware.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=90.0, help="seconds per served run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--ceiling-batches", type=int, default=4, help="calls of the ceiling loop")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--note", default="", help="added to the report (e.g. shared machine)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    folder = ensure_model(args.model_dir)
    pictures = photos(16)
    shape = CaptionInput()
    arrays = [shape.prepare(Image.open(io.BytesIO(p)).convert("RGB")) for p in pictures]
    bodies = [
        json.dumps({"image": "data:image/jpeg;base64," + base64.b64encode(p).decode()}).encode()
        for p in pictures
    ]

    print("ceiling ...", flush=True)
    captioner = load_captioner(folder, args.threads, args.tokens)
    ceilings = [
        measure_ceiling(captioner, arrays, 1, args.ceiling_batches),
        measure_ceiling(captioner, arrays, args.max_batch, args.ceiling_batches),
    ]
    del captioner
    print("breakdown ...", flush=True)
    breakdown = measure_breakdown(folder, args.threads, arrays, ceilings, args.tokens)
    served = [
        serve_and_load("batched", folder, args.max_batch, args, bodies),
        serve_and_load("one at a time", folder, 1, args, bodies),
    ]
    load_after = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    plot(ceilings, served, args.out / "captions.png")
    text = report(args, ceilings, served, breakdown, (load_before, load_after))
    (args.out / "REPORT.md").write_text(text)
    results = {
        "ceilings": [asdict(c) for c in ceilings],
        "served": [asdict(s) for s in served],
        "breakdown": [{**asdict(b), "per_step_s": b.per_step_s} for b in breakdown],
        "load_average": [load_before, load_after],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
