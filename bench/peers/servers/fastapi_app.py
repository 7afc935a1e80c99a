"""The plain FastAPI server every user starts from: no batching, one process, the obvious code.

uvicorn bench.peers.servers.fastapi_app:app --port PORT
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, UploadFile

from bench.peers.servers.common import AsyncTenants, Birds, ImageNet, bird_answer, parse_kiosk

app = FastAPI()
tenants = AsyncTenants()
imagenet = ImageNet() if "PEER_MODEL" in os.environ else None
# One interpreter with LiteRT's threads on both cores, shared behind its lock: the obvious code.
birds = Birds(threads=2) if "PEER_BIRDS_MODEL" in os.environ else None


@app.api_route("/classify", methods=["GET", "POST"])
async def classify(request: Request) -> dict[str, Any]:
    key, training, queries = parse_kiosk(await request.json())
    model = await tenants.model(key, training)
    return {"classification_result": await tenants.call(model, queries)}


@app.post("/predict")
def predict(file: UploadFile) -> dict[str, Any]:
    assert imagenet is not None, "set PEER_MODEL and PEER_LABELS"
    pixels = ImageNet.preprocess(file.file.read())
    return imagenet.top1(np.expand_dims(pixels, 0))[0]


@app.post("/")
def classify_birds(body: dict[str, Any]) -> dict[str, Any]:
    assert birds is not None, "set PEER_BIRDS_MODEL and PEER_BIRDS_LABELS"
    started = time.perf_counter()
    good, pixels, failed = Birds.fetch(body["images"])
    results = birds.top_k(np.stack(pixels) if pixels else np.empty((0,)), int(body.get("k", 3)))
    return bird_answer(good, results, failed, started)
