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
    kserve_server,
    mlserver_server,
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

    server: str
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
    data = re.search(r"\((\d+)\) data", output)
    found["data_bytes"] = int(data.group(1)) if data else 0
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


@dataclass
class Target:
    """Where one round's load goes: a server, a model and a transport."""

    server: str
    model: str
    transport: str
    url: str
    body: Path
    headers: list[str]
    pid: int
    metrics: str | None
    """Sluiceway's base URL, whose metrics count gRPC errors; ``None`` for a peer."""
    answer_bytes: int
    """The least a successful answer's body holds (the output's values)."""


def sluiceway_targets(
    model: str, base: str, grpc_port: int, pid: int, bodies: tuple[Path, int, Path], answer: int
) -> list[Target]:
    http, header_length, grpc = bodies
    return [
        Target(
            "sluiceway", model, "http", f"{base}/v2/models/{model}/infer", http,
            ["content-type: application/octet-stream",
             f"inference-header-content-length: {header_length}"],
            pid, base, answer,
        ),
        Target(
            "sluiceway", model, "grpc", f"http://127.0.0.1:{grpc_port}{METHOD}", grpc,
            GRPC_HEADERS, pid, base, answer,
        ),
    ]  # fmt: skip


GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]


def measure_round(target: Target, clients: int, seconds: float, folder: Path) -> Round:
    log = folder / f"{target.server}-{target.model}-{target.transport}-{clients}.log"
    calls_before = grpc_calls(target.metrics) if target.metrics else {}
    with ProcessWatch(target.pid) as watch:
        counts, latencies, generator_cpu = h2load(
            target.url, target.body, target.headers, clients, seconds,
            target.transport == "http", log,
        )  # fmt: skip
    done = counts["done"]
    failures = done - counts["succeeded"] + counts["errored"] + counts["timeout"]
    if target.transport == "grpc":
        # h2load sees HTTP/2 status 200 for every gRPC answer. Sluiceway counts the errors
        # (499: calls h2load abandoned when its time ran out; HTTP's are not counted either);
        # for a peer, answers too short to hold the output are counted as failures.
        if target.metrics:
            calls = grpc_calls(target.metrics)
            failures += sum(
                n - calls_before.get(k, 0) for k, n in calls.items() if k not in ("200", "499")
            )
        else:
            failures += max(0, done - counts["data_bytes"] // target.answer_bytes)
    cores = 2
    return Round(
        server=target.server,
        model=target.model,
        transport=target.transport,
        clients=clients,
        requests=done,
        rps=done / seconds,
        failures=failures,
        p50_ms=float(np.percentile(latencies, 50)) if latencies else 0.0,
        p95_ms=float(np.percentile(latencies, 95)) if latencies else 0.0,
        server_cpu_ms=watch.cpu_s * 1000 / max(done, 1),
        generator_share=generator_cpu / (seconds * cores),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--trivial-clients", type=int, default=16)
    parser.add_argument("--peers", default="kserve,mlserver", help="'' for none")
    parser.add_argument("--venvs", type=Path, default=Path("/tmp/sluiceway-oip-peers"))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from results.json"
    )
    args = parser.parse_args()
    if args.report_only:
        report(json.loads((args.out / "results.json").read_text()), args.out)
        return
    if shutil.which("h2load") is None:
        raise SystemExit("needs h2load: apt-get install nghttp2-client")
    levels = [int(level) for level in args.levels.split(",")]
    peers = [peer for peer in args.peers.split(",") if peer]
    started = dt.datetime.now(dt.UTC)
    rounds: list[Round] = []
    ceilings = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        ceilings.append(ceiling(4.0)[0])
        pixels = prepared_image()
        image = (*http_body(folder, "image", "input", pixels),
                 grpc_body(folder, "image", MODEL, "input", pixels))  # fmt: skip
        one = np.array([[0.5]], dtype=np.float32)
        trivial = (*http_body(folder, "trivial", "x", one),
                   grpc_body(folder, "trivial", TRIVIAL, "x", one))  # fmt: skip
        # The ImageNet servers all start at once (idle while another is measured), so each
        # level's rounds rotate through them in the same minutes.
        processes = []
        try:
            targets = []
            for name in ["sluiceway", *peers]:
                port, grpc_port = free_port(), free_port()
                if name == "sluiceway":
                    command, env = sluiceway_server(folder, 8, port)
                    env = {**env, "SLUICEWAY_GRPC_PORT": str(grpc_port)}
                elif name == "kserve":
                    command, env = kserve_server(args.venvs, port, grpc_port=grpc_port)
                else:
                    command, env = mlserver_server(args.venvs, folder, port, grpc_port=grpc_port)
                process = start_server(command, env)
                processes.append(process)
                base = f"http://127.0.0.1:{port}"
                wait_ready(base, process)
                if name == "sluiceway":
                    targets += sluiceway_targets(MODEL, base, grpc_port, process.pid, image, 4000)
                else:
                    url = f"http://127.0.0.1:{grpc_port}{METHOD}"
                    targets.append(
                        Target(
                            name,
                            MODEL,
                            "grpc",
                            url,
                            image[2],
                            GRPC_HEADERS,
                            process.pid,
                            None,
                            4000,
                        )
                    )
            for clients in levels:
                for _ in range(args.rounds):
                    for target in targets:
                        rounds.append(measure_round(target, clients, args.seconds, folder))
                        print(rounds[-1], flush=True)
        finally:
            stop(*processes)
        port, grpc_port = free_port(), free_port()
        command, env = sluiceway_trivial_server(folder, trivial_model(folder), port)
        process = start_server(command, {**env, "SLUICEWAY_GRPC_PORT": str(grpc_port)})
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, process, model=TRIVIAL)
            targets = sluiceway_targets(TRIVIAL, base, grpc_port, process.pid, trivial, 4)
            for _ in range(args.rounds):
                for target in targets:
                    rounds.append(measure_round(target, args.trivial_clients, args.seconds, folder))
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


