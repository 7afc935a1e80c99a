"""Ray Serve, as its documentation recommends for throughput on a CPU machine.

    python -m bench.peers.servers.ray_app --port PORT --workload kiosk|upload|birds

- A local Ray with both cores (``ray.init(num_cpus=2, include_dashboard=False)``), two replicas
  reserving one CPU each (the performance guide: reserve cores per replica), and
  ``max_ongoing_requests`` raised for async code (the default of 5 throttles 250 clients).
- Kiosk: ``@serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005, max_concurrent_batches=8)``
  on an async method that groups a batch by training set and runs each restaurant's simulated
  call concurrently; a dict caches fitted models per replica. (Serve's model multiplexing keys on
  a header the kiosk does not send; using it would need a second, ingress deployment.)
- Upload: a FastAPI ingress taking ``UploadFile``, decoding per request, and a ``@serve.batch``
  of up to 8 arrays per ONNX Runtime call, one thread per replica.
- Birds: a FastAPI ingress taking the bird body; a request's downloads at once in a small thread
  pool (off the replica's event loop); each image joins a ``@serve.batch`` of up to 8 images per
  LiteRT call, one thread per replica.
"""

# No ``from __future__ import annotations``: FastAPI must see ``UploadFile`` itself inside the
# ingress class, or it reads the upload as a query parameter.
import argparse
import asyncio
import os
import time
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import ray
from fastapi import FastAPI, File, UploadFile
from ray import serve
from starlette.requests import Request

from bench.peers.servers.common import AsyncTenants, Birds, ImageNet, bird_answer, parse_kiosk

# Ray is installed only in this server's own virtualenv (bench/peers/run.py), so mypy sees its
# decorators as Any: each @serve.batch below ignores that (untyped-decorator), and only that.

upload_app = FastAPI()
birds_app = FastAPI()


@serve.deployment(num_replicas=2, max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
class Kiosk:
    def __init__(self) -> None:
        self.tenants = AsyncTenants()

    async def __call__(self, request: Request) -> dict[str, Any]:
        labels = await self.classify(parse_kiosk(await request.json()))
        return {"classification_result": labels}

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005, max_concurrent_batches=8)  # type: ignore[untyped-decorator]
    async def classify(self, batch: list[tuple[str, np.ndarray, np.ndarray]]) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for index, (key, _, _) in enumerate(batch):
            groups.setdefault(key, []).append(index)

        async def run(indices: list[int]) -> None:
            key, training, _ = batch[indices[0]]
            model = await self.tenants.model(key, training)
            labels = await self.tenants.call(model, np.concatenate([batch[i][2] for i in indices]))
            start = 0
            for i in indices:
                rows = len(batch[i][2])
                results[i] = labels[start : start + rows]
                start += rows

        results: list[list[int]] = [[] for _ in batch]
        await asyncio.gather(*(run(indices) for indices in groups.values()))
        return results


@serve.deployment(num_replicas=2, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(upload_app)
class Upload:
    def __init__(self) -> None:
        self.model = ImageNet(threads=1)

    @upload_app.post("/predict")
    async def predict(self, file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        pixels = ImageNet.preprocess(await file.read())
        top1: dict[str, Any] = await self.infer(pixels)  # @serve.batch: one caller, one answer
        return top1

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # type: ignore[untyped-decorator]
    async def infer(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        return self.model.top1(np.stack(images))


@serve.deployment(num_replicas=2, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(birds_app)
class BirdAPI:
    def __init__(self) -> None:
        self.model = Birds(threads=1)

    @birds_app.post("/")
    async def classify(self, request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        body = await request.json()
        good, pixels, failed = await asyncio.to_thread(Birds.fetch, body["images"])
        k = int(body.get("k", 3))
        results = await asyncio.gather(*(self.infer(p) for p in pixels))
        return bird_answer(good, [row[:k] for row in results], failed, started)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # type: ignore[untyped-decorator]
    async def infer(self, images: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        return self.model.top_k(np.stack(images), 10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workload", choices=("kiosk", "upload", "birds"), required=True)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    apps = {"kiosk": Kiosk, "upload": Upload, "birds": BirdAPI}
    # @serve.deployment made each class a Deployment, which has bind(); mypy sees the class.
    app = apps[args.workload].bind()  # type: ignore[attr-defined]
    serve.run(app, route_prefix="/", blocking=True)


if __name__ == "__main__":
    main()
