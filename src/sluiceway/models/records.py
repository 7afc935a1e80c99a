"""What Sluiceway knows about a model before loading it: one typed record per model.

Built-in models (``kinds.builtin_records``) and models from a repository folder
(``repository.py``) are described the same way: name, kind, source, batch policy, tensors,
labels, and for image classifiers how a picture becomes the model's input. ``kinds.py`` turns a
record into the ``ModelKind`` that loads it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sluiceway.inputs.pixels import ImageInput
from sluiceway.models.base import BatchPolicy
from sluiceway.models.tensors import TensorSpec


class SourceKind(enum.Enum):
    """Where a model file comes from."""

    PACKAGED = "packaged"  # inside the installed package
    FOLDER = "folder"  # a file in a model repository folder
    URL = "url"  # downloaded on first use, checked against its sha256, cached
    HUB = "hub"  # a folder or hub id understood by the model's own library


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's file is: a path, or a URL with the sha256 it must have."""

    kind: SourceKind
    location: str
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One model Sluiceway serves, as declared: everything needed to load and call it."""

    name: str
    kind: str
    source: ModelSource
    policy: BatchPolicy
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    labels: tuple[str, ...] = ()
    version: str = "1"
    image: ImageInput | None = None
    """For an image classifier: how an encoded picture becomes its input."""
    logits: bool = True
    """For a classifier: whether its output needs a softmax to be probabilities."""
    threads: int = 1
    batched: bool = True
    """Whether inputs carry a batch dimension first, so requests can share a call."""
    warmup: dict[str, Any] | None = None
    """A request (input name → array) run once after loading, before the model is ready."""
    builtin: bool = False
    memory_arena: bool = False
    """Whether its runtime keeps a memory arena per session (ONNX Runtime's CPU arena).

    An arena makes full batches about a quarter cheaper in CPU but keeps the largest batch's
    activations for good (about 85 MB per MobileNetV2 session after a batch of 8), so only the
    packaged models have one. Repository models live in the cache under its budget and must
    give their memory back when evicted (``bench/repository``)."""
    wide: bool = True
    """Whether a call made while no other model call computes may use every core (an ONNX
    model or ONNX classifier: a second session with a thread per core, holding its weights
    twice)."""

    @property
    def is_image_classifier(self) -> bool:
        return self.image is not None

    @property
    def takes_tensors(self) -> bool:
        """Whether requests may send this model named tensors directly."""
        return self.kind in TENSOR_KINDS


TENSOR_KINDS = frozenset({"onnx"})
"""Kinds whose models take named tensors in and give named tensors out."""
