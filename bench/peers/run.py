"""Sluiceway side by side with the servers users would pick instead, on the same machine.

    python -m bench.peers.run [--only sluiceway fastapi ...] [--workloads kiosk upload birds]

Three workloads (``workloads.py``), each served by Sluiceway, LitServe, BentoML, Ray Serve and a
plain FastAPI server, one after another in one run, driven by ``wrk`` (C, one thread per core)
with ``load.lua``, which checks every answer:

- kiosk: 250 connections opened at once, 10–20 ms think time, the seed's cost model; the
  physical bound is 250 / (0.2 + 0.015) ≈ 1163 requests/s;
- upload: ``POST /predict`` with a JPEG, at 8, 32 and 64 connections, no think time;
- birds: the bird API, ``POST /`` with five image URLs and k=3 (the seed's shape), at 4 and 16
  connections; the photos come from a local image server (its CPU is reported too). Needs the
  bird model from ``../shared/models`` (or ``SLUICEWAY_TEST_MODELS``); skipped without it.

Each peer runs in its own virtualenv (``--venvs``, created on first use from PyPI) so its pins
never touch ours, configured as its documentation recommends (``servers/``; the report says how).
Per server: steady requests/s, p50/p95/p99, failures (non-200 and wrong answers), server CPU per
request, peak RSS, and the load generator's own CPU share. Writes ``REPORT.md``, ``peers.png``
and ``results.json`` here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.loadtest import CHECKOUT_PATH, ProcessWatch, free_port, machine, stop, wait_for_port
from bench.peers import workloads

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KIOSK_CONNECTIONS = 250
THINK_MS = (10, 20)
KIOSK_BOUND_RPS = KIOSK_CONNECTIONS / (0.2 + sum(THINK_MS) / 2 / 1000)
UPLOAD_CONNECTIONS = (8, 32, 64)
BIRD_CONNECTIONS = (4, 16)
# The same model libraries as Sluiceway's own environment, so only the servers differ.
COMMON = [
    "numpy==2.4.6",
    "scikit-learn==1.9.1",
    "onnxruntime==1.32.0",
    "pillow==13.0.0",
    "ai-edge-litert==2.3.0",
]


@dataclass(frozen=True)
class Peer:
    """One server: its virtualenv's packages and how to start it for a workload."""

    name: str
    packages: tuple[str, ...]
    settings: str
    """How it is configured, and why, for the report."""
    docs: str
    env: tuple[tuple[str, str], ...] = ()
    """Settings given as environment variables (Sluiceway's variants)."""

    def command(self, python: str, port: int, workload: str) -> list[str]:
        module = f"bench.peers.servers.{self.name}_app"
        if self.name.startswith("sluiceway"):
            return [python, "-m", "sluiceway", "serve", "--port", str(port)]
        if self.name == "fastapi":
            return [
                python,
                "-m",
                "uvicorn",
                f"{module}:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
        return [python, "-m", module, "--port", str(port), "--workload", workload]


PEERS = {
    "sluiceway": Peer(
        "sluiceway",
        (),
        "as shipped: `sluiceway serve`, defaults (256 KNN slots; ImageNet and birds 2 slots × 1 "
        "thread, batches up to 8, JPEGs decoded at reduced scale); for the bird workload the "
        "local image server is allowed (`SLUICEWAY_FETCH_ALLOW_HOSTS=127.0.0.1:*`) and its "
        "per-host download cap raised to 64 (`SLUICEWAY_FETCH_PER_HOST`): the one local host "
        "stands in for the many hosts real URLs point at",
        "README.md",
    ),
    "sluiceway-2w": Peer(
        "sluiceway-2w",
        (),
        "two HTTP worker processes (`SLUICEWAY_WORKERS=2`), each with one ImageNet slot "
        "(`SLUICEWAY_IMAGENET_SLOTS=1`): not the default, measured to see what one process "
        "leaves on the table",
        "README.md",
        (("SLUICEWAY_WORKERS", "2"), ("SLUICEWAY_IMAGENET_SLOTS", "1")),
    ),
    "litserve": Peer(
        "litserve",
        ("litserve==0.2.19", "python-multipart==0.0.34", *COMMON),
        "`accelerator='cpu', workers_per_device=2`; LitAPI batching (kiosk 256 / 5 ms, upload "
        "8 / 5 ms); synchronous `predict` (LitServe refuses async with batching): kiosk batches "
        "grouped by restaurant, each group's call in its own thread; per-worker model dict; "
        "ONNX Runtime 1 thread per worker",
        "https://lightning.ai/docs/litserve/features/batching",
    ),
    "bentoml": Peer(
        "bentoml",
        ("bentoml==1.4.40", *COMMON),
        "`workers='cpu_count'`; kiosk: async API on the body's two fields, per-worker model "
        "dict, no batching (BentoML's batchable APIs need a list-shaped body, which the "
        "contract is not); upload: sync API taking a `Path`, ONNX Runtime 1 thread per worker",
        "https://docs.bentoml.com/en/latest/build-with-bentoml/parallelize-requests.html",
    ),
    "ray": Peer(
        "ray",
        ("ray[serve]==2.60.0", "python-multipart==0.0.34", *COMMON),
        "`ray.init(num_cpus=2)`, 2 replicas × `num_cpus=1`, `max_ongoing_requests` raised; "
        "`@serve.batch` (kiosk 256 / 5 ms with 8 concurrent batches grouped by restaurant; "
        "upload 8 / 5 ms); per-replica model dict; ONNX Runtime 1 thread per replica",
        "https://docs.ray.io/en/latest/serve/advanced-guides/dyn-req-batch.html",
    ),
    "fastapi": Peer(
        "fastapi",
        ("fastapi==0.165.0", "uvicorn[standard]==0.54.0", "python-multipart==0.0.34", *COMMON),
        "one uvicorn process, async kiosk endpoint, sync `/predict` in FastAPI's thread pool, "
        "ONNX Runtime defaults; no batching (what a user writes first)",
        "https://fastapi.tiangolo.com/deployment/server-workers/",
    ),
}


@dataclass
class Measure:
    """One server, one workload, one connection count."""

    server: str
    workload: str
    connections: int
    seconds: float = 0.0
    requests: int = 0
    rps: float = 0.0
    not_200: int = 0
    wrong: int = 0
    socket_errors: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu_ms_per_request: float = 0.0
    server_peak_rss_mb: float = 0.0
    generator_cpu_share: float = 0.0
    error: str = ""
    rounds: list[float] = field(default_factory=list)
    """Requests/s of every round (filled in by the report)."""

    @property
    def failures(self) -> int:
        return self.not_200 + self.wrong + self.socket_errors


@dataclass(frozen=True)
class Load:
    """What wrk sends and how it judges the answers."""

    requests: Path
    expected: str
    think_ms: tuple[int, int]


@dataclass
class Run:
    date: str
    machine: str
    measures: list[Measure] = field(default_factory=list)
    model_cost_ms: dict[int, float] = field(default_factory=dict)
    bird_model_cost_ms: dict[int, float] = field(default_factory=dict)
    image_server_cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    workload_dates: dict[str, str] = field(default_factory=dict)
    """When each workload was measured (``--keep`` carries some over from the last report)."""


def load_run(path: Path) -> Run:
    """A run as its ``results.json`` keeps it."""
    saved = json.loads(path.read_text())

    def costs(key: str) -> dict[int, float]:
        return {int(batch): ms for batch, ms in saved.get(key, {}).items()}

    return Run(
        saved["date"],
        saved["machine"],
        [Measure(**row) for row in saved["measures"]],
        costs("model_cost_ms"),
        costs("bird_model_cost_ms"),
        saved.get("image_server_cpu_ms_per_request", {}),
        saved.get("workload_dates", {}),
    )


def keep_earlier(run: Run, measured: list[str]) -> None:
    """Carry over the last report's figures of the workloads not measured now, with their date."""
    path = HERE / "results.json"
    if not path.exists():
        return
    earlier = json.loads(path.read_text())
    dates = earlier.get("workload_dates", {})
    for row in earlier["measures"]:
        if row["workload"] not in measured:
            run.measures.append(Measure(**row))
            run.workload_dates.setdefault(
                row["workload"], dates.get(row["workload"], earlier["date"])
            )
    if "upload" not in measured:
        run.model_cost_ms = {int(k): v for k, v in earlier.get("model_cost_ms", {}).items()}
    if "birds" not in measured:
        run.bird_model_cost_ms = {
            int(k): v for k, v in earlier.get("bird_model_cost_ms", {}).items()
        }
        run.image_server_cpu_ms_per_request = earlier.get("image_server_cpu_ms_per_request", {})


def venv_python(peer: Peer, venvs: Path) -> str:
    """The peer's interpreter, creating its virtualenv on first use."""
    if not peer.packages:
        return sys.executable
    folder = venvs / peer.name
    python = folder / "bin" / "python"
    marker = folder / "installed.json"
    if not marker.exists() or json.loads(marker.read_text()) != list(peer.packages):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *peer.packages], check=True)
        marker.write_text(json.dumps(list(peer.packages)))
    return str(python)


