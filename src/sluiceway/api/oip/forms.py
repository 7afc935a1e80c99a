"""How each model kind takes the protocol's tensors (``TensorForm``), or why it cannot.

A form turns one request's checked tensors into jobs for the dispatcher and their results back
into named outputs: a tensor model gets one job per row (rows of one shape share model calls),
an image classifier one job per prepared image, the captioner one job per encoded picture.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sluiceway.config import Settings
from sluiceway.errors import BadInput
from sluiceway.inputs.images import decode_image
from sluiceway.models.captioner import CaptionInput
from sluiceway.models.classifier import ALL_SCORES, Pixels
from sluiceway.models.records import ModelRecord
from sluiceway.models.tensors import TensorSpec, shape_key
from sluiceway.runtime.dispatch import Dispatcher
from sluiceway.runtime.jobs import Counting, Job
from sluiceway.runtime.stats import Statistics
from sluiceway.services import Services


class TensorForm:
    """How a model takes protocol tensors and what it gives back: jobs in, outputs out."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str
    batched: bool = True
    """Whether the first dimension of every input is the request's batch (rows)."""

    async def run(
        self, tensors: dict[str, np.ndarray], deadline: float, services: Services, priority: int = 0
    ) -> dict[str, np.ndarray]:
        """Run one request's tensors; its outputs by name."""
        raise NotImplementedError


class _TensorModel(TensorForm):
    """A tensor model (ONNX): one job per row, rows of one shape batched together."""

    def __init__(self, record: ModelRecord) -> None:
        self.record = record
        self.inputs = record.inputs
        self.outputs = record.outputs
        self.description = "named tensors in, named tensors out"
        self.batched = record.batched

    async def run(
        self, tensors: dict[str, np.ndarray], deadline: float, services: Services, priority: int = 0
    ) -> dict[str, np.ndarray]:
        name = self.record.name
        # Unbatched, or batched with one row: the request is one job, nothing to slice or join.
        count = request_rows(tensors) if self.record.batched else 1
        if count == 1:
            job = Job(
                model=name,
                payload=tensors,
                key=shape_key(tensors),
                deadline=deadline,
                priority=priority,
            )
            alone: dict[str, np.ndarray] = await services.dispatcher.submit(job)
            return {output: np.asarray(array) for output, array in alone.items()}
        rows = [{key: array[i : i + 1] for key, array in tensors.items()} for i in range(count)]
        key = shape_key(rows[0])  # every row has the same shape
        jobs = [
            Job(model=name, payload=row, key=key, deadline=deadline, priority=priority)
            for row in rows
        ]
        results = await _submit_all(services.dispatcher, jobs)
        return {
            output: np.concatenate([np.asarray(result[output]) for result in results])
            for output in results[0]
        }


class _ImageClassifier(TensorForm):
    """An image classifier: prepared images in (one job each), class probabilities out."""

    def __init__(self, record: ModelRecord) -> None:
        assert record.image is not None
        image = record.image
        self.record = record
        datatype = "UINT8" if image.dtype == "uint8" else "FP32"
        in_name = record.inputs[0].name if record.inputs else "image"
        self.inputs = (TensorSpec(in_name, datatype, (-1, *image.shape), format=image.layout),)
        classes = len(record.labels) or -1
        out = (
            record.outputs[0]
            if record.outputs
            else TensorSpec("probabilities", "FP32", (-1, classes))
        )
        self.outputs = (TensorSpec(out.name, "FP32", out.shape),)
        scaling = (
            "RGB values 0-255"
            if image.dtype == "uint8"
            else f"RGB / 255, then (x - mean) / std, mean {list(image.mean)}, std {list(image.std)}"
        )
        self.description = (
            f"a prepared image per row: {image.size}x{image.size} RGB, {image.layout}, "
            f"{image.dtype}, {scaling} (encoded pictures: POST /v1/models/{record.name}/classify); "
            f"out: the probability of every class, in label order"
        )

    async def run(
        self, tensors: dict[str, np.ndarray], deadline: float, services: Services, priority: int = 0
    ) -> dict[str, np.ndarray]:
        (images,) = tensors.values()
        jobs = [
            Job(
                model=self.record.name,
                payload=Pixels(image, ALL_SCORES),
                deadline=deadline,
                priority=priority,
            )
            for image in images
        ]
        results = await _submit_all(services.dispatcher, jobs)
        scores = np.stack([np.asarray(result, dtype=np.float32) for result in results])
        return {self.outputs[0].name: scores}


