"""Open Inference Protocol benchmark: the ImageNet ONNX model over the protocol, against peers.

    flock /tmp/sluiceway-bench.lock .venv/bin/python -m bench.oip.run [--duration 8]

One run measures, one after the other on the same machine:

- the ceiling: the model called in a tight loop on both cores (two threads, one ONNX Runtime
  thread each), the tensor already in memory, at batch 1 and batch 8;
- Sluiceway serving the ONNX file from a model repository (binary tensors), with dynamic
  batching (max batch 8, 2 compute slots) and with batching off (max batch 1), and with JSON
  tensors (batching on) to compare with MLServer on the same encoding; all with ONNX Runtime's
  memory arena on (``memory_arena = true``: the ceiling's and the peers' sessions have it), and
  once more batched without it, a repository's default; and once more batched with every call
  on one core (``wide = false``), the baseline of wide calls (a call made alone on every core);
  and once more batched with the image in a shared memory region (Triton's system shared memory
  extension, ``SLUICEWAY_ALLOW_CLIENT_SHM``): a client on the same machine registers it once
  and each request sends the JSON header only;
- the yardstick (``servers/bare_app.py``): a bare ASGI app that only cuts the tensor out of
  the body, calls the model as the ceiling does and writes the answer; the least any Python
  server over HTTP pays, so the most such a server reaches here;
- KServe's Python model server (``kserve``) and Seldon MLServer (``mlserver``, adaptive batching
  on) hosting the same file, each in its own virtualenv under ``--venvs`` (created on first use
  with pinned versions; never committed);
- LitServe (``litserve``, its own virtualenv too): not a server of the protocol, but a LitAPI
  reading the same binary body, to check the issue's word that LitServe with two workers and
  batching sits near the ceiling (it said so of a JPEG-in classifier);
- the protocol's overhead: a 1-element JSON request to a trivial ONNX model (Identity) against
  the same server's cheapest route, for Sluiceway (``GET /ping`` and ``GET /v2/health/live``),
  KServe and MLServer (``GET /v2/health/live``), each set up as for ImageNet, and the yardstick
  (its ``GET /ping``) (``--only overhead`` runs this part alone).

Triton's ``perf_analyzer`` would be the natural load generator, but no wheel installable here
ships it: ``tritonclient`` 2.73.0 carries the client libraries only, and ``perf-analyzer``
2.60.0 (which does carry the binary) is built for glibc 2.38, newer than this Debian 12's 2.36
(pip offers only a 2 KB placeholder, 0.1.0; the binary, run anyway, needs GLIBC_2.38).
So the one load generator is ``wrk`` with ``load.lua``: closed loop, concurrency 1 to 32, the same
prepared image (the chelsea photo) every request. Every server's answer is checked once (the
class must be the ceiling's) and every load answer must be 200 with the output in it.
Sluiceway batched, unbatched, with one-core calls and with shared memory, and the yardstick,
are started together and measured level by level in turn (``TOGETHER``), so their comparisons
are made within the same minutes; the other servers run one after the other.
Writes ``bench/oip/REPORT.md``, ``oip.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import numpy as np
import onnxruntime as ort
import skimage

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadtest import CHECKOUT_PATH, REPO, ProcessWatch, free_port, machine
from bench.loadtest import stop as stop_process
from sluiceway.inputs.pixels import prepare_image
from sluiceway.models.onnx_classifier import IMAGENET_INPUT, imagenet_model_path

HERE = Path(__file__).resolve().parent
MODEL = "mobilenet"
# uvloop 0.22 dropped what MLServer 1.7.1's inference workers call at start-up
# (asyncio.get_event_loop() outside a running loop): they die at once with a newer one.
PEERS = {
    "kserve": ["kserve==0.21.0"],
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22"],
    "litserve": ["litserve==0.2.19"],
}
PEER_COMMON = ["onnxruntime==1.32.0", "numpy<3"]
LEVELS = (1, 2, 4, 8, 16, 32)


@dataclass
class Level:
    """One concurrency level of one server."""

    concurrency: int
    requests: int
    rps: float
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    rss_mb: float
    wrk_cpu_share: float = 0.0
    """wrk's CPU time over the level's wall time times the cores: the share of the machine
    the load generator itself took from the server."""
    nearby_ceiling_images_s: float = 0.0
    """For servers measured together (``TOGETHER``): the better ceiling measured just before
    and just after this level's round, the higher of the two; 0 when not measured."""


@dataclass
class ServerRun:
    """One server: how it was set up and what each level measured."""

    name: str
    setup: str
    encoding: str
    levels: list[Level] = field(default_factory=list)
    error: str = ""
    nearby_ceiling_images_s: float = 0.0
    """The better ceiling (batch 1 or 8) measured just before this server and just after it,
    the higher of the two: the machine's speed while this server ran."""


@dataclass
class Ceiling:
    batch1_images_s: float
    batch8_images_s: float
    alone_images_s: float = 0.0
    """One call at a time, on both cores (two spinning intra-op threads, as a server's lone
    call): the most one closed-loop client can get, whatever serves it (0: not measured)."""

    @property
    def best(self) -> float:
        return max(self.batch1_images_s, self.batch8_images_s)


def prepared_image() -> np.ndarray:
    data = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    pixels: np.ndarray = prepare_image(data, IMAGENET_INPUT, 40_000_000)[None]
    return pixels


