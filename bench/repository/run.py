"""Model repository benchmark: runtime loads beside steady traffic, and the cache budget in RSS.

    python -m bench.repository.run [--phase-s 15] [--rounds 2] [--clients 8]

1. Control under load. A steady closed loop of ``--clients`` callers on a repository tensor
   model (a small MLP) runs in alternating phases on one server: quiet (the baseline) and churn,
   where another repository model (the packaged MobileNetV2, 14 MB, as a classifier) is loaded
   and unloaded over and over through the management API. Reported: p50/p99 and failures per
   phase; the churn's p99 against the quiet phases' of the same run.
2. Memory. Ten copies of MobileNetV2 in a repository whose files add up to more than the cache
   budget, called round-robin; the same server with an empty repository gives the process's
   fixed size in the same go. Reported: peak RSS against budget + fixed size, loads, evictions.
3. The arena's price. Repository models run without ONNX Runtime's CPU memory arena (so an
   evicted model's memory can go back to the system); CPU per image of the packaged MobileNetV2
   and per row of the MLP, with and without the arena, at batch 1 and 8, interleaved in this
   process.

Writes ``bench/repository/REPORT.md``, ``repository.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadtest import ProcessWatch, Server, free_port, machine, stop
from sluiceway.models.onnx_classifier import imagenet_labels, imagenet_model_path

HERE = Path(__file__).resolve().parent
TOKEN = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MLP_CONFIG = """platform = "onnx"
max_batch_size = 64
instances = 2
[[inputs]]
name = "x"
datatype = "FP32"
dims = [256]
[[outputs]]
name = "y"
datatype = "FP32"
dims = [16]
[warmup]
"""
CLASSIFIER_CONFIG = """platform = "onnx"
labels = "labels.txt"
max_batch_size = 8
[image]
size = 224
resize = 256
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
"""


@dataclass
class Phase:
    """One phase of the steady loop."""

    name: str
    requests: int = 0
    failures: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rps: float = 0.0
    control_ops: int = 0


@dataclass
class ArenaCost:
    """CPU per item of one session with and without the arena, at one batch size."""

    model: str
    batch: int
    arena_ms: float
    lean_ms: float


@dataclass
class Memory:
    """The round-robin over ten models, and the fixed size it is measured against."""

    budget_mb: float
    fixed_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    final_rss_mb: float = 0.0
    calls: int = 0
    failures: int = 0
    loads: float = 0.0
    evictions: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)


def mlp(path: Path) -> None:
    """A 256 → 1024 → 16 MLP with a dynamic batch axis (about 1 MB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(256, 1024)).astype(np.float32) / 16
    w2 = rng.normal(size=(1024, 16)).astype(np.float32) / 32
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def classifier_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    shutil.copy(imagenet_model_path(), folder / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(imagenet_labels()) + "\n")
    (folder / "config.toml").write_text(CLASSIFIER_CONFIG)


def start(name: str, repository: Path, budget_mb: float) -> tuple[Server, subprocess.Popen[bytes]]:
    port = free_port()
    server = Server(
        name,
        [sys.executable, "-m", "sluiceway", "serve", "--port", str(port)],
        port,
        env={
            "SLUICEWAY_MODEL_REPOSITORY": str(repository),
            "SLUICEWAY_ADMIN_TOKEN": TOKEN,
            "SLUICEWAY_MODEL_CACHE_BUDGET_MB": str(budget_mb),
            "SLUICEWAY_LOG_LEVEL": "WARNING",
        },
    )
    return server, server.start()


