"""A TFLite image classifier on LiteRT (``ai-edge-litert``), downloaded on first use.

The model file is fetched from its URL, checked against its sha256 and cached on disk by the
artifact store; its labels come from the file itself (TFLite metadata appends them as a zip
member). The AIY birds model is the kind this serves today: uint8 NHWC in, uint8 out where
probability = q/256.

Batching: the graph is exported with batch 1, but ``resize_tensor_input`` to n images works and
gives bit-identical outputs (tested). XNNPACK's cost per image does not drop with batch size on
CPU, so batching here saves per-call overhead and lets many requests share one slot; the real
win is keeping both cores busy.

A call made while no other model call computes may run on a wide interpreter, with a thread per
core (``Model.runs_wide``): measured on the AIY birds model (2 cores, one caller, 2026-12-01),
2 XNNPACK threads ran 141-171 images/s against 74-97 on one, at 4-13 % more CPU per image.
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from sluiceway.errors import ModelUnavailable
from sluiceway.inputs.pixels import Fit, ImageInput
from sluiceway.models import cores
from sluiceway.models.base import BatchPolicy, ModelKind
from sluiceway.models.classifier import Classifier
from sluiceway.stores.artifacts import ArtifactError, ArtifactStore

logger = logging.getLogger(__name__)

BIRDS_INPUT = ImageInput(size=224, fit=Fit.STRETCH, layout="NHWC", dtype="uint8")
"""The AIY birds model's input: raw RGB 0..255, plain bilinear resize to 224×224, no crop."""

# The label the embedded list gives the non-bird class (index 964), and the official name for it.
_EMBEDDED_BACKGROUND = "None"
_BACKGROUND = "background"


