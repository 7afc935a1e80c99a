"""The Open Inference Protocol over gRPC against the same server over HTTP, one generator.

One Sluiceway server listens on both (``SLUICEWAY_GRPC_PORT``); ``h2load`` (nghttp2's C load
generator, Debian's ``nghttp2-client``) drives both: HTTP/1.1 with Triton's binary tensors
(``--h1``), and gRPC over HTTP/2 (prior knowledge, one stream per connection: a closed loop like
wrk's), the request a ``ModelInferRequest`` with ``raw_input_contents`` as tritonclient sends
it. Rounds alternate HTTP and gRPC at each level, so both see the same minutes of this shared
machine.

Two models: the ImageNet MobileNetV2 ONNX file (one prepared 224x224 image, 600 KB a request;
the tight-loop ceiling is measured before and after, as in bench/oip), and the trivial model of
bench/oip (a 1-element FP32 identity), where the transport is nearly all of the cost.

Every answer is checked: h2load's status counts for HTTP, and for gRPC (whose errors arrive
with HTTP status 200) the server's own ``sluiceway_requests`` count of ``grpc:ModelInfer``
calls answered ``200`` against the requests h2load completed.

    python -m bench.grpc.run [--seconds 6] [--rounds 2] [--levels 1,4,16]

Writes ``bench/grpc/REPORT.md``, ``grpc.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadtest import ProcessWatch, free_port, machine, stop
from bench.oip.run import (
    MODEL,
    TRIVIAL,
    ceiling,
    prepared_image,
    sluiceway_server,
    sluiceway_trivial_server,
    start_server,
    trivial_model,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Round:
    """One timed round of one transport at one level."""

    model: str
    transport: str
    clients: int
    requests: int
    rps: float
    failures: int
    p50_ms: float
    p95_ms: float
    server_cpu_ms: float
    """The server's CPU time per request."""
    generator_share: float
    """h2load's CPU time over the round's wall time times the cores."""