def bodies(folder: Path, pixels: np.ndarray) -> tuple[Path, int, Path]:
    """The binary request (and its header length) and the JSON request, written to files."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(pixels.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary = folder / "binary.body"
    binary.write_bytes(header + pixels.astype("<f4").tobytes())
    as_json = folder / "json.body"
    data = [round(float(v), 5) for v in pixels.ravel()]
    body = {
        "inputs": [{"name": "input", "shape": list(pixels.shape), "datatype": "FP32", "data": data}]
    }
    as_json.write_text(json.dumps(body))
    return binary, len(header), as_json


SHM = "sluiceway-shm"
REGION = "image"


@contextmanager
def image_region(pixels: np.ndarray) -> Iterator[str]:
    """The prepared image in a POSIX shared-memory object, as a same-host client would put it
    there (``tritonclient.utils.shared_memory`` does the same); its key. Removed afterwards."""
    region = shared_memory.SharedMemory(create=True, size=pixels.nbytes)
    try:
        np.ndarray(pixels.shape, np.float32, buffer=region.buf)[:] = pixels
        yield f"/{region.name.lstrip('/')}"
    finally:
        region.close()
        region.unlink()


def shm_body(folder: Path, pixels: np.ndarray) -> Path:
    """A request naming the registered region for its input: the JSON header alone."""
    item = {
        "name": "input",
        "shape": list(pixels.shape),
        "datatype": "FP32",
        "parameters": {"shared_memory_region": REGION, "shared_memory_byte_size": pixels.nbytes},
    }
    path = folder / "shm.body"
    path.write_text(json.dumps({"inputs": [item], "parameters": {"binary_data_output": True}}))
    return path


def register_region(key: str, byte_size: int) -> Callable[[str], None]:
    """Registers the image's region with a server at a base URL, once it is up."""

    def register(base: str) -> None:
        answer = httpx.post(
            f"{base}/v2/systemsharedmemory/region/{REGION}/register",
            json={"key": key, "offset": 0, "byte_size": byte_size},
            timeout=10,
        )
        answer.raise_for_status()

    return register


def ceiling(seconds: float) -> tuple[Ceiling, int]:
    """Images/s of the model in a tight loop on two threads, at batch 1 and 8; its class.

    The best setup measured on this 2-core machine (2026-11-30, images/s at batch 1): one
    session called from two threads with one intra-op thread each, no spinning (362), against
    spinning on (354), two sessions (316), one caller with two intra-op threads (214, spinning
    290), and batches of 2, 4, 8 (350, 337, 300).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(imagenet_model_path()), options)
    pixels = prepared_image()
    (logits,) = session.run(None, {"input": pixels})
    expected = int(np.argmax(logits))

    def rate(batch: int) -> float:
        feed = {"input": np.repeat(pixels, batch, axis=0)}
        session.run(None, feed)
        counts = [0, 0]
        end = time.perf_counter() + seconds

        def loop(slot: int) -> None:
            while time.perf_counter() < end:
                session.run(None, feed)
                counts[slot] += batch

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.perf_counter() - started)

    wide_options = ort.SessionOptions()  # as ``onnx_model.open_wide_session``
    wide_options.intra_op_num_threads = 2
    wide_options.inter_op_num_threads = 1
    wide_options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    wide = ort.InferenceSession(str(imagenet_model_path()), wide_options)
    feed = {"input": pixels}
    wide.run(None, feed)
    calls, end = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        wide.run(None, feed)
        calls += 1
    alone = calls / (time.perf_counter() - started)
    return Ceiling(rate(1), rate(8), alone), expected


def peer_python(venvs: Path, peer: str) -> str:
    """The peer's virtualenv interpreter, creating the virtualenv on first use."""
    folder = venvs / peer
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEERS[peer], *PEER_COMMON], check=True
        )
    return str(python)


def sluiceway_server(
    folder: Path,
    max_batch: int,
    port: int,
    arena: bool = True,
    wide: bool = True,
    model_file: Path | None = None,
    shm: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """Sluiceway serving the file (``model_file``, the ImageNet one unless given) from a
    repository; ``arena``: ONNX Runtime's memory arena on (``memory_arena = true``, what a model
    served all the time should use, as the ceiling and the peers' default sessions do);
    ``wide``: a call made alone runs on every core (the default, ``wide = true``)."""
    variant = f"{'arena' if arena else 'lean'}-{'wide' if wide else 'one'}"
    if model_file is not None:
        variant += f"-{model_file.stem}"
    repository = folder / f"repository-{max_batch}-{variant}"
    model = repository / MODEL
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.onnx").write_bytes((model_file or imagenet_model_path()).read_bytes())
    (model / "config.toml").write_text(
        f'platform = "onnx"\nmax_batch_size = {max_batch}\ninstances = 2\nthreads = 1\n'
        f"max_queue = 4096\nmemory_arena = {'true' if arena else 'false'}\n"
        f"wide = {'true' if wide else 'false'}\n"
        '[[inputs]]\nname = "input"\ndatatype = "FP32"\ndims = [3, 224, 224]\n'
        '[[outputs]]\nname = "logits"\ndatatype = "FP32"\ndims = [1000]\n[warmup]\n'
    )
    command = [sys.executable, "-m", "sluiceway", "serve", "--port", str(port)]
    env = {"SLUICEWAY_MODEL_REPOSITORY": str(repository), "SLUICEWAY_LOG_LEVEL": "WARNING"}
    if model_file is not None:  # calls hop to the model threads as the real model's do
        env["SLUICEWAY_INLINE_CALL_US"] = "0"
    if shm:
        env["SLUICEWAY_ALLOW_CLIENT_SHM"] = "true"
    return command, env


def bare_server(
    port: int, name: str = MODEL, path: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The yardstick (``servers/bare_app.py``): the least a Python server must do to answer,
    hosting ``path`` (the ImageNet file unless given) as model ``name``."""
    command = [
        sys.executable, str(HERE / "servers" / "bare_app.py"), "--model_name", name,
        "--model_path", str(path or imagenet_model_path()), "--port", str(port),
    ]  # fmt: skip
    return command, {}


def floor_model(folder: Path) -> Path:
    """A near-free stand-in for the ImageNet file, with its tensors: the image's first 1000
    values as ``logits`` (Reshape, then Slice). Served as the real model is, it measures what
    serving a request costs beside the model call."""
    from onnx import TensorProto, helper, numpy_helper, save

    path = folder / "floor.onnx"
    constants = {
        "flat": np.array([0, -1], dtype=np.int64),  # 0: keep the batch dimension
        "starts": np.array([0], dtype=np.int64),
        "ends": np.array([1000], dtype=np.int64),
        "axes": np.array([1], dtype=np.int64),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "flat"], ["rows"]),
            helper.make_node("Slice", ["rows", "starts", "ends", "axes"], ["logits"]),
        ],
        "floor",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    save(onnx_model, str(path))
    return path


def kserve_server(
    venvs: Path,
    port: int,
    name: str = MODEL,
    path: Path | None = None,
    grpc_port: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """KServe hosting ``path`` (the ImageNet file unless given) as model ``name``; its gRPC
    server on ``grpc_port`` too when given (it runs in the main process, beside the REST
    workers)."""
    command = [
        peer_python(venvs, "kserve"), str(HERE / "servers" / "kserve_app.py"),
        "--model_name", name, "--model_path", str(path or imagenet_model_path()),
        "--http_port", str(port), "--workers", "2", "--threads", "1",
        "--configure_logging", "false",
    ]  # fmt: skip
    if grpc_port is not None:
        command += ["--serve_grpc", "--grpc_port", str(grpc_port)]
    return command, {}


def litserve_server(venvs: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """LitServe (``servers/litserve_app.py``) hosting the ImageNet file: 2 inference worker
    processes (one per core) x 1 ONNX Runtime thread, batching 8 / 5 ms, as its documentation
    sets it up for throughput on a CPU."""
    command = [
        peer_python(venvs, "litserve"), str(HERE / "servers" / "litserve_app.py"),
        "--model_name", MODEL, "--model_path", str(imagenet_model_path()), "--port", str(port),
        "--workers", "2", "--max_batch_size", "8", "--batch_timeout", "0.005",
    ]  # fmt: skip
    return command, {}


def mlserver_server(
    venvs: Path,
    folder: Path,
    port: int,
    name: str = MODEL,
    path: Path | None = None,
    grpc_port: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """MLServer hosting ``path`` (the ImageNet file unless given) as model ``name``, with
    adaptive batching (8 / 5 ms) and 2 parallel workers whichever the model; its gRPC server
    (always on) on ``grpc_port`` when given."""
    root = folder / ("mlserver" if name == MODEL else f"mlserver-{name}")
    (root / name).mkdir(parents=True, exist_ok=True)
    settings = {
        "http_port": port,
        "grpc_port": grpc_port if grpc_port is not None else free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 2,
        "debug": False,
        # Its Prometheus files go to the run's folder, not a `.metrics` in the checkout.
        "metrics_dir": str(root / "metrics"),
    }
    (root / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": name,
        "implementation": "mlserver_runtime.OnnxImageNet",
        "max_batch_size": 8,
        "max_batch_time": 0.005,
        "parameters": {"uri": str(path or imagenet_model_path())},
    }
    (root / name / "model-settings.json").write_text(json.dumps(model_settings))
    python = peer_python(venvs, "mlserver")
    command = [str(Path(python).parent / "mlserver"), "start", str(root)]
    return command, {"PYTHONPATH": str(HERE / "servers")}


def wait_ready(
    base: str, process: subprocess.Popen[bytes], timeout_s: float = 180, model: str = MODEL
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} while starting")
        try:
            if httpx.get(f"{base}/v2/models/{model}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"not ready after {timeout_s} s")


def check_answer(base: str, body: Path, header_length: int | None, expected: int | None) -> None:
    """One request, read fully: 1000 logits, whose top class must be the ceiling's (unless
    ``expected`` is ``None``: the serving floor's stand-in model)."""
    headers = {"Content-Type": "application/json"}
    if header_length is not None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        }
    response = httpx.post(
        f"{base}/v2/models/{MODEL}/infer", content=body.read_bytes(), headers=headers, timeout=60
    )
    response.raise_for_status()
    length = response.headers.get("inference-header-content-length")
    if length is not None:
        logits = np.frombuffer(response.content[int(length) :], "<f4")
    else:
        logits = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32)
    if logits.shape != (1000,):
        raise AssertionError(f"{logits.shape} logits, expected 1000")
    if expected is not None and int(np.argmax(logits)) != expected:
        raise AssertionError(f"top class {int(np.argmax(logits))}, expected {expected}")