async def wait_ready(base: str, model: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(600):
            models = (await http.get(f"{base}/v1/models")).json()["models"]
            if any(m["name"] == model and m["state"] == "READY" for m in models):
                return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{model} did not become ready")


async def steady_phase(base: str, phase: Phase, seconds: float, clients: int, churn: bool) -> None:
    """Closed-loop callers on ``steady``; with ``churn``, load/unload ``churn`` meanwhile."""
    latencies: list[float] = []
    rng = np.random.default_rng()
    stop_at = time.monotonic() + seconds

    async def caller(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            body = {"inputs": {"x": rng.normal(size=(1, 256)).round(4).tolist()}}
            started = time.perf_counter()
            try:
                response = await http.post(f"{base}/v1/models/steady/infer", json=body)
                ok = response.status_code == 200 and len(response.json()["outputs"]["y"]) == 1
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            phase.requests += 1
            phase.failures += not ok

    async def control(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            for action in ("load", "unload"):
                response = await http.post(
                    f"{base}/v2/repository/models/churn/{action}", headers=AUTH
                )
                if response.status_code != 200:
                    raise RuntimeError(f"{action} failed: {response.text}")
                phase.control_ops += 1
                await asyncio.sleep(0.2)

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        started = time.monotonic()
        tasks = [caller(http) for _ in range(clients)]
        if churn:
            tasks.append(control(http))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    phase.p50_ms = statistics.median(ordered) * 1000
    phase.p99_ms = ordered[int(len(ordered) * 0.99) - 1] * 1000
    phase.rps = phase.requests / elapsed


def control_under_load(args: argparse.Namespace, root: Path) -> list[Phase]:
    repository = root / "control"
    mlp(repository / "steady" / "model.onnx")
    (repository / "steady" / "config.toml").write_text(MLP_CONFIG)
    classifier_folder(repository / "churn")
    server, process = start("control", repository, 1024)
    base = f"http://127.0.0.1:{server.port}"
    phases: list[Phase] = []
    try:
        asyncio.run(wait_ready(base, "steady"))
        asyncio.run(steady_phase(base, Phase("warm-up"), 3, args.clients, churn=False))
        for round_ in range(args.rounds):
            for churn in (False, True):
                phase = Phase(f"{'churn' if churn else 'quiet'} {round_ + 1}")
                asyncio.run(steady_phase(base, phase, args.phase_s, args.clients, churn))
                print(phase, flush=True)
                phases.append(phase)
    finally:
        stop(process)
    return phases


def png_b64(seed: int) -> str:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def memory_run(args: argparse.Namespace, root: Path) -> Memory:
    empty = root / "empty"
    empty.mkdir()
    many = root / "many"
    for index in range(10):
        classifier_folder(many / f"mobilenet{index}")
    memory = Memory(budget_mb=args.budget_mb)
    # The process's fixed size: the same server, an empty repository, one built-in image call.
    server, process = start("fixed", empty, args.budget_mb)
    try:
        with ProcessWatch(process.pid, 0.5) as watch:
            body = {"images": [png_b64(0)], "k": 1}
            httpx.post(
                f"http://127.0.0.1:{server.port}/v1/models/imagenet/classify", json=body, timeout=60
            )
            time.sleep(2)
        memory.fixed_rss_mb = watch.peak_rss_mb
    finally:
        stop(process)
    server, process = start("many", many, args.budget_mb)
    base = f"http://127.0.0.1:{server.port}"
    try:
        asyncio.run(wait_ready(base, "mobilenet9"))
        with ProcessWatch(process.pid, 0.1) as watch, httpx.Client(timeout=120) as http:
            http.post(f"{base}/v1/models/imagenet/classify", json={"images": [png_b64(0)]})
            for round_ in range(args.memory_rounds):
                for index in range(10):
                    body = {"images": [png_b64(round_ * 10 + index)], "k": 1}
                    response = http.post(f"{base}/v1/models/mobilenet{index}/classify", json=body)
                    memory.calls += 1
                    memory.failures += response.status_code != 200
            metrics = http.get(f"{base}/metrics").text
        memory.samples = watch.samples
        memory.peak_rss_mb = watch.peak_rss_mb
        memory.final_rss_mb = watch.samples[-1][1] if watch.samples else 0.0
        for line in metrics.splitlines():
            if line.startswith('sluiceway_model_loads_total{model="mobilenet'):
                memory.loads += float(line.split()[-1])
            if line.startswith('sluiceway_model_evictions_total{model="mobilenet'):
                memory.evictions += float(line.split()[-1])
    finally:
        stop(process)
    return memory


def arena_costs(root: Path, repeats: int) -> list[ArenaCost]:
    """Median CPU ms per item, arena on vs off, the two sessions called in turn, with large
    blocks mapped on their own as in a server with a model repository."""
    import onnxruntime as ort

    from sluiceway.models.onnx_model import session_options
    from sluiceway.runtime.memory import map_large_blocks

    map_large_blocks()

    mlp(root / "arena" / "mlp.onnx")
    models = {
        "MobileNetV2 (image)": (imagenet_model_path(), (3, 224, 224)),
        "MLP (256 floats)": (root / "arena" / "mlp.onnx", (256,)),
    }
    costs: list[ArenaCost] = []
    for label, (path, shape) in models.items():
        sessions = {
            arena: ort.InferenceSession(
                str(path),
                session_options(1, memory_arena=arena),
                providers=["CPUExecutionProvider"],
            )
            for arena in (True, False)
        }
        name = sessions[True].get_inputs()[0].name
        for batch in (1, 8):
            feed = {name: np.random.default_rng(0).random((batch, *shape), dtype=np.float32)}
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(repeats + 2):
                for arena, session in sessions.items():
                    started = time.process_time()
                    session.run(None, feed)
                    times[arena].append((time.process_time() - started) / batch * 1000)
            on, off = (statistics.median(times[arena][2:]) for arena in (True, False))
            costs.append(ArenaCost(label, batch, on, off))
            print(costs[-1], flush=True)
    return costs


def report(
    phases: list[Phase], memory: Memory, costs: list[ArenaCost], args: argparse.Namespace
) -> None:
    quiet = [p for p in phases if p.name.startswith("quiet")]
    churn = [p for p in phases if p.name.startswith("churn")]
    quiet_p99 = statistics.median(p.p99_ms for p in quiet)
    churn_p99 = statistics.median(p.p99_ms for p in churn)
    file_mb = imagenet_model_path().stat().st_size / 2**20
    limit = memory.fixed_rss_mb + memory.budget_mb
    results = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": machine(),
        "args": vars(args),
        "phases": [asdict(p) for p in phases],
        "memory": asdict(memory),
        "arena": [asdict(c) for c in costs],
        "churn_p99_over_quiet": churn_p99 / quiet_p99,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [p.name for p in phases]
    left.bar(
        names, [p.p99_ms for p in phases], color=["C0" if "quiet" in n else "C3" for n in names]
    )
    left.plot(names, [p.p50_ms for p in phases], "k.", label="p50")
    left.set_ylabel("ms")
    left.set_title("steady model: p99 (bars) and p50, quiet vs load/unload churn")
    left.legend()
    if memory.samples:
        right.plot([t for t, _ in memory.samples], [r for _, r in memory.samples], label="RSS")
    right.axhline(limit, color="C3", linestyle="--", label="fixed size + budget")
    right.axhline(memory.fixed_rss_mb, color="grey", linestyle=":", label="fixed size")
    right.set_xlabel("s")
    right.set_ylabel("MB")
    right.set_title("ten 14 MB models round-robin over the cache budget")
    right.legend()
    figure.tight_layout()
    figure.savefig(HERE / "repository.png", dpi=110)

    arena_rows = "\n".join(
        f"| {c.model} | {c.batch} | {c.arena_ms:.2f} | {c.lean_ms:.2f} | "
        f"{c.lean_ms / c.arena_ms:.2f} |"
        for c in costs
    )
    rows = "\n".join(
        f"| {p.name} | {p.requests} | {p.failures} | {p.rps:.0f} | {p.p50_ms:.1f} | "
        f"{p.p99_ms:.1f} | {p.control_ops} |"
        for p in phases
    )
    text = f"""# Model repository benchmark

{results["date"]}, {results["machine"]}. `python -m bench.repository.run` (phases of
{args.phase_s:.0f} s, {args.rounds} rounds, {args.clients} closed-loop callers). The load
generator (httpx, in this process) shares the 2 cores with the server, as do other jobs on this
shared machine: compare phases of the same run, not figures across runs.

## Loading and unloading beside steady traffic

A steady loop on the repository MLP `steady`; in the churn phases another repository model
(`churn`, the packaged MobileNetV2 as a classifier: {file_mb:.0f} MB, loaded, warmed and
unloaded through `/v2/repository/models/churn/load|unload`, 0.2 s apart) changes state over and
over. Each control call waits for the load or the drain to finish.

| phase | requests | failures | req/s | p50 ms | p99 ms | loads + unloads |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{rows}

Churn p99 / quiet p99 (medians over rounds): **{churn_p99:.1f} / {quiet_p99:.1f} ms =
{churn_p99 / quiet_p99:.2f}**; failures: {sum(p.failures for p in phases)}.

## Ten models over the cache budget

Ten copies of MobileNetV2 ({file_mb:.0f} MB files) in one repository, budget
{memory.budget_mb:.0f} MB, {memory.calls} calls round-robin ({memory.failures} failures), so
every call finds its model evicted. Repository sessions run without ONNX Runtime's memory arena
and are counted at 1.1 times their file (their weights; a call's activations are freed when it
returns); a load first evicts enough to fit its build (2.7 times the file at its peak); the
server maps large blocks on their own and the model cache trims the heaps after an eviction
(`mallopt`, `malloc_trim`: `runtime/memory.py`), so an evicted model's memory goes back to the
system. RSS sampled every 0.1 s. Fixed size (same server, empty repository, one built-in
ImageNet call, same run): {memory.fixed_rss_mb:.0f} MB.

| | MB |
| --- | ---: |
| fixed size | {memory.fixed_rss_mb:.0f} |
| budget | {memory.budget_mb:.0f} |
| fixed size + budget | {limit:.0f} |
| peak RSS | {memory.peak_rss_mb:.0f} |
| RSS at the end | {memory.final_rss_mb:.0f} |

Loads counted in `/metrics`: {memory.loads:.0f}; evictions: {memory.evictions:.0f}.
Peak RSS is {"within" if memory.peak_rss_mb <= limit else "over"} fixed size + budget
({memory.peak_rss_mb - limit:+.0f} MB).

![repository](repository.png)

## The arena's price

CPU milliseconds per item (median of {args.arena_repeats} calls each, the two sessions called in
turn, one intra-op thread, in the benchmark's own process, large blocks mapped on their own as
in a server with a model repository):

| model | batch | arena | no arena | ratio |
| --- | ---: | ---: | ---: | ---: |
{arena_rows}

The packaged ImageNet model keeps its arena (it is served all the time, and its batches are
the image figures of `bench/images` and `bench/web`); repository models go without, so that the
budget holds.
"""
    (HERE / "REPORT.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phase-s", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--budget-mb", type=float, default=100.0)
    parser.add_argument("--memory-rounds", type=int, default=10)
    parser.add_argument("--arena-repeats", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        phases = control_under_load(args, root)
        memory = memory_run(args, root)
        costs = arena_costs(root, args.arena_repeats)
    report(phases, memory, costs, args)


if __name__ == "__main__":
    main()
