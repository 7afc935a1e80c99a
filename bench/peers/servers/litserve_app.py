"""LitServe, as its documentation recommends for throughput on a CPU machine.

    python -m bench.peers.servers.litserve_app --port PORT --workload kiosk|upload

- ``accelerator="cpu", workers_per_device=2`` (the LitServer docs: on CPU, as many workers as
  cores); LitServe's own batching (``max_batch_size``, ``batch_timeout`` on the LitAPI). LitServe
  rejects async together with batching, so ``predict`` is synchronous: one batch at a time per
  worker.
- Kiosk: one queue of mixed restaurants; ``predict`` groups a batch by training set and runs each
  restaurant's simulated call at once in threads (as on several GPUs); a plain dict caches fitted
  models per worker (LitServe documents no tenant idiom). Queue timeout raised above the 2 s fit.
- Upload: decode in ``decode_request`` (per request), the default ``batch`` stacks the arrays,
  one ONNX Runtime call per batch with one thread per worker (two workers on two cores).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import litserve as ls
import numpy as np

from bench.peers.servers.common import SLOTS, ImageNet, ThreadTenants, parse_kiosk


class KioskAPI(ls.LitAPI):
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


class UploadAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = ImageNet(threads=1)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return ImageNet.preprocess(request["file"].file.read())

    def predict(self, batch: np.ndarray) -> list[dict[str, Any]]:
        return self.model.top1(np.asarray(batch, dtype=np.float32))

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workload", choices=("kiosk", "upload"), required=True)
    args = parser.parse_args()
    if args.workload == "kiosk":
        api: ls.LitAPI = KioskAPI(max_batch_size=256, batch_timeout=0.005, api_path="/classify")
    else:
        api = UploadAPI(max_batch_size=8, batch_timeout=0.005, api_path="/predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