def grpc_body(folder: Path, name: str, model: str, tensor: str, array: np.ndarray) -> Path:
    """A gRPC message (the 5-byte frame prefix and a ``ModelInferRequest``) in a file."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=tensor, datatype="FP32", shape=list(array.shape))
    request.raw_input_contents.append(array.astype("<f4").tobytes())
    message = request.SerializeToString()
    path = folder / f"{name}.grpc"
    path.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    return path


def http_body(folder: Path, name: str, tensor: str, array: np.ndarray) -> tuple[Path, int]:
    """Triton's binary request (JSON header, then the tensor's bytes) and its header length."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": tensor,
                    "shape": list(array.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    path = folder / f"{name}.http"
    path.write_bytes(header + array.astype("<f4").tobytes())
    return path, len(header)


def h2load(
    url: str, body: Path, headers: list[str], clients: int, seconds: float, h1: bool, log: Path
) -> tuple[dict[str, int], list[float], float]:
    """Run h2load; its counts, each request's latency (ms) and its own CPU seconds."""
    command = [
        "h2load", f"-c{clients}", f"-t{min(2, clients)}", "-m1", f"-D{round(seconds)}",
        "-d", str(body), f"--log-file={log}",
    ]  # fmt: skip
    for header in headers:
        command += ["-H", header]
    if h1:
        command.append("--h1")
    command.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    if counts is None:
        raise RuntimeError(f"h2load printed no counts: {output[-500:]}")
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    found = dict(zip(keys, (int(value) for value in counts.groups()), strict=True))
    latencies = []
    for line in log.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "200":  # start time, status, latency in µs
            latencies.append(int(fields[2]) / 1000)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return found, latencies, cpu


def grpc_calls(base: str) -> dict[str, int]:
    """The server's count of ``ModelInfer`` calls by the REST status they answered."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("sluiceway_requests_total{") and 'route="grpc:ModelInfer"' in line:
            status = re.search(r'status="(\d+)"', line)
            if status is not None:
                counts[status.group(1)] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def measure_round(
    model: str,
    transport: str,
    clients: int,
    args: argparse.Namespace,
    base: str,
    grpc_port: int,
    body: Path,
    header_length: int,
    pid: int,
    folder: Path,
) -> Round:
    log = folder / f"{model}-{transport}-{clients}.log"
    if transport == "http":
        url = f"{base}/v2/models/{model}/infer"
        headers = [
            "content-type: application/octet-stream",
            f"inference-header-content-length: {header_length}",
        ]
    else:
        url = f"http://127.0.0.1:{grpc_port}{METHOD}"
        headers = ["content-type: application/grpc", "te: trailers"]
    calls_before = grpc_calls(base)
    with ProcessWatch(pid) as watch:
        counts, latencies, generator_cpu = h2load(
            url, body, headers, clients, args.seconds, transport == "http", log
        )
    done = counts["done"]
    if transport == "grpc":
        # h2load sees HTTP/2 status 200 for every gRPC answer: the server counts the others.
        calls = grpc_calls(base)
        # 499: calls h2load abandoned when its time ran out (HTTP's are not counted either).
        refused = sum(
            n - calls_before.get(k, 0) for k, n in calls.items() if k not in ("200", "499")
        )
        failures = refused + counts["errored"] + counts["timeout"]
    else:
        failures = done - counts["succeeded"] + counts["errored"] + counts["timeout"]
    cores = 2
    return Round(
        model=model,
        transport=transport,
        clients=clients,
        requests=done,
        rps=done / args.seconds,
        failures=failures,
        p50_ms=float(np.percentile(latencies, 50)) if latencies else 0.0,
        p95_ms=float(np.percentile(latencies, 95)) if latencies else 0.0,
        server_cpu_ms=watch.cpu_s * 1000 / max(done, 1),
        generator_share=generator_cpu / (args.seconds * cores),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--trivial-clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("needs h2load: apt-get install nghttp2-client")
    levels = [int(level) for level in args.levels.split(",")]
    started = dt.datetime.now(dt.UTC)
    rounds: list[Round] = []
    ceilings = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        ceilings.append(ceiling(4.0)[0])
        pixels = prepared_image()
        image_http, image_header = http_body(folder, "image", "input", pixels)
        image_grpc = grpc_body(folder, "image", MODEL, "input", pixels)
        one = np.array([[0.5]], dtype=np.float32)
        trivial_http, trivial_header = http_body(folder, "trivial", "x", one)
        trivial_grpc = grpc_body(folder, "trivial", TRIVIAL, "x", one)
        setups = [
            (MODEL, sluiceway_server(folder, 8, free_port()), levels, image_http, image_header,
             image_grpc),
            (TRIVIAL, sluiceway_trivial_server(folder, trivial_model(folder), free_port()),
             [args.trivial_clients], trivial_http, trivial_header, trivial_grpc),
        ]  # fmt: skip
        for model, (command, env), model_levels, http, header, grpc in setups:
            port = int(command[command.index("--port") + 1])
            grpc_port = free_port()
            env = {**env, "SLUICEWAY_GRPC_PORT": str(grpc_port)}
            base = f"http://127.0.0.1:{port}"
            process = start_server(command, env)
            try:
                wait_ready(base, process, model=model)
                for clients in model_levels:
                    for _ in range(args.rounds):
                        for transport, body in (("http", http), ("grpc", grpc)):
                            rounds.append(
                                measure_round(
                                    model,
                                    transport,
                                    clients,
                                    args,
                                    base,
                                    grpc_port,
                                    body,
                                    header,
                                    process.pid,
                                    folder,
                                )
                            )
                            print(rounds[-1], flush=True)
            finally:
                stop(process)
        ceilings.append(ceiling(4.0)[0])
    results = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds": args.seconds,
        "ceilings": [asdict(c) for c in ceilings],
        "rounds": [asdict(r) for r in rounds],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, args.out)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(results: dict[str, Any], out: Path) -> None:
    rounds = [Round(**r) for r in results["rounds"]]
    ceilings = [max(c["batch1_images_s"], c["batch8_images_s"]) for c in results["ceilings"]]
    keys = sorted({(r.model, r.clients) for r in rounds}, key=lambda k: (k[0] != MODEL, k[1]))
    lines = [
        "# The Open Inference Protocol over gRPC and over HTTP, one server, one generator",
        "",
        f"{results['started']} UTC, {results['machine']}. Generated by `bench/grpc/run.py`; "
        "read ratios within this run (a shared machine).",
        "",
        "One Sluiceway server listening on both; `h2load` drives both (HTTP/1.1 binary tensors "
        "with `--h1`; gRPC `ModelInfer` with `raw_input_contents` over HTTP/2, one stream per "
        "connection), rounds alternating at each level. Medians of the rounds; the gRPC/HTTP "
        "column is the ratio of the medians. Failures: HTTP answers other than 200, and gRPC "
        "calls the server answered with an error (h2load sees HTTP/2 status 200 for every gRPC "
        "answer), apart from those h2load abandoned in flight when its time ran out.",
        "",
        "ImageNet tight-loop ceiling (bench/oip's, two threads, tensor in memory), before and "
        f"after: {ceilings[0]:.1f} and {ceilings[-1]:.1f} images/s.",
        "",
        "| model | clients | transport | req/s | gRPC/HTTP | p50 ms | p95 ms | failures | "
        "server CPU ms/req | h2load % |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, clients in keys:
        medians = {}
        for transport in ("http", "grpc"):
            mine = [
                r
                for r in rounds
                if (r.model, r.clients, r.transport) == (model, clients, transport)
            ]
            medians[transport] = _median([r.rps for r in mine])
            ratio = (
                f"{medians['grpc'] / medians['http']:.2f}"
                if transport == "grpc" and medians["http"]
                else ""
            )
            lines.append(
                f"| {model} | {clients} | {transport} | {medians[transport]:.1f} | {ratio} | "
                f"{_median([r.p50_ms for r in mine]):.2f} | "
                f"{_median([r.p95_ms for r in mine]):.2f} | "
                f"{sum(r.failures for r in mine)} | "
                f"{_median([r.server_cpu_ms for r in mine]):.3f} | "
                f"{100 * _median([r.generator_share for r in mine]):.1f} |"
            )
    lines += ["", "![gRPC and HTTP](grpc.png)", ""]
    (out / "REPORT.md").write_text("\n".join(lines))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, model in zip(axes, (MODEL, TRIVIAL), strict=True):
        levels = sorted({r.clients for r in rounds if r.model == model})
        for transport in ("http", "grpc"):
            values = [
                _median(
                    [
                        r.rps
                        for r in rounds
                        if (r.model, r.clients, r.transport) == (model, c, transport)
                    ]
                )
                for c in levels
            ]
            axis.plot(levels, values, marker="o", label=transport)
        if model == MODEL:
            axis.axhline(max(ceilings), linestyle="--", color="grey", label="ceiling")
        axis.set_title(model)
        axis.set_xlabel("clients")
        axis.set_ylabel("req/s")
        axis.set_xscale("log", base=2)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "grpc.png", dpi=100)


if __name__ == "__main__":
    main()