def embedded_labels(model: bytes, member: str) -> list[str]:
    """The label list a TFLite file carries as a zip member, one name per line."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            text = archive.read(member).decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as error:
        raise ModelUnavailable(f"model file has no embedded label list {member!r}") from error
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return [_BACKGROUND if name == _EMBEDDED_BACKGROUND else name for name in names]


class _Runner:
    """One interpreter, resized to the batch at hand (LiteRT caches each size's plan)."""

    def __init__(self, model: bytes, threads: int) -> None:
        self.interpreter = Interpreter(model_content=model, num_threads=threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        scale, zero = self._output["quantization"]
        self.scale = float(scale) or 1.0
        self.zero = int(zero)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input["shape"][1:])

    @property
    def classes(self) -> int:
        return int(self._output["shape"][-1])

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self.interpreter.set_tensor(self._input["index"], batch)
        self.interpreter.invoke()
        raw: np.ndarray = self.interpreter.get_tensor(self._output["index"])
        probabilities: np.ndarray = (raw.astype(np.float32) - self.zero) * self.scale
        return probabilities


class TfliteClassifier(Classifier):
    """A loaded TFLite classifier with one interpreter per compute slot, and with ``wide`` one
    more with a thread per core, for calls made while no other computes (module doc).

    Interpreters are not thread-safe; each batch borrows a free one from the pool.
    """

    def __init__(
        self,
        model: bytes,
        labels: list[str],
        input_spec: ImageInput,
        threads: int,
        slots: int,
        max_batch: int = 8,
        wide: bool = False,
    ) -> None:
        super().__init__(labels, input_spec)
        self._pool: queue.SimpleQueue[_Runner] = queue.SimpleQueue()
        runners = [_Runner(model, threads) for _ in range(slots)]
        for runner in runners:
            self._pool.put(runner)
        self._wide: _Runner | None = None
        if cores.opens_wide(wide, threads):
            self._wide = _Runner(model, cores.usable_cores())
        self._wide_lock = threading.Lock()
        if runners[0].input_shape != input_spec.shape:
            raise ModelUnavailable(
                f"model takes {runners[0].input_shape} images, not {input_spec.shape}"
            )
        if runners[0].classes != len(labels):
            raise ModelUnavailable(f"model has {runners[0].classes} classes, {len(labels)} labels")
        interpreters = slots + (1 if self._wide is not None else 0)
        self._nbytes = tflite_nbytes(len(model), input_spec.size, interpreters, max_batch)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        runner = self._pool.get()
        try:
            return runner.run(batch)
        finally:
            self._pool.put(runner)

    @property
    def runs_wide(self) -> bool:
        """Whether it holds a wide interpreter."""
        return self._wide is not None

    def infer_wide(self, inputs: Sequence[Any]) -> list[Any]:
        """``predict_batch`` on the wide interpreter: the same results, on every core."""
        if self._wide is None:
            raise NotImplementedError(f"{type(self).__name__} has no wide interpreter")
        return self._ranked(inputs, self._wide_probabilities_of)

    def _wide_probabilities_of(self, images: Sequence[np.ndarray]) -> np.ndarray:
        assert self._wide is not None
        batch = np.stack(images)
        # Two calls may both find the process idle as they start: the second takes a slot's
        # interpreter rather than wait for the wide one (an interpreter runs one call at once).
        if not self._wide_lock.acquire(blocking=False):
            return self.probabilities(batch)
        try:
            return self._wide.run(batch)
        finally:
            self._wide_lock.release()


class TfliteClassifierKind(ModelKind):
    """Loads a TFLite classifier from a local file, or from a URL with a known sha256 through
    the artifact store; labels come from the file's metadata unless given."""

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        *,
        url: str | None = None,
        sha256: str | None = None,
        path: Path | None = None,
        labels: Sequence[str] | None = None,
        store: ArtifactStore,
        input_spec: ImageInput = BIRDS_INPUT,
        labels_member: str = "probability-labels-en.txt",
        threads: int = 1,
        wide: bool = True,
        download_timeout_s: float = 120.0,
        progress: bool = False,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("a TFLite classifier comes from a url or a path, exactly one")
        self.name = name
        self.policy = policy
        self.url = url
        self.sha256 = sha256
        self.path = path
        self.labels = list(labels) if labels is not None else None
        self.store = store
        self.input_spec = input_spec
        self.labels_member = labels_member
        self.threads = threads
        self.wide = wide
        """Whether to build a wide interpreter too (``TfliteClassifier``)."""
        self.download_timeout_s = download_timeout_s
        self.progress = progress

    async def load(self, spec: Any) -> TfliteClassifier:
        """Download (once) and verify the file, then build one interpreter per slot."""
        if self.path is not None:
            return await asyncio.to_thread(self._build, self.path)
        assert self.url is not None
        try:
            path = await asyncio.to_thread(
                self.store.fetch,
                self.url,
                self.sha256 or "",
                timeout_s=self.download_timeout_s,
                progress=self.progress,
            )
        except ArtifactError as error:
            raise ModelUnavailable(f"{self.name} model is unavailable: {error}") from error
        return await asyncio.to_thread(self._build, path)

    def _build(self, path: Path) -> TfliteClassifier:
        try:
            model = path.read_bytes()
        except OSError as error:
            raise ModelUnavailable(f"{self.name}: {path.name} cannot be read: {error}") from error
        labels = self.labels or embedded_labels(model, self.labels_member)
        try:
            classifier = TfliteClassifier(
                model,
                labels,
                self.input_spec,
                self.threads,
                self.policy.slots,
                self.policy.max_batch,
                wide=self.wide,
            )
        except (ValueError, RuntimeError) as error:
            raise ModelUnavailable(f"{self.name} model cannot be loaded: {error}") from error
        logger.info("%s: %d classes from %s", self.name, len(labels), path)
        return classifier


# Measured as process RSS on the AIY birds model (224 x 224 uint8, 3.6 MB file): twice the file
# for the model itself, twice again per interpreter (one per slot: its copy of the weights for
# XNNPACK), and about 2 MB per image of the largest batch each interpreter has run (1 slot x 8
# images: 30 MB; 2 x 8: 52 MB; 2 x 4: 36 MB). Activations scale with the input's pixels.
_MODEL_PER_FILE_BYTE = 2
_INTERPRETER_PER_FILE_BYTE = 2
_ARENA_PER_INPUT_PIXEL = 40


def tflite_nbytes(file_bytes: int, input_side: int, interpreters: int, max_batch: int) -> int:
    """Memory the loaded model and its interpreters (one per slot, and a wide one) hold once
    each has run a full batch (in a lane of one slot a wide call may be a full batch too)."""
    per_interpreter = file_bytes * _INTERPRETER_PER_FILE_BYTE
    per_interpreter += max_batch * input_side * input_side * _ARENA_PER_INPUT_PIXEL
    return file_bytes * _MODEL_PER_FILE_BYTE + interpreters * per_interpreter