def wrk(
    url: str,
    body: Path,
    header_length: int | None,
    concurrency: int,
    seconds: float,
    expected: str = '"logits"',
) -> dict[str, float]:
    command = [
        "wrk", f"-c{concurrency}", f"-t{min(2, concurrency)}", f"-d{round(seconds)}s",
        "--timeout", "30s", "-s", str(HERE / "load.lua"), url, "--", str(body),
        str(header_length) if header_length is not None else "", expected,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"WRK_JSON (\{.*\})", output)
    if match is None:
        raise RuntimeError(f"wrk printed no summary: {output[-500:]}")
    result: dict[str, float] = json.loads(match.group(1))
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def start_server(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A server under test, started from this checkout's code, its output dropped, in a
    process group of its own (``stop`` ends whatever it started)."""
    return subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": CHECKOUT_PATH, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started by ``start_server``, then anything of its process group still
    there: a peer's workers left behind would take the cores from every server after it."""
    stop_process(process)
    with suppress(ProcessLookupError):  # the group ended with its leader
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Served:
    """One server under test, started: what to send it and the run its levels go to."""

    run: ServerRun
    process: subprocess.Popen[bytes]
    url: str
    body: Path
    header_length: int | None


Prepare = Callable[[str], None]
"""What a server needs once it is up and before it is checked (given its base URL)."""


def measure(
    plans: list[
        tuple[
            ServerRun, list[str], dict[str, str], int, Path, int | None, int | None, Prepare | None
        ]
    ],
    args: argparse.Namespace,
    samples: list[Ceiling],
) -> None:
    """Start every server of ``plans`` (run, command, environment, port, body, header length,
    expected class, what to do once it is up), then measure each level on each in turn, the
    order reversed every other level: servers compared in one group see the same minutes of a
    machine whose speed moves (the others idle meanwhile). A server that fails is reported; the
    others still run.

    With more than one server, the ceiling is measured again after each level's round (the
    servers idle meanwhile) and appended to ``samples``, whose last one was measured just
    before the group: a level is read against the machine's speed of its own minutes, which
    moved by 20-30 % within a group's quarter of an hour on 2026-12-02."""
    served: list[Served] = []
    try:
        for run, command, env, port, body, header_length, expected, prepare in plans:
            process = start_server(command, env)
            base = f"http://127.0.0.1:{port}"
            try:
                wait_ready(base, process)
                if prepare is not None:
                    prepare(base)
                check_answer(base, body, header_length, expected)
                url = f"{base}/v2/models/{MODEL}/infer"
                wrk(url, body, header_length, 4, 2)  # warm-up, not counted
            except Exception as error:  # a peer that cannot run is reported
                failed(run, error)
                stop(process)
                continue
            served.append(Served(run, process, url, body, header_length))
        for index, concurrency in enumerate(args.levels):
            for server in served if index % 2 == 0 else served[::-1]:
                if server.run.error:
                    continue
                try:
                    measure_level(server, concurrency, args)
                except Exception as error:
                    failed(server.run, error)
            if len(served) > 1 and samples:
                samples.append(ceiling(args.ceiling_s)[0])
                nearby = max(samples[-2].best, samples[-1].best)
                print(f"ceiling after c={concurrency}: {samples[-1].best:.1f}/s", flush=True)
                for server in served:
                    if server.run.levels and server.run.levels[-1].concurrency == concurrency:
                        server.run.levels[-1].nearby_ceiling_images_s = nearby
    finally:
        for server in served:
            stop(server.process)


def failed(run: ServerRun, error: Exception) -> None:
    run.error = f"{type(error).__name__}: {error}"
    print(f"{run.name}: {run.error}", flush=True)


def measure_level(server: Served, concurrency: int, args: argparse.Namespace) -> None:
    with ProcessWatch(server.process.pid, interval_s=0.5) as watch:
        result = wrk(server.url, server.body, server.header_length, concurrency, args.duration)
    seconds = result["duration_us"] / 1e6
    failures = int(
        result["not_200"] + result["wrong"] + result["socket_errors"] + result["timeouts"]
    )
    good = max(1, int(result["requests"]) - failures)
    level = Level(
        concurrency=concurrency,
        requests=int(result["requests"]),
        rps=result["requests"] / seconds,
        failures=failures,
        p50_ms=result["p50_ms"],
        p95_ms=result["p95_ms"],
        p99_ms=result["p99_ms"],
        cpu_ms_per_request=watch.cpu_s * 1000 / good,
        rss_mb=watch.peak_rss_mb,
        wrk_cpu_share=result["cpu_s"] / (seconds * (os.cpu_count() or 1)),
    )
    server.run.levels.append(level)
    print(f"{server.run.name} c={concurrency}: {level.rps:.1f} req/s p95 {level.p95_ms} ms "
          f"failures {failures}", flush=True)  # fmt: skip


BARE = "bare"
"""The yardstick: ``servers/bare_app.py``, no server at all beside the request and the call."""

BARE_SETUP = (
    "the yardstick, not a server: a bare ASGI app under uvicorn with httptools and uvloop, "
    "1 process, that cuts the tensor out of the body, calls the model as the ceiling does (one "
    "session, 2 threads x 1 ORT thread) and writes the answer; no validation, limits, batching, "
    "metrics or logging (`servers/bare_app.py`)"
)

TOGETHER = ("sluiceway", "sluiceway-unbatched", "sluiceway-one-core", SHM, BARE)
"""Servers measured level by level in turn (``measure``): the batching, wide-call and
yardstick comparisons are read within one minute of the machine, not across minutes."""

Plan = tuple[str, str, str, Callable[[int], tuple[list[str], dict[str, str]]]]


def groups(plans: list[Plan], only: list[str] | None) -> list[list[Plan]]:
    """The plans to run (``--only``), those in ``TOGETHER`` as one group, each other alone."""
    chosen = [plan for plan in plans if not only or plan[0] in only]
    together = [plan for plan in chosen if plan[0] in TOGETHER]
    alone = [[plan] for plan in chosen if plan[0] not in TOGETHER]
    return ([together] if together else []) + alone


FLOOR = "sluiceway-floor"
"""The server whose model costs next to nothing: what serving one request costs."""

TRIVIAL = "trivial"
"""The protocol-overhead model's name on every server."""


@dataclass
class Overhead:
    """One server's protocol overhead: the 1-element infer against one of its trivial routes.

    A server with two trivial routes has two of these sharing one infer measurement. CPU per
    request is the server's process tree's CPU time over the level, as ``measure`` counts it.
    """

    server: str
    setup: str
    route: str
    infer_rps: float = 0.0
    infer_failures: int = 0
    infer_cpu_us: float = 0.0
    route_rps: float = 0.0
    route_failures: int = 0
    route_cpu_us: float = 0.0
    ratio: float = 0.0
    infer_wrk_share: float = 0.0
    """wrk's share of the machine's CPU during the infer level (as ``Level.wrk_cpu_share``)."""
    route_wrk_share: float = 0.0
    infer_rounds: list[float] = field(default_factory=list)
    """The infer's req/s in each round, in order (the figures above are the best round's)."""
    route_rounds: list[float] = field(default_factory=list)
    error: str = ""


def trivial_model(folder: Path) -> Path:
    """The trivial ONNX model (Identity: input ``x`` FP32 [N, 1], output ``y``), written once."""
    from onnx import TensorProto, helper, save

    path = folder / "trivial.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "trivial",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    save(onnx_model, str(path))
    return path


def sluiceway_trivial_server(
    folder: Path, path: Path, port: int
) -> tuple[list[str], dict[str, str]]:
    """Sluiceway serving the trivial model from a repository (max batch 8, one instance)."""
    model = folder / "trivial-repository" / TRIVIAL
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.onnx").write_bytes(path.read_bytes())
    (model / "config.toml").write_text(
        'platform = "onnx"\nmax_batch_size = 8\ninstances = 1\n'
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\ndims = [1]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP32"\ndims = [1]\n'
    )
    command = [sys.executable, "-m", "sluiceway", "serve", "--port", str(port)]
    env = {"SLUICEWAY_MODEL_REPOSITORY": str(model.parent), "SLUICEWAY_LOG_LEVEL": "WARNING"}
    return command, env


def wrk_get(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    """Plain ``wrk`` (no script, so no Lua per answer) on a GET route: req/s, failures (not
    2xx or 3xx, socket errors, timeouts) and wrk's own CPU seconds."""
    command = ["wrk", f"-c{concurrency}", "-t2", f"-d{round(seconds)}s", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return parse_wrk_get(output) | {
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    }


def parse_wrk_get(output: str) -> dict[str, float]:
    """req/s, requests and failures from plain ``wrk``'s printout."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s|m)\b", output)
    if rate is None or total is None:
        raise RuntimeError(f"wrk printed no rate: {output[-500:]}")
    failures = 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad:
        failures += int(bad.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        failures += sum(int(count) for count in sockets.groups())
    return {"rps": float(rate.group(1)), "requests": float(total.group(1)), "failures": failures}


def check_trivial(base: str, body: Path) -> None:
    """One trivial request: the answer must be the input (Identity: 1.5), JSON in and out."""
    response = httpx.post(
        f"{base}/v2/models/{TRIVIAL}/infer",
        content=body.read_bytes(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    response.raise_for_status()
    data = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).ravel()
    if data.tolist() != [1.5]:
        raise AssertionError(f"the trivial model answered {data.tolist()}, not [1.5]")


def overhead_of(
    server: str,
    setup: str,
    command: list[str],
    env: dict[str, str],
    port: int,
    routes: list[str],
    body: Path,
    args: argparse.Namespace,
) -> list[Overhead]:
    """Start the server, then measure each trivial route and the trivial infer in turn, round
    after round (after a warm-up), each with the server's process tree's CPU time over it.

    Each figure is the best of ``--overhead-rounds`` rounds, as the ceiling is: a route of tens
    of microseconds moves with the machine's minute (one run saw a ``/ping`` at 8.8k req/s and
    at 19.8k a minute later), and other work can only lower a rate. Failures are summed over
    every round."""
    base = f"http://127.0.0.1:{port}"
    rows = [Overhead(server, setup, route) for route in routes]
    cores = os.cpu_count() or 1
    process = start_server(command, env)
    try:
        wait_ready(base, process, model=TRIVIAL)
        check_trivial(base, body)
        url = f"{base}/v2/models/{TRIVIAL}/infer"
        clients = args.overhead_clients
        wrk(url, body, None, 4, 2, '"y"')  # warm-up, not counted
        for _ in range(args.overhead_rounds):
            for row in rows:
                with ProcessWatch(process.pid, interval_s=0.5) as watch:
                    got = wrk_get(f"{base}{row.route}", clients, args.duration)
                row.route_failures += int(got["failures"])
                row.route_rounds.append(round(got["rps"], 1))
                if got["rps"] > row.route_rps:
                    good = max(1.0, got["requests"] - got["failures"])
                    row.route_rps = got["rps"]
                    row.route_cpu_us = watch.cpu_s * 1e6 / good
                    row.route_wrk_share = got["cpu_s"] / (args.duration * cores)
            with ProcessWatch(process.pid, interval_s=0.5) as watch:
                infer = wrk(url, body, None, clients, args.duration, '"y"')
            seconds = infer["duration_us"] / 1e6
            failures = int(
                infer["not_200"] + infer["wrong"] + infer["socket_errors"] + infer["timeouts"]
            )
            rate = infer["requests"] / seconds
            good = max(1, int(infer["requests"]) - failures)
            for row in rows:
                row.infer_failures += failures
                row.infer_rounds.append(round(rate, 1))
                if rate > row.infer_rps:
                    row.infer_rps = rate
                    row.infer_cpu_us = watch.cpu_s * 1e6 / good
                    row.infer_wrk_share = infer["cpu_s"] / (seconds * cores)
        for row in rows:
            row.ratio = row.infer_rps / row.route_rps if row.route_rps else 0.0
    except Exception as error:  # a peer that cannot run is reported, the others still run
        for row in rows:
            row.error = f"{type(error).__name__}: {error}"
        print(f"overhead {server}: {rows[0].error}", flush=True)
    finally:
        stop(process)
    for row in rows:
        if not row.error:
            print(f"overhead {server} {row.route}: infer {row.infer_rounds} req/s, route "
                  f"{row.route_rounds} req/s, best {row.ratio:.2f}x", flush=True)  # fmt: skip
    return rows


def protocol_overhead(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A 1-element JSON request to a trivial ONNX model (Identity) against the same server's
    cheapest route, for Sluiceway (``GET /ping`` and ``GET /v2/health/live``), KServe and
    MLServer (``GET /v2/health/live``, the protocol's liveness route), each set up as for
    ImageNet.

    Sluiceway's ``/ping`` figures stay under the keys they always had (``ping_rps``,
    ``infer_rps``, ``ratio``...); every server's rows are under ``servers``."""
    path = trivial_model(folder)
    body = folder / "trivial.body"
    body.write_text(
        json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.5]}]})
    )
    Build = Callable[[int], tuple[list[str], dict[str, str]]]
    plans: list[tuple[str, str, list[str], Build]] = [
        ("sluiceway", "max batch 8, 1 instance, 1 process", ["/ping", "/v2/health/live"],
         lambda p: sluiceway_trivial_server(folder, path, p)),
        ("kserve", "kserve 0.21.0, 2 uvicorn workers x 1 ORT thread", ["/v2/health/live"],
         lambda p: kserve_server(args.venvs, p, TRIVIAL, path)),
        ("mlserver", "mlserver 1.7.1, adaptive batching 8 / 5 ms, 2 parallel workers x 1 ORT "
         "thread", ["/v2/health/live"],
         lambda p: mlserver_server(args.venvs, folder, p, TRIVIAL, path)),
        (BARE, BARE_SETUP + "; a 1-element call made on the event loop", ["/ping"],
         lambda p: bare_server(p, TRIVIAL, path)),
    ]  # fmt: skip
    rows: list[Overhead] = []
    for server, setup, routes, build in plans:
        port = free_port()
        try:
            command, env = build(port)
        except Exception as error:  # e.g. a peer's virtualenv that cannot be made
            rows += [Overhead(server, setup, route, error=f"{type(error).__name__}: {error}")
                     for route in routes]  # fmt: skip
            continue
        rows += overhead_of(server, setup, command, env, port, routes, body, args)
    result: dict[str, Any] = {
        "clients": args.overhead_clients,
        "rounds": args.overhead_rounds,
        "duration_s": args.duration,
    }
    ping = next(row for row in rows if row.server == "sluiceway" and row.route == "/ping")
    if not ping.error:
        result |= {
            "ping_rps": ping.route_rps,
            "ping_failures": float(ping.route_failures),
            "infer_rps": ping.infer_rps,
            "infer_failures": ping.infer_failures,
            "ratio": ping.ratio,
        }
    result["servers"] = [asdict(row) for row in rows]
    return result