def wrk(
    port: int,
    requests_file: Path,
    expected: str,
    connections: int,
    seconds: float,
    think: tuple[int, int],
) -> tuple[dict[str, float], float]:
    """Run wrk; its JSON summary and the share of the 2 cores it used."""
    command = [
        "wrk",
        f"-c{connections}",
        f"-t{min(2, connections)}",
        f"-d{seconds:.0f}s",
        "--timeout",
        "30s",
        "-s",
        str(HERE / "load.lua"),
        f"http://127.0.0.1:{port}",
        "--",
        str(requests_file),
        expected,
        str(think[0]),
        str(think[1]),
    ]
    started = time.monotonic()
    process = psutil.Popen(command, stdout=subprocess.PIPE, text=True)
    cpu = 0.0
    while process.poll() is None:
        try:
            times = process.cpu_times()
            cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    output = process.stdout.read() if process.stdout else ""
    elapsed = time.monotonic() - started
    line = next((ln for ln in output.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    return json.loads(line.removeprefix("WRK_JSON ")), cpu / (elapsed * psutil.cpu_count())


def measure(
    name: str,
    workload: str,
    process: subprocess.Popen[bytes],
    port: int,
    load: Load,
    connections: int,
    seconds: float,
) -> Measure:
    result = Measure(name, workload, connections)
    try:
        with ProcessWatch(process.pid, 0.5) as watch:
            summary, share = wrk(
                port, load.requests, load.expected, connections, seconds, load.think_ms
            )
    except RuntimeError as error:
        result.error = str(error)[:300]
        return result
    result.seconds = summary["duration_us"] / 1e6
    result.requests = int(summary["requests"])
    result.rps = result.requests / result.seconds
    result.not_200 = int(summary["not_200"])
    result.wrong = int(summary["wrong"])
    result.socket_errors = int(
        summary["connect"] + summary["read"] + summary["write"] + summary["timeout"]
    )
    result.p50_ms, result.p95_ms, result.p99_ms = (
        summary["p50_ms"],
        summary["p95_ms"],
        summary["p99_ms"],
    )
    result.server_cpu_ms_per_request = watch.cpu_s * 1000 / max(1, result.requests)
    result.server_peak_rss_mb = watch.peak_rss_mb
    result.generator_cpu_share = share
    print(asdict(result), flush=True)
    return result


def stop_tree(process: subprocess.Popen[bytes]) -> None:
    """Stop a server and everything it started (LitServe's workers, Ray's cluster processes)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    stop(process)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=15)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def wait_answering(port: int, requests_file: Path, timeout_s: float = 240) -> None:
    """Until the first request of ``requests_file`` answers 200 (models loaded, replicas up)."""
    import urllib.error
    import urllib.request

    method, path, kind, body_path = requests_file.read_text().splitlines()[0].split(" ")
    data = Path(body_path).read_bytes()
    deadline = time.monotonic() + timeout_s
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": kind},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no 200 from port {port} within {timeout_s:.0f} s")
        time.sleep(1)


def start(
    peer: Peer, python: str, workload: str, env: dict[str, str]
) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    process = subprocess.Popen(
        peer.command(python, port, workload),
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": CHECKOUT_PATH,
            "BENTOML_DO_NOT_TRACK": "True",
            "BENTOML_HOME": str(Path(tempfile.gettempdir()) / "sluiceway-peers" / "bentoml-home"),
            "RAY_USAGE_STATS_ENABLED": "0",
            **env,
            **dict(peer.env),
        },
    )
    try:
        wait_for_port(port, timeout_s=180)
    except TimeoutError:
        stop_tree(process)
        raise
    return port, process


def prepare(folder: Path) -> tuple[Load, Load, dict[str, str]]:
    """Both workloads' loads, and the environment every peer's model code reads."""
    kiosk = folder / "kiosk.txt"
    lines = []
    for index, body in enumerate(workloads.kiosk_bodies()):
        path = folder / f"kiosk-{index}.json"
        path.write_bytes(body)
        lines.append(
            f"POST /classify application/json {path}"
        )  # POST: LitServe and BentoML take no GET
    kiosk.write_text("\n".join(lines) + "\n")
    variants = workloads.cat_variants()
    expected = workloads.expected_upload_class(variants)
    upload = folder / "upload.txt"
    lines = []
    kind = f"multipart/form-data;boundary={workloads.UPLOAD_BOUNDARY}"
    for index, data in enumerate(variants):
        path = folder / f"cat-{index}.body"
        path.write_bytes(workloads.multipart(data))
        lines.append(f"POST /predict {kind} {path}")
    upload.write_text("\n".join(lines) + "\n")
    from sluiceway.models.onnx_classifier import imagenet_labels, imagenet_model_path, keras_name

    labels = folder / "labels.json"
    labels.write_text(json.dumps([keras_name(label) for label in imagenet_labels()]))
    env = {"PEER_MODEL": str(imagenet_model_path()), "PEER_LABELS": str(labels)}
    return (
        Load(kiosk, '"classification_result":[1]', THINK_MS),
        Load(upload, f'"prediction":"{expected}"', (0, 0)),
        env,
    )


@dataclass
class BirdSetup:
    """The bird workload's load, the environment its servers read, and the image server."""

    load: Load
    env: dict[str, str]
    image_server: subprocess.Popen[bytes]


def prepare_birds(folder: Path, models: Path) -> BirdSetup:
    """Photo variants and the model on a local image server; the bodies naming them."""
    images = folder / "bird-images"
    images.mkdir()
    model = models / workloads.BIRDS_MODEL
    model_name = model.name
    (images / model_name).write_bytes(model.read_bytes())
    variants = workloads.bird_variants((models / workloads.BIRDS_PHOTO).read_bytes())
    names = []
    for index, data in enumerate(variants):
        names.append(f"bird-{index}.jpg")
        (images / names[-1]).write_bytes(data)
    expected = workloads.expected_bird(model, variants)
    labels = folder / "bird-labels.json"
    labels.write_text(json.dumps(workloads.bird_labels(model.read_bytes())))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.images.imageserver", str(images), "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": CHECKOUT_PATH},
    )
    wait_for_port(port)
    base = f"http://127.0.0.1:{port}"
    lines = []
    for index in range(len(names)):
        path = folder / f"birds-{index}.json"
        path.write_bytes(workloads.bird_body(base, names, index))
        lines.append(f"POST / application/json {path}")
    requests = folder / "birds.txt"
    requests.write_text("\n".join(lines) + "\n")
    env = {
        "PEER_BIRDS_MODEL": str(images / model_name),
        "PEER_BIRDS_LABELS": str(labels),
        "SLUICEWAY_BIRDS_MODEL_URL": f"{base}/{model_name}",
        "SLUICEWAY_BIRDS_MODEL_SHA256": workloads.BIRDS_MODEL_SHA256,
        "SLUICEWAY_MODEL_CACHE_DIR": str(folder / "sluiceway-model-cache"),
        "SLUICEWAY_FETCH_ALLOW_HOSTS": "127.0.0.1:*",
        "SLUICEWAY_FETCH_PER_HOST": "64",
    }
    load = Load(requests, f'"bird_name":"{expected}"||"failed_results":[]', (0, 0))
    return BirdSetup(load, env, server)


def serve_birds(
    peer: Peer, python: str, env: dict[str, str], birds: BirdSetup, args: Any, run: Run
) -> list[Measure]:
    port, process = start(peer, python, "birds", {**env, **birds.env})
    try:
        wait_answering(port, birds.load.requests)
        measure(peer.name, "birds", process, port, birds.load, 4, 5)
        images = psutil.Process(birds.image_server.pid)
        before = sum(images.cpu_times()[:2])
        measures = [
            measure(peer.name, "birds", process, port, birds.load, connections, args.upload_s)
            for connections in BIRD_CONNECTIONS
        ]
        spent = sum(images.cpu_times()[:2]) - before
        served = sum(m.requests for m in measures)
        run.image_server_cpu_ms_per_request[peer.name] = spent * 1000 / max(1, served)
        return measures
    finally:
        stop_tree(process)


def serve_kiosk(
    peer: Peer, python: str, env: dict[str, str], load: Load, args: Any
) -> list[Measure]:
    port, process = start(peer, python, "kiosk", env)
    try:
        wait_answering(port, load.requests)
        # Warm-up: every restaurant fitted, every connection open; then the measured window.
        measure(peer.name, "kiosk", process, port, load, KIOSK_CONNECTIONS, args.kiosk_warmup_s)
        return [measure(peer.name, "kiosk", process, port, load, KIOSK_CONNECTIONS, args.kiosk_s)]
    finally:
        stop_tree(process)


def serve_upload(
    peer: Peer, python: str, env: dict[str, str], load: Load, args: Any
) -> list[Measure]:
    port, process = start(peer, python, "upload", env)
    try:
        wait_answering(port, load.requests)
        measure(peer.name, "upload", process, port, load, 8, 5)
        return [
            measure(peer.name, "upload", process, port, load, connections, args.upload_s)
            for connections in UPLOAD_CONNECTIONS
        ]
    finally:
        stop_tree(process)


def model_cost_ms() -> dict[int, float]:
    """The model's own CPU per image on a ready tensor (ONNX Runtime, 1 thread), by batch size:
    the floor every server's CPU per image is compared with."""
    import numpy as np
    import onnxruntime as ort

    from sluiceway.models.onnx_classifier import imagenet_model_path
    from sluiceway.models.onnx_model import session_options

    session = ort.InferenceSession(
        str(imagenet_model_path()), session_options(1), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    costs = {}
    for batch in (1, 8):
        tensor = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)

        def call(t: np.ndarray = tensor) -> None:
            session.run(None, {name: t})

        costs[batch] = _cpu_ms_per_item(call, batch)
    return costs


def _cpu_ms_per_item(call: Callable[[], object], batch: int) -> float:
    """The best of five rounds of ``call`` (one warm-up first), in thread CPU ms per item."""
    call()
    calls = max(1, 16 // batch)
    best = float("inf")
    for _ in range(5):
        started = time.thread_time()
        for _ in range(calls):
            call()
        best = min(best, (time.thread_time() - started) / (calls * batch))
    return best * 1000


def bird_model_cost_ms(models: Path) -> dict[int, float]:
    """The bird model's own CPU per image on ready pixels (LiteRT, one thread), by batch size."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(models / workloads.BIRDS_MODEL), num_threads=1)
    source = interpreter.get_input_details()[0]["index"]
    costs = {}
    for batch in (1, 8):
        interpreter.resize_tensor_input(source, [batch, 224, 224, 3])
        interpreter.allocate_tensors()
        pixels = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)

        def call(p: np.ndarray = pixels) -> None:
            interpreter.set_tensor(source, p)
            interpreter.invoke()

        costs[batch] = _cpu_ms_per_item(call, batch)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only", nargs="*", default=[name for name in PEERS if name != "sluiceway-2w"]
    )
    parser.add_argument("--workloads", nargs="*", default=["kiosk", "upload", "birds"])
    parser.add_argument("--rounds", type=int, default=1, help="each in reverse order of the last")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from results.json"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the last report's figures of the workloads not measured now (dated)",
    )
    parser.add_argument("--kiosk-s", type=float, default=60)
    parser.add_argument("--kiosk-warmup-s", type=float, default=10)
    parser.add_argument("--upload-s", type=float, default=20)
    parser.add_argument(
        "--venvs", type=Path, default=Path(tempfile.gettempdir()) / "sluiceway-peers"
    )
    args = parser.parse_args()
    if args.report_only:
        report(load_run(HERE / "results.json"), args)
        return
    run = Run(dt.datetime.now(dt.UTC).isoformat(timespec="minutes"), machine())
    if "upload" in args.workloads:
        run.model_cost_ms = model_cost_ms()
    models = workloads.shared_models()
    if "birds" in args.workloads and models is None:
        print("birds: skipped, the bird model is not in ../shared/models or SLUICEWAY_TEST_MODELS")
        args.workloads.remove("birds")
    if "birds" in args.workloads and models is not None:
        run.bird_model_cost_ms = bird_model_cost_ms(models)
    for workload in args.workloads:
        run.workload_dates[workload] = run.date
    if args.keep:
        keep_earlier(run, args.workloads)
    pythons = {name: venv_python(PEERS[name], args.venvs) for name in args.only}
    with tempfile.TemporaryDirectory() as folder:
        kiosk, upload, env = prepare(Path(folder))
        birds = None
        if "birds" in args.workloads and models is not None:
            birds = prepare_birds(Path(folder), models)
        try:
            order = list(args.only)
            for round_ in range(args.rounds):
                # Alternate the order, so a machine getting busier or quieter favours nobody.
                for name in order if round_ % 2 == 0 else reversed(order):
                    peer = PEERS[name]
                    if "kiosk" in args.workloads:
                        run.measures += serve_kiosk(peer, pythons[name], env, kiosk, args)
                    if "upload" in args.workloads:
                        run.measures += serve_upload(peer, pythons[name], env, upload, args)
                    if birds is not None:
                        run.measures += serve_birds(peer, pythons[name], env, birds, args, run)
        finally:
            if birds is not None:
                stop(birds.image_server)
    report(run, args)


def report(run: Run, args: argparse.Namespace) -> None:
    from bench.peers.report import write

    write(run, PEERS, KIOSK_BOUND_RPS, HERE)


if __name__ == "__main__":
    main()