class _Captioner(TensorForm):
    """The captioner: encoded pictures in as ``BYTES`` (one job each), titles out as ``BYTES``."""

    def __init__(self, record: ModelRecord, settings: Settings) -> None:
        self.record = record
        self.inputs = (TensorSpec("image", "BYTES", (-1,)),)
        self.outputs = (TensorSpec("title", "BYTES", (-1,)),)
        self.description = "an encoded picture (JPEG, PNG, ...) per element; out: its title"
        self._shape = CaptionInput(max_side=settings.caption.max_side)
        self._max_bytes = settings.caption.max_image_bytes
        self._max_pixels = settings.max_image_pixels

    async def run(
        self, tensors: dict[str, np.ndarray], deadline: float, services: Services, priority: int = 0
    ) -> dict[str, np.ndarray]:
        (pictures,) = tensors.values()
        arrays = await asyncio.gather(
            *(asyncio.to_thread(self._prepare, bytes(item)) for item in pictures.ravel())
        )
        jobs = [
            Job(model=self.record.name, payload=pixels, deadline=deadline, priority=priority)
            for pixels in arrays
        ]
        titles = await _submit_all(services.dispatcher, jobs)
        return {"title": np.array([str(title).encode() for title in titles], dtype=np.object_)}

    def _prepare(self, data: bytes) -> np.ndarray:
        if len(data) > self._max_bytes:
            raise BadInput(f"a picture is over the {self._max_bytes} byte limit")
        decoded = decode_image(data, max_pixels=self._max_pixels, draft=self._shape.draft)
        return self._shape.prepare(decoded.image)


@dataclass(frozen=True, slots=True)
class NoTensorForm:
    """A model the protocol cannot call, and why."""

    reason: str


_FORMS: dict[int, tuple[ModelRecord, Settings, TensorForm | NoTensorForm]] = {}
"""``form_of``'s answers by record (a record is immutable; a reload makes a new one)."""


_MAX_FORMS = 1024


def form_of(record: ModelRecord, settings: Settings) -> TensorForm | NoTensorForm:
    """How ``record``'s model takes protocol tensors, or why it cannot (built once per record:
    every inference request asks)."""
    known = _FORMS.get(id(record))
    if known is not None and known[0] is record and known[1] is settings:
        return known[2]
    form = _form_of(record, settings)
    if len(_FORMS) >= _MAX_FORMS:  # records replaced by reloads: forget them all at once
        _FORMS.clear()
    _FORMS[id(record)] = (record, settings, form)
    return form


def _form_of(record: ModelRecord, settings: Settings) -> TensorForm | NoTensorForm:
    if record.takes_tensors:
        return _TensorModel(record)
    if record.image is not None:
        return _ImageClassifier(record)
    if record.kind == "captioner":
        return _Captioner(record, settings)
    if record.kind == "knn":
        return NoTensorForm(
            "the kiosk KNN has no tensor form: each request carries its restaurant's training "
            "rows, which a model is fitted from; send them to GET or POST /classify"
        )
    return NoTensorForm(f"a {record.kind} model has no tensor form")


async def _submit_all(dispatcher: Dispatcher, jobs: list[Job]) -> list[Any]:
    """Every job's result in order; at the first failure the others are cancelled (a job not
    yet run is then skipped) and the failure raised.

    All jobs are queued before any batcher runs, so a request's rows fill a batch together.
    The request is counted once in its model's statistics, as Triton counts requests.
    """
    if len(jobs) == 1:
        return [await dispatcher.submit(jobs[0])]
    statistics: Statistics | None = getattr(dispatcher, "statistics", None)
    if statistics is None:  # a dispatcher that counts nothing
        return await _gathered(dispatcher, jobs)
    jobs[0].counting = Counting.TIMES
    for job in jobs[1:]:
        job.counting = Counting.CALL
    submitted = time.perf_counter()
    try:
        results = await _gathered(dispatcher, jobs)
    except BaseException as error:
        statistics.count_request(jobs[0], len(jobs), submitted, error)
        raise
    statistics.count_request(jobs[0], len(jobs), submitted, None)
    return results


async def _gathered(dispatcher: Dispatcher, jobs: list[Job]) -> list[Any]:
    tasks = [asyncio.ensure_future(dispatcher.submit(job)) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            error = task.exception() if task.done() else None
            if error is not None:
                raise error
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()


def request_rows(tensors: dict[str, np.ndarray]) -> int:
    return int(next(iter(tensors.values())).shape[0])
