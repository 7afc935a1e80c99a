"""What every peer server shares, so each runs the same model code and the same cost model.

Imported by the peer servers in their own virtualenvs (numpy, scikit-learn, onnxruntime and
Pillow installed there); Sluiceway itself is not imported. The kiosk's simulated costs are the
seed's (MISSION.md §1): a fit costs 2.0 s, a call over n query vectors 0.2 + 0.05·(n−1) s, and
at most ``SLOTS`` calls run at once per process (Sluiceway's default compute slots), as on that
many GPUs. The image model is the packaged MobileNetV2 ONNX file, preprocessed as torchvision's
evaluation transform does it, the way a user would write it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

FIT_COST_S = 2.0
BASE_COST_S = 0.2
PER_QUERY_COST_S = 0.05
SLOTS = 256
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def call_cost(queries: int) -> float:
    """The simulated cost of one inference call over ``queries`` vectors."""
    return BASE_COST_S + PER_QUERY_COST_S * (queries - 1)


def parse_kiosk(body: dict[str, Any]) -> tuple[str, np.ndarray, np.ndarray]:
    """(training-set key, training rows, query vectors) of one kiosk request."""
    training = np.asarray(body["training_data"]["training_data"], dtype=np.float64)
    queries = np.atleast_2d(np.asarray(body["query_input"]["query_input"], dtype=np.float64))
    key = hashlib.blake2b(training.tobytes(), digest_size=16).hexdigest()
    return key, training, queries


def fit(training: np.ndarray) -> KNeighborsClassifier:
    """The restaurant's KNN (k=3); the caller pays the simulated fit cost."""
    return KNeighborsClassifier(n_neighbors=3).fit(training[:, :-1], training[:, -1])


class AsyncTenants:
    """Per-restaurant models for an asyncio server: fitted once per key, calls under a slot cap."""

    def __init__(self) -> None:
        self.models: dict[str, KNeighborsClassifier] = {}
        self.fitting: dict[str, asyncio.Task[KNeighborsClassifier]] = {}
        self.slots = asyncio.Semaphore(SLOTS)

    async def model(self, key: str, training: np.ndarray) -> KNeighborsClassifier:
        model = self.models.get(key)
        if model is not None:
            return model
        task = self.fitting.get(key)
        if task is None:
            task = self.fitting[key] = asyncio.ensure_future(self._fit(key, training))
        return await asyncio.shield(task)

    async def _fit(self, key: str, training: np.ndarray) -> KNeighborsClassifier:
        async with self.slots:
            await asyncio.sleep(FIT_COST_S)
        model = self.models[key] = fit(training)
        return model

    async def call(self, model: KNeighborsClassifier, queries: np.ndarray) -> list[int]:
        """One inference call over ``queries`` (one or many requests' vectors)."""
        async with self.slots:
            await asyncio.sleep(call_cost(len(queries)))
        return [int(label) for label in model.predict(queries)]


class ThreadTenants:
    """The same for a server whose predict step is synchronous: sleeps in threads, a lock per
    key so a training set is fitted once, a semaphore for the slot cap."""

    def __init__(self) -> None:
        self.models: dict[str, KNeighborsClassifier] = {}
        self.locks: dict[str, threading.Lock] = {}
        self.guard = threading.Lock()
        self.slots = threading.BoundedSemaphore(SLOTS)

    def model(self, key: str, training: np.ndarray) -> KNeighborsClassifier:
        model = self.models.get(key)
        if model is not None:
            return model
        with self.guard:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            model = self.models.get(key)
            if model is None:
                with self.slots:
                    time.sleep(FIT_COST_S)
                model = self.models[key] = fit(training)
        return model

    def call(self, model: KNeighborsClassifier, queries: np.ndarray) -> list[int]:
        with self.slots:
            time.sleep(call_cost(len(queries)))
        return [int(label) for label in model.predict(queries)]


class ImageNet:
    """MobileNetV2 on ONNX Runtime, torchvision's eval preprocessing, top-1 in Keras spelling."""

    def __init__(self, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            os.environ["PEER_MODEL"], options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        with open(os.environ["PEER_LABELS"], encoding="utf-8") as file:
            self.labels: list[str] = json.load(file)

    @staticmethod
    def preprocess(data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        width, height = image.size
        scale = 256 / min(width, height)
        image = image.resize(
            (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR
        )
        width, height = image.size
        left, top = (width - 224) // 2, (height - 224) // 2
        image = image.crop((left, top, left + 224, top + 224))
        pixels = (np.asarray(image, np.float32) / 255 - MEAN) / STD
        return pixels.transpose(2, 0, 1)

    def top1(self, batch: np.ndarray) -> list[dict[str, Any]]:
        (logits,) = self.session.run(None, {self.input: batch})
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        best = probabilities.argmax(axis=1)
        return [
            {"success": True, "prediction": self.labels[i], "score": round(float(p[i]), 4)}
            for i, p in zip(best, probabilities, strict=True)
        ]


_DOWNLOADS = ThreadPoolExecutor(16)


class Birds:
    """The AIY birds model on LiteRT (the bird API, MISSION.md §2), written the obvious way:
    download with the standard library, decode and resize with Pillow (the model card's plain
    224×224 resize, no crop), one interpreter call per batch, top-k names and scores."""

    def __init__(self, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(
            model_path=os.environ["PEER_BIRDS_MODEL"], num_threads=threads
        )
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = 1
        self.lock = threading.Lock()  # an interpreter runs one call at a time
        with open(os.environ["PEER_BIRDS_LABELS"], encoding="utf-8") as file:
            self.labels: list[str] = json.load(file)

    @staticmethod
    def download(url: str) -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                data: bytes = response.read()
                return data
        except (OSError, ValueError):
            return None

    @staticmethod
    def preprocess(data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        return np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), np.uint8)

    @classmethod
    def load(cls, url: str) -> np.ndarray | None:
        """One URL's pixels, or None if it cannot be downloaded or decoded."""
        data = cls.download(url)
        try:
            return None if data is None else cls.preprocess(data)
        except (OSError, ValueError):
            return None

    @classmethod
    def fetch(cls, urls: list[str]) -> tuple[list[str], list[np.ndarray], list[str]]:
        """(URLs that decoded, their pixels, URLs that failed); a request's downloads run
        at once in a small thread pool, as a user would write it."""
        good, pixels, failed = [], [], []
        for url, loaded in zip(urls, _DOWNLOADS.map(cls.load, urls), strict=True):
            if loaded is None:
                failed.append(url)
            else:
                good.append(url)
                pixels.append(loaded)
        return good, pixels, failed

    def top_k(self, batch: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Each image's ``k`` best birds, the scores the model's uint8 output over 256."""
        if len(batch) == 0:
            return []
        with self.lock:
            if len(batch) != self.batch:
                self.interpreter.resize_tensor_input(self.input["index"], list(batch.shape))
                self.interpreter.allocate_tensors()
                self.batch = len(batch)
            self.interpreter.set_tensor(self.input["index"], batch)
            self.interpreter.invoke()
            scores = self.interpreter.get_tensor(self.output["index"]).astype(np.float32) / 256
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [
            [{"bird_name": self.labels[i], "score": float(row[i])} for i in picks]
            for picks, row in zip(best, scores, strict=True)
        ]


def bird_answer(
    good: list[str], results: list[list[dict[str, Any]]], failed: list[str], started: float
) -> dict[str, Any]:
    """The bird API's answer (MISSION.md §2)."""
    return {
        "successful_results": dict(zip(good, results, strict=True)),
        "failed_results": failed,
        "time_taken": time.perf_counter() - started,
        "errors": [],
    }
