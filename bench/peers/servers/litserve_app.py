"""LitServe, as its documentation recommends for throughput on a CPU machine.

    python -m bench.peers.servers.litserve_app --port PORT --workload kiosk|upload|birds

- ``accelerator="cpu", workers_per_device=2`` (the LitServer docs: on CPU, as many workers as
  cores); LitServe's own batching (``max_batch_size``, ``batch_timeout`` on the LitAPI). LitServe
  rejects async together with batching, so ``predict`` is synchronous: one batch at a time per
  worker.
- Kiosk: one queue of mixed restaurants; ``predict`` groups a batch by training set and runs each
  restaurant's simulated call at once in threads (as on several GPUs); a plain dict caches fitted
  models per worker (LitServe documents no tenant idiom). Queue timeout raised above the 2 s fit.
- Upload: decode in ``decode_request`` (per request), the default ``batch`` stacks the arrays,
  one ONNX Runtime call per batch with one thread per worker (two workers on two cores).
- Birds: downloads and decoding in ``decode_request`` (a request's URLs at once in a small
  thread pool), batches of up to 2 requests (10 images) per LiteRT call, one thread per worker.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import litserve as ls
import numpy as np

from bench.peers.servers.common import (
    SLOTS,
    Birds,
    ImageNet,
    ThreadTenants,
    bird_answer,
    parse_kiosk,
)

# litserve is installed only in this server's own virtualenv (bench/peers/run.py), so mypy sees
# ls.LitAPI as Any: each subclass below ignores that (misc), and only that.


class KioskAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.tenants = ThreadTenants()
        self.pool = ThreadPoolExecutor(SLOTS)

    # No annotation on ``request``: LitServe then hands over the parsed body (JSON or form).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return parse_kiosk(request)

    def predict(self, batch: list[tuple[str, np.ndarray, np.ndarray]]) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for index, (key, _, _) in enumerate(batch):
            groups.setdefault(key, []).append(index)

        def run(indices: list[int]) -> list[list[int]]:
            key, training, _ = batch[indices[0]]
            model = self.tenants.model(key, training)
            queries = np.concatenate([batch[i][2] for i in indices])
            labels = self.tenants.call(model, queries)
            out, start = [], 0
            for i in indices:
                rows = len(batch[i][2])
                out.append(labels[start : start + rows])
                start += rows
            return out

        results: list[list[int]] = [[] for _ in batch]
        futures = {tuple(ix): self.pool.submit(run, ix) for ix in groups.values()}
        for indices, future in futures.items():
            for i, labels in zip(indices, future.result(), strict=True):
                results[i] = labels
        return results

    def encode_response(self, output: list[int]) -> dict[str, Any]:
        return {"classification_result": output}


class UploadAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = ImageNet(threads=1)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return ImageNet.preprocess(request["file"].file.read())

    def predict(self, batch: np.ndarray) -> list[dict[str, Any]]:
        return self.model.top1(np.asarray(batch, dtype=np.float32))

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class BirdAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = Birds(threads=1)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        good, pixels, failed = Birds.fetch(request["images"])
        return started, good, pixels, failed, int(request.get("k", 3))

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        pixels = [p for _, _, images, _, _ in batch for p in images]
        k = max(item[4] for item in batch)
        results = self.model.top_k(np.stack(pixels) if pixels else np.empty((0,)), k)
        answers, start = [], 0
        for started, good, images, failed, wanted in batch:
            mine = [row[:wanted] for row in results[start : start + len(images)]]
            start += len(images)
            answers.append(bird_answer(good, mine, failed, started))
        return answers

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workload", choices=("kiosk", "upload", "birds"), required=True)
    args = parser.parse_args()
    if args.workload == "kiosk":
        api: ls.LitAPI = KioskAPI(max_batch_size=256, batch_timeout=0.005, api_path="/classify")
    elif args.workload == "upload":
        api = UploadAPI(max_batch_size=8, batch_timeout=0.005, api_path="/predict")
    else:
        api = BirdAPI(max_batch_size=2, batch_timeout=0.005, api_path="/")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
