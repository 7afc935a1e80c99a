"""What every image classifier shares: the job payload, top-k ranking and the result type.

A classifier declares its preprocessing as an ``ImageInput`` (``inputs/pixels.py``); the edge
turns image bytes into that model-ready array in a worker thread, so a job's payload is a
``Pixels`` and the batcher only stacks arrays. ``Pixels`` and ``Prediction`` are named tuples
so they cross the Redis wire of split mode as plain arrays (arriving as lists; ``ranked``
turns them back).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from sluiceway.errors import BadInput
from sluiceway.inputs.pixels import ImageInput
from sluiceway.models.base import ThreadedModel


class Prediction(NamedTuple):
    """One class and its probability."""

    label: str
    score: float


ALL_SCORES = -1
"""``Pixels.k`` asking for every class's probability, in class order (the tensor protocol)."""


class Pixels(NamedTuple):
    """A job's payload: one prepared image and how many top classes the caller wants
    (``ALL_SCORES``: the whole probability vector instead of ranked classes)."""

    array: np.ndarray
    k: int


def ranked(result: Sequence[Sequence[Any]]) -> list[Prediction]:
    """A classifier's result as ``Prediction``s, also when it came over the wire as lists."""
    return [Prediction(str(label), float(score)) for label, score in result]


def as_pixels(item: Any) -> Pixels | None:
    """A payload as ``Pixels`` (it may arrive over the wire as a list), or ``None``."""
    if isinstance(item, (tuple, list)) and len(item) == 2:
        array, k = item
        if isinstance(array, np.ndarray) and isinstance(k, int):
            return Pixels(array, k)
    return None


class Classifier(ThreadedModel):
    """A loaded image classifier: stacks payloads, runs ``probabilities``, ranks top-k each."""

    def __init__(self, labels: Sequence[str], input_spec: ImageInput) -> None:
        self.labels = list(labels)
        self.input_spec = input_spec
        self._shape = input_spec.shape
        self._dtype = np.dtype(input_spec.dtype)

    @abstractmethod
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, classes), for a stacked batch. Blocking."""

    def probabilities_of(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities, shape (n, classes), of prepared images (no batch axis each).

        Stacks them into one batch; a runtime that is cheaper per image on single images
        overrides this and skips the stack's copy.
        """
        return self.probabilities(np.stack(images))

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        """Rank each input's classes; a malformed payload fails alone, not the batch."""
        return self._ranked(inputs, self.probabilities_of)

    def _ranked(
        self, inputs: Sequence[Any], probabilities_of: Callable[[Sequence[np.ndarray]], np.ndarray]
    ) -> list[Any]:
        """``predict_batch`` with ``probabilities_of`` computing (a wide call gives its own)."""
        results: list[Any] = [None] * len(inputs)
        good: list[tuple[int, Pixels]] = []
        for index, item in enumerate(inputs):
            pixels = as_pixels(item)
            if (
                pixels is not None
                and pixels.array.shape == self._shape
                and pixels.array.dtype == self._dtype
            ):
                good.append((index, pixels))
            else:
                results[index] = BadInput(f"payload is not a prepared {self._shape} image")
        if good:
            probabilities = probabilities_of([pixels.array for _, pixels in good])
            for row, (index, pixels) in enumerate(good):
                if pixels.k == ALL_SCORES:
                    results[index] = probabilities[row]
                else:
                    results[index] = self.top(probabilities[row], pixels.k)
        return results

    def top(self, probabilities: np.ndarray, k: int) -> list[Prediction]:
        """The ``k`` most probable classes, best first (ties by class id)."""
        k = max(0, min(k, len(probabilities)))
        if k == 0:
            return []
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [Prediction(self.labels[i], float(probabilities[i])) for i in order]