def floor_table(floor: ServerRun, best: float, cores: int) -> list[str]:
    """The serving floor: what a request costs beside the model call, and the most a server
    with that cost can reach on these cores (the model's own CPU per image as in the ceiling)."""
    lines = [
        f"Serving floor ({floor.setup}). Bound: with the ceiling's CPU per image "
        f"({cores * 1000 / best:.1f} ms: {cores} cores at {best:.1f} images/s) plus this much per "
        "request, the most any server could reach, against the ceiling.",
        "",
    ]
    if floor.error:
        return [*lines, f"error: {floor.error}"]
    lines += [
        "| clients | req/s | CPU ms/req | bound x ceiling | p50 ms | p95 ms | failures |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    model_ms = cores * 1000 / best
    for level in floor.levels:
        bound = model_ms / (model_ms + level.cpu_ms_per_request)
        lines.append(
            f"| {level.concurrency} | {level.rps:.1f} | {level.cpu_ms_per_request:.2f} | "
            f"{bound:.2f} | {level.p50_ms:.1f} | {level.p95_ms:.1f} | {level.failures} |"
        )
    return lines


def yardstick_table(runs: list[ServerRun], best: float) -> list[str]:
    """Sluiceway against the yardstick, level by level (both in ``TOGETHER``, so each level's
    pair was measured within the same minute): how much of what a Python server can reach here
    Sluiceway reaches, with everything the yardstick leaves out."""
    bare = next((run for run in runs if run.name == BARE and run.levels), None)
    ours = next((run for run in runs if run.name == "sluiceway" and run.levels), None)
    if bare is None or ours is None:
        return []
    lines = [
        "Yardstick: the bare server above does nothing a server is for beyond the request and "
        "the model call, so every Python server over HTTP pays at least its cost here, and its "
        "rate is the most such a server reaches on this machine. Sluiceway (batched) against "
        "it, each level's pair measured in turn within the same minute:",
        "",
        "| clients | bare req/s | bare x ceiling | bare x nearby | sluiceway req/s | "
        "**sluiceway / bare** | bare CPU ms/req | sluiceway CPU ms/req |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    theirs = {level.concurrency: level for level in bare.levels}
    for level in ours.levels:
        other = theirs.get(level.concurrency)
        if other is None or other.rps <= 0:
            continue
        nearby = _nearby(bare, other)
        lines.append(
            f"| {level.concurrency} | {other.rps:.1f} | {other.rps / best:.2f} | "
            f"{f'{other.rps / nearby:.2f}' if nearby else ''} | {level.rps:.1f} | "
            f"**{level.rps / other.rps:.2f}** | {other.cpu_ms_per_request:.1f} | "
            f"{level.cpu_ms_per_request:.1f} |"
        )
    return lines


def _nearby(run: ServerRun, level: Level) -> float:
    """The ceiling of the minutes ``level`` was measured in: its own round's bracket when it
    has one, else its server's."""
    return level.nearby_ceiling_images_s or run.nearby_ceiling_images_s


def _spread(samples: list[Ceiling]) -> str:
    """How far the ceiling moved through the run, when it was measured more than once."""
    if len(samples) < 2:
        return ""
    bests = [sample.best for sample in samples]
    return (
        f" Measured {len(samples)} times, the better of batch 1 and 8 ranged from "
        f"{min(bests):.1f} to {max(bests):.1f} images/s: the machine's speed in the run."
    )


def overhead_table(overhead: dict[str, Any]) -> list[str]:
    """The report's protocol-overhead paragraph: one table row per server and trivial route.

    A ``results.json`` written before the peers were measured has Sluiceway's ``/ping`` figures
    only (no ``servers``): they make the one row."""
    rows = overhead.get("servers")
    if rows is None:
        rows = [
            {
                "server": "sluiceway",
                "route": "/ping",
                "infer_rps": overhead["infer_rps"],
                "infer_failures": overhead["infer_failures"],
                "route_rps": overhead["ping_rps"],
                "route_failures": overhead["ping_failures"],
                "ratio": overhead["ratio"],
            }
        ]
    lines = [
        f"Protocol overhead ({overhead['clients']:g} clients, each server alone): a 1-element "
        "JSON request to a trivial ONNX model (Identity, x FP32 [1, 1] in, y out) against the "
        "same server's cheapest route (for KServe and MLServer the protocol's own liveness "
        "route, `GET /v2/health/live`). The trivial routes are loaded with plain `wrk`, the infer "
        "with `load.lua`. CPU per request: the server's process tree; wrk %: the load "
        "generator's share of the machine (infer / route).",
    ]
    if overhead.get("rounds", 1) > 1:
        lines[0] += (
            f" Each server's routes and infer are measured in turn, {overhead['rounds']} rounds "
            f"of {overhead.get('duration_s', 8):g} s each; each figure is the best round's "
            "(other work can only lower a rate; failures are summed over every round), and the "
            "last column lists every round's req/s."
        )
    setups = {row["server"]: row["setup"] for row in rows if row.get("setup")}
    if setups:
        described = "; ".join(f"{server}: {setup}" for server, setup in setups.items())
        lines += ["", f"Set up as for ImageNet: {described}."]
    lines += [
        "",
        "| server | trivial route | infer req/s | route req/s | infer / route | failures "
        "(infer / route) | CPU µs/req infer | CPU µs/req route | wrk % | rounds req/s "
        "(infer; route) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        if row.get("error"):
            lines.append(f"| {row['server']} | `GET {row['route']}` | error: {row['error']} "
                         "| | | | | | | |")  # fmt: skip
            continue
        cpu = (
            (f"{row['infer_cpu_us']:.0f}", f"{row['route_cpu_us']:.0f}")
            if "infer_cpu_us" in row
            else ("", "")
        )
        wrk_share = (
            f"{100 * row['infer_wrk_share']:.0f} / {100 * row['route_wrk_share']:.0f}"
            if "infer_wrk_share" in row
            else ""
        )
        lines.append(
            f"| {row['server']} | `GET {row['route']}` | {row['infer_rps']:.0f} | "
            f"{row['route_rps']:.0f} | **{row['ratio']:.2f}x** | "
            f"{row['infer_failures']:g} / {row['route_failures']:g} | {cpu[0]} | {cpu[1]} | "
            f"{wrk_share} | {_rounds(row)} |"
        )
    return lines


def _rounds(row: dict[str, Any]) -> str:
    """Every round's req/s of a row, ``infer; route`` (empty for a run of one round)."""
    infer, route = row.get("infer_rounds") or [], row.get("route_rounds") or []
    if len(infer) < 2:
        return ""
    return f"{', '.join(f'{r:.0f}' for r in infer)}; {', '.join(f'{r:.0f}' for r in route)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    parser.add_argument("--ceiling-s", type=float, default=5.0)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--venvs", type=Path, default=Path("/tmp/sluiceway-oip-peers"))
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="server names to run ('overhead': the protocol overhead, Sluiceway and the peers)",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="where REPORT.md, oip.png, results.json go"
    )
    parser.add_argument("--overhead-clients", type=int, default=8)
    parser.add_argument(
        "--overhead-rounds",
        type=int,
        default=3,
        help="protocol overhead: rounds of each route and the infer in turn, the best kept",
    )
    parser.add_argument(
        "--ceiling-again",
        action="store_true",
        help="with --report-only: measure the ceiling now and keep the higher",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite REPORT.md and the plot from results.json",
    )
    args = parser.parse_args()
    if args.report_only:
        rewrite_report(args)
        return
    started = dt.datetime.now(dt.UTC)
    ceiling_rates, expected = ceiling(args.ceiling_s)
    samples = [ceiling_rates]  # before the first server, then after each
    print(f"ceiling: batch 1 {ceiling_rates.batch1_images_s:.1f}/s, "
          f"batch 8 {ceiling_rates.batch8_images_s:.1f}/s, "
          f"one call at a time {ceiling_rates.alone_images_s:.1f}/s", flush=True)  # fmt: skip
    runs: list[ServerRun] = []
    pixels = prepared_image()
    with tempfile.TemporaryDirectory(prefix="oip-bench-") as tmp, image_region(pixels) as key:
        folder = Path(tmp)
        binary, header_length, as_json = bodies(folder, pixels)
        in_shm, register = shm_body(folder, pixels), register_region(key, pixels.nbytes)
        plans = [
            ("sluiceway", "max batch 8, 2 slots x 1 ORT thread (a call made alone: 2, "
             "`wide = true`), 1 process, memory arena on", "binary",
             lambda p: sluiceway_server(folder, 8, p)),
            ("sluiceway-unbatched", "max batch 1, 2 slots x 1 ORT thread, memory arena on",
             "binary", lambda p: sluiceway_server(folder, 1, p)),
            ("sluiceway-one-core", "as sluiceway, every call on 1 ORT thread (`wide = false`)",
             "binary", lambda p: sluiceway_server(folder, 8, p, wide=False)),
            (SHM, "as sluiceway, the image in a shared memory region registered once "
             "(`SLUICEWAY_ALLOW_CLIENT_SHM=true`): each request sends its JSON header only, and "
             "the answer is binary", "shm", lambda p: sluiceway_server(folder, 8, p, shm=True)),
            ("sluiceway-no-arena", "as sluiceway, a repository's default (no memory arena)",
             "binary", lambda p: sluiceway_server(folder, 8, p, arena=False)),
            ("kserve", "kserve 0.21.0, 2 uvicorn workers x 1 ORT thread. Its REST decoder "
             "turns a binary tensor into a Python list before the model sees it "
             "(`InferRequest.from_bytes` calls `set_data_from_numpy(..., binary_data=False)`: "
             "84 % of its CPU under py-spy at 4 clients, 2026-12-02); no setting avoids it. Its "
             "gRPC form does not, see `bench/grpc`", "binary",
             lambda p: kserve_server(args.venvs, p)),
            ("mlserver", "mlserver 1.7.1, adaptive batching 8 / 5 ms, 2 parallel workers x 1 "
             "ORT thread", "json", lambda p: mlserver_server(args.venvs, folder, p)),
            ("litserve", "litserve 0.2.19, 2 inference worker processes (one per core) x 1 "
             "ORT thread, 2 HTTP processes, batching 8 / 5 ms. Not a server of the protocol: a "
             "LitAPI that reads the same binary body (`servers/litserve_app.py`), to check the "
             "issue's word that LitServe sits near the ceiling. Each request's body goes to a "
             "worker through a multiprocessing manager's queue (pickled twice, through a third "
             "process)", "binary", lambda p: litserve_server(args.venvs, p)),
            ("sluiceway-json", "as sluiceway, JSON tensors", "json",
             lambda p: sluiceway_server(folder, 8, p)),
            (BARE, BARE_SETUP, "binary", bare_server),
            (FLOOR, "as sluiceway, the model replaced by a near-free one with its tensors (the "
             "image's first 1000 values as logits), calls on the model threads: the serving "
             "cost alone", "binary",
             lambda p: sluiceway_server(folder, 8, p, model_file=floor_model(folder))),
        ]  # fmt: skip
        for group in groups(plans, args.only):
            ready = []
            for name, setup, encoding, build in group:
                run = ServerRun(name, setup, encoding)
                runs.append(run)
                port = free_port()
                try:
                    command, env = build(port)
                except Exception as error:
                    run.error = f"{type(error).__name__}: {error}"
                    continue
                body, length = {
                    "binary": (binary, header_length),
                    "json": (as_json, None),
                    "shm": (in_shm, None),
                }[encoding]
                checked = None if name == FLOOR else expected
                prepare = register if encoding == "shm" else None
                ready.append((run, command, env, port, body, length, checked, prepare))
            before = len(samples) - 1
            measure(ready, args, samples)
            # The machine's speed moves within minutes: bracket each group with the ceiling.
            samples.append(ceiling(args.ceiling_s)[0])
            for run, *_ in ready:
                run.nearby_ceiling_images_s = max(sample.best for sample in samples[before:])
            print(f"ceiling: {samples[-1].best:.1f}/s", flush=True)
        overhead: dict[str, Any] = {}
        if not args.only or "overhead" in args.only:
            overhead = protocol_overhead(folder, args)
            print(f"overhead: {overhead}", flush=True)
    samples.append(ceiling(args.ceiling_s)[0])
    report(started, highest(samples), runs, overhead, args, samples)


def rewrite_report(args: argparse.Namespace) -> None:
    """REPORT.md and the plot again from ``results.json`` (no measurement)."""
    saved = json.loads((args.out / "results.json").read_text())
    runs = [
        ServerRun(
            server["name"],
            server["setup"],
            server["encoding"],
            [Level(**level) for level in server["levels"]],
            server["error"],
            server.get("nearby_ceiling_images_s", 0.0),
        )
        for server in saved["servers"]
    ]
    args.duration = saved["duration_s_per_level"]
    started = dt.datetime.fromisoformat(saved["started"])
    samples = [Ceiling(**sample) for sample in saved.get("ceiling_samples", [])]
    ceiling_rates = Ceiling(**saved["ceiling"])
    if args.ceiling_again:  # the end-of-run ceiling, for a run made before it was measured
        samples.append(ceiling(args.ceiling_s)[0])
        ceiling_rates = highest([ceiling_rates, samples[-1]])
    report(started, ceiling_rates, runs, saved["protocol_overhead"], args, samples)


def _alone(samples: list[Ceiling]) -> str:
    """The bound one client puts on any server: one call at a time, on both cores, against
    the ceiling measured with it (each measurement's own: the machine's speed moves)."""
    measured = [sample for sample in samples if sample.alone_images_s]
    if not measured:
        return ""
    rates = [sample.alone_images_s for sample in measured]
    ratios = sorted(sample.alone_images_s / sample.best for sample in measured)
    return (
        " One call at a time on both cores (two spinning ONNX Runtime threads, as a server's "
        f"lone call), measured with each ceiling: {min(rates):.1f}-{max(rates):.1f} images/s, "
        f"**{ratios[0]:.2f}-{ratios[-1]:.2f}x** the ceiling measured with it (median "
        f"{statistics.median(ratios):.2f}x): the most 1 client can get from any server, before "
        "any serving cost."
    )


def highest(samples: list[Ceiling]) -> Ceiling:
    """The highest ceiling measured, per batch size: other work on a shared machine can only
    lower one, and a lowered ceiling would flatter every server."""
    return Ceiling(
        max(sample.batch1_images_s for sample in samples),
        max(sample.batch8_images_s for sample in samples),
        max(sample.alone_images_s for sample in samples),
    )


def report(
    started: dt.datetime,
    ceiling: Ceiling,
    runs: list[ServerRun],
    overhead: dict[str, Any],
    args: argparse.Namespace,
    samples: list[Ceiling],
) -> None:
    results = {
        "date": started.date().isoformat(),
        "started": started.isoformat(),
        "machine": machine(),
        "shared_machine": True,
        "duration_s_per_level": args.duration,
        "ceiling": asdict(ceiling),
        "ceiling_samples": [asdict(sample) for sample in samples],
        "servers": [asdict(run) for run in runs],
        "protocol_overhead": overhead,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    best = ceiling.best
    floor = next((run for run in runs if run.name == FLOOR), None)
    runs = [run for run in runs if run.name != FLOOR]  # not the model: its own paragraph
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        if not run.levels:
            continue
        xs = [level.concurrency for level in run.levels]
        left.plot(xs, [level.rps for level in run.levels], marker="o", label=run.name)
        right.plot(xs, [level.p95_ms for level in run.levels], marker="o", label=run.name)
    left.axhline(ceiling.batch8_images_s, color="grey", linestyle="--", label="ceiling (batch 8)")
    left.axhline(ceiling.batch1_images_s, color="grey", linestyle=":", label="ceiling (batch 1)")
    for axis, title in ((left, "images/s"), (right, "p95 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(args.out / "oip.png", dpi=110)
    lines = [
        "# Open Inference Protocol benchmark",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC, {machine()}. The machine was shared with other work "
        "(other benchmarks wait on the same lock, but builds and tests may run): read ratios "
        "within this run, not absolute numbers. Generated by `bench/oip/run.py`.",
        "",
        "The ImageNet MobileNetV2 ONNX file, one prepared 224x224 image per request, over "
        f"`POST /v2/models/{MODEL}/infer`; `wrk` closed loop, {args.duration:g} s per level, "
        "for every server (Triton's `perf_analyzer` has no wheel that runs on this Debian's "
        "glibc: see `run.py`).",
        "",
        "Ceiling (tight loop, two threads, tensor in memory; measured before the first server "
        "and after each, the highest kept, as other work can only lower it): batch 1 "
        f"**{ceiling.batch1_images_s:.1f}** images/s, batch 8 **{ceiling.batch8_images_s:.1f}** "
        f"images/s (batching gains {ceiling.batch8_images_s / ceiling.batch1_images_s:.2f}x)."
        + _spread(samples)
        + _alone(samples),
        "",
        "| server | setup | encoding |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {run.name} | {run.setup} | {run.encoding} |" for run in runs]
    lines += [
        "",
        f"x ceiling: against the better of the two ({best:.1f} images/s); x nearby: against the "
        "better ceiling measured just before and just after that server (the machine's speed "
        f"while it ran); {', '.join(TOGETHER)} are measured level by level in turn, and each "
        "level against the better ceiling measured just before and just after its round. "
        "wrk %: the share of the "
        "machine's CPU the load generator itself used (the ceiling had both cores to itself); "
        "x ceiling w/o wrk: req/s against the ceiling scaled to the cores wrk left. CPU "
        "bound: the req/s the server's CPU per request would give if it used every cycle of "
        "the cores wrk left, against the ceiling: the most it can reach without spending less "
        "per request (the gap to x ceiling w/o wrk is CPU left idle).",
        "",
        "| server | clients | req/s | x ceiling | x nearby | x ceiling w/o wrk | CPU bound "
        "| p50 ms | p95 ms | p99 ms | failures | CPU ms/req | wrk % | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    cores = os.cpu_count() or 1
    for run in runs:
        if run.error:
            lines.append(f"| {run.name} | error: {run.error} | | | | | | | | | | | | |")
        for level in run.levels:
            left = best * max(1e-9, 1 - level.wrk_cpu_share)
            bound = cores * (1 - level.wrk_cpu_share) * 1000 / max(1e-9, level.cpu_ms_per_request)
            nearby = _nearby(run, level)
            lines.append(
                f"| {run.name} | {level.concurrency} | {level.rps:.1f} | {level.rps / best:.2f} | "
                f"{f'{level.rps / nearby:.2f}' if nearby else ''} | "
                f"{level.rps / left:.2f} | {bound / best:.2f} | "
                f"{level.p50_ms:.1f} | "
                f"{level.p95_ms:.1f} | {level.p99_ms:.1f} | {level.failures} | "
                f"{level.cpu_ms_per_request:.1f} | {100 * level.wrk_cpu_share:.1f} | "
                f"{level.rss_mb:.0f} |"
            )
    yardstick = yardstick_table(runs, best)
    if yardstick:
        lines += ["", *yardstick]
    if floor is not None:
        lines += ["", *floor_table(floor, best, cores)]
    if overhead:
        lines += ["", *overhead_table(overhead)]
    lines += [
        "",
        "![throughput and p95](oip.png)",
        "",
    ]
    (args.out / "REPORT.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
