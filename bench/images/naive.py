"""The naive bird API: the same work, one image at a time, no batching across requests.

What a straightforward service does: a synchronous endpoint (FastAPI runs it in its thread
pool), images downloaded one after another, each decoded and classified alone on one shared
interpreter behind a lock. Same contract, same preprocessing, same model file.

    python -m bench.images.naive --port PORT --model PATH
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from ai_edge_litert.interpreter import Interpreter
from fastapi import FastAPI

from sluiceway.inputs.pixels import prepare_image
from sluiceway.models.tflite_classifier import BIRDS_INPUT, embedded_labels


def build(model_path: Path) -> FastAPI:
    """The naive app around one interpreter."""
    model = model_path.read_bytes()
    labels = embedded_labels(model, "probability-labels-en.txt")
    interpreter = Interpreter(model_content=model, num_threads=2)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    lock = threading.Lock()
    client = httpx.Client(timeout=10)
    app = FastAPI()

    @app.post("/")
    def classify(body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        k = int(body.get("k", 3))
        successes: dict[str, Any] = {}
        failures: list[str] = []
        for url in body.get("images", []):
            try:
                response = client.get(url)
                response.raise_for_status()
                pixels = prepare_image(response.content, BIRDS_INPUT, 40_000_000)
                with lock:
                    interpreter.set_tensor(input_index, pixels[None])
                    interpreter.invoke()
                    scores = interpreter.get_tensor(output_index)[0].astype(np.float32) / 256
                top = np.argsort(-scores, kind="stable")[:k]
                successes[url] = [{"bird_name": labels[i], "score": float(scores[i])} for i in top]
            except Exception:
                failures.append(url)
        return {
            "successful_results": successes,
            "failed_results": failures,
            "time_taken": time.perf_counter() - started,
            "errors": [],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