SERIES = (
    ("sluiceway", "http"),
    ("sluiceway", "grpc"),
    ("kserve", "grpc"),
    ("mlserver", "grpc"),
)
"""The report's rows at each level, in order."""


def report(results: dict[str, Any], out: Path) -> None:
    rounds = [Round(**r) for r in results["rounds"]]
    ceilings = [max(c["batch1_images_s"], c["batch8_images_s"]) for c in results["ceilings"]]

    def of(model: str, clients: int, server: str, transport: str) -> list[Round]:
        key = (model, clients, server, transport)
        return [r for r in rounds if (r.model, r.clients, r.server, r.transport) == key]

    lines = [
        "# The Open Inference Protocol over gRPC: Sluiceway's gRPC, its HTTP, and the peers'",
        "",
        f"{results['started']} UTC, {results['machine']}. Generated by `bench/grpc/run.py`; "
        "read ratios within this run (a shared machine).",
        "",
        "`h2load` (nghttp2's C load generator) drives every server: HTTP/1.1 with Triton's "
        "binary tensors (`--h1`), and gRPC `ModelInfer` with `raw_input_contents` over HTTP/2, "
        "one stream per connection (a closed loop, as wrk's). The ImageNet servers run at once, "
        "idle while another is measured, and each level's rounds rotate through them, so all "
        "see the same minutes. Sluiceway as in bench/oip (max batch 8, 2 slots, one process), "
        "with `SLUICEWAY_GRPC_PORT`; KServe 0.21 and MLServer 1.7.1 as in bench/oip (KServe: "
        "2 REST workers, its gRPC server in the main process; MLServer: 2 parallel workers, "
        "adaptive batching 8 / 5 ms), each with its gRPC server on. Medians of the rounds; "
        "x Sluiceway HTTP: req/s against Sluiceway's HTTP at the same level.",
        "",
        "Failures: HTTP answers other than 200; gRPC calls Sluiceway answered with an error "
        "(its metrics: h2load sees HTTP/2 status 200 for every gRPC answer), apart from those "
        "h2load abandoned in flight when its time ran out; for a peer, answers too short to "
        "hold the output's values.",
        "",
        "ImageNet tight-loop ceiling (bench/oip's, two threads, tensor in memory), before and "
        f"after: {ceilings[0]:.1f} and {ceilings[-1]:.1f} images/s.",
        "",
        "| model | clients | server | transport | req/s | x Sluiceway HTTP | p50 ms | p95 ms | "
        "failures | server CPU ms/req | h2load % |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = sorted({(r.model, r.clients) for r in rounds}, key=lambda k: (k[0] != MODEL, k[1]))
    for model, clients in keys:
        baseline = _median([r.rps for r in of(model, clients, "sluiceway", "http")])
        for server, transport in SERIES:
            mine = of(model, clients, server, transport)
            if not mine:
                continue
            rate = _median([r.rps for r in mine])
            lines.append(
                f"| {model} | {clients} | {server} | {transport} | {rate:.1f} | "
                f"{rate / baseline if baseline else 0:.2f} | "
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
        if len(levels) == 1:  # one level (the trivial model): bars, one per series
            names, values = [], []
            for server, transport in SERIES:
                mine = of(model, levels[0], server, transport)
                if mine:
                    names.append(f"{server} {transport}")
                    values.append(_median([r.rps for r in mine]))
            axis.bar(names, values, color=["C0", "C1", "C2", "C3"][: len(names)])
            axis.set_title(f"{model}, {levels[0]} clients")
            axis.set_ylabel("req/s")
            continue
        for server, transport in SERIES:
            values = [_median([r.rps for r in of(model, c, server, transport)]) for c in levels]
            if any(values):
                axis.plot(levels, values, marker="o", label=f"{server} {transport}")
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
