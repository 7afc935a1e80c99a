"""BentoML, as its documentation recommends for throughput on a CPU machine.

    python -m bench.peers.servers.bentoml_app --port PORT --workload kiosk|upload|birds

- ``workers="cpu_count"`` (the docs' advice for CPU-bound services: one process per core).
- Kiosk: an ``async`` API whose parameters are the kiosk body's two fields, so the seed's clients
  call it unchanged; a plain dict caches fitted models per worker (no tenant idiom is
  documented). BentoML's adaptive batching needs a list-shaped body (one batchable parameter),
  which the kiosk contract is not, so each request is its own simulated call.
- Upload: a synchronous API taking the upload as a ``Path`` (BentoML's file input), ONNX Runtime
  with one thread per worker; a batchable API would also need a list-shaped body.
- Birds: a synchronous API whose parameters are the bird body's two fields (``images``, ``k``),
  downloads in a small thread pool, one LiteRT interpreter (one thread) per worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from bench.peers.servers.common import AsyncTenants, Birds, ImageNet, bird_answer, parse_kiosk

# bentoml is installed only in this server's own virtualenv (bench/peers/run.py), so mypy sees
# its decorators as Any: each @bentoml.api below ignores that (untyped-decorator), and only that.


@bentoml.service(workers="cpu_count")
class Kiosk:
    def __init__(self) -> None:
        self.tenants = AsyncTenants()

    @bentoml.api(route="/classify")  # type: ignore[untyped-decorator]
    async def classify(
        self, training_data: dict[str, Any], query_input: dict[str, Any]
    ) -> dict[str, Any]:
        key, training, queries = parse_kiosk(
            {"training_data": training_data, "query_input": query_input}
        )
        model = await self.tenants.model(key, training)
        return {"classification_result": await self.tenants.call(model, queries)}


@bentoml.service(workers="cpu_count")
class Upload:
    def __init__(self) -> None:
        self.model = ImageNet(threads=1)

    @bentoml.api(route="/predict")  # type: ignore[untyped-decorator]
    def predict(self, file: Path) -> dict[str, Any]:
        pixels = ImageNet.preprocess(file.read_bytes())
        return self.model.top1(np.expand_dims(pixels, 0))[0]


@bentoml.service(workers="cpu_count")
class BirdAPI:
    def __init__(self) -> None:
        self.model = Birds(threads=1)

    @bentoml.api(route="/")  # type: ignore[untyped-decorator]
    def classify(self, images: list[str], k: int = 3) -> dict[str, Any]:
        started = time.perf_counter()
        good, pixels, failed = Birds.fetch(images)
        results = self.model.top_k(np.stack(pixels) if pixels else np.empty((0,)), k)
        return bird_answer(good, results, failed, started)


SERVICES = {"kiosk": "Kiosk", "upload": "Upload", "birds": "BirdAPI"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workload", choices=tuple(SERVICES), required=True)
    args = parser.parse_args()
    service = SERVICES[args.workload]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    target = f"bench.peers.servers.bentoml_app:{service}"
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1"]
    command += ["--port", str(args.port)]
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    main()
