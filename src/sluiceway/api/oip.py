"""The Open Inference Protocol (KServe's v2 REST protocol), as Triton and KServe speak it.

Endpoints: ``GET /v2`` (server metadata), ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready``, ``.../config``,
``POST .../infer``, and Triton's statistics extension ``GET /v2/models[/{name}]/stats``. The
repository extension lives in ``api/repository.py``. Errors are ``{"error": "..."}``.

Inference takes JSON tensors (``data`` nested or flat) or Triton's binary tensors (a JSON header
of ``Inference-Header-Content-Length`` bytes, then each input's raw bytes), answers either way,
and runs on the same dispatcher and batchers as every other contract: a request is split into
one job per row of its batch, so rows of concurrent requests share model calls and a request
larger than the model's max batch is run in several calls and put back together.

Request parameters: ``timeout`` (microseconds) shortens the request's deadline; ``priority``
(Triton's: 1 first, then 2...; 0 or none, the default level, last) orders the model's waiting
jobs (``job_priority``);
``binary_data_output`` and each output's ``binary_data`` ask for binary outputs, and an
output's ``classification`` (Triton's classification extension) for its top classes as
``"score:index[:label]"`` strings.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.routing import Route

from sluiceway import __version__
from sluiceway.api.bodies import read_body
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError
from sluiceway.config import Settings
from sluiceway.errors import BadInput, ModelUnavailable, UnknownModel
from sluiceway.inputs.images import decode_image
from sluiceway.model_entries import ModelEntry, ModelState
from sluiceway.models.captioner import CaptionInput
from sluiceway.models.classifier import ALL_SCORES, Pixels
from sluiceway.models.records import ModelRecord
from sluiceway.models.tensors import (
    DATATYPES,
    TensorSpec,
    shape_key,
    tensor_from_bytes,
    tensor_from_json,
    tensor_to_bytes,
    tensor_to_json,
)
from sluiceway.runtime.dispatch import Dispatcher
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.stats import ModelStatistics
from sluiceway.services import Services, services_of

router = APIRouter(tags=["open inference protocol"])

HEADER_LENGTH = "inference-header-content-length"
"""Triton's binary extension: how many bytes of the body are the JSON header."""

EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_repository",
    "schedule_policy",
    "statistics",
)

PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "onnx-classifier": "onnxruntime_onnx",
    "tflite-classifier": "tflite",
    "captioner": "transformers",
    "knn": "sklearn",
}
"""Each model kind's ``platform`` in model metadata (Triton's names where it has one)."""

_DTYPE_NAMES = {str(dtype): name for name, dtype in DATATYPES.items() if name != "BYTES"}


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
        count = _rows(tensors) if self.record.batched else 1
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
        self.inputs = (TensorSpec(in_name, datatype, (-1, *image.shape)),)
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


@router.get("/v2")
async def server_metadata() -> Response:
    """Server name, version and the protocol extensions it speaks."""
    return _json({"name": "sluiceway", "version": __version__, "extensions": list(EXTENSIONS)})


@router.get("/v2/health/live")
async def live() -> Response:
    """The process answers."""
    return _json({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """The server can take inference requests (``503`` while it cannot)."""
    if not services_of(request).dispatcher.ready():
        raise ModelUnavailable("the server is not ready")
    return _json({"ready": True})


@router.get("/v2/models/stats")
async def all_stats(request: Request) -> Response:
    """Triton's statistics of every model."""
    services = services_of(request)
    entries = [entry for entry in services.registry.entries() if entry.record is not None]
    return _json({"model_stats": [_stats(services, entry) for entry in entries]})


@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
async def model_stats(request: Request, name: str, version: str | None = None) -> Response:
    """Triton's statistics of one model."""
    services = services_of(request)
    entry = _entry(services, name, version)
    return _json({"model_stats": [_stats(services, entry)]})


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Name, versions, platform and tensors of a model; whether and how it takes tensors."""
    services = services_of(request)
    entry = _entry(services, name, version)
    record = _record_of(entry)
    form = form_of(record, services.settings)
    body: dict[str, Any] = {
        "name": name,
        "versions": [record.version],
        "platform": PLATFORMS.get(record.kind, record.kind),
    }
    if isinstance(form, NoTensorForm):
        body |= {"inputs": [], "outputs": [], "parameters": {"infer": False, "reason": form.reason}}
    else:
        body |= {
            "inputs": [_tensor(spec) for spec in form.inputs],
            "outputs": [_tensor(spec) for spec in form.outputs],
            "parameters": {
                "infer": True,
                "description": form.description,
                "max_batch_size": record.policy.max_batch if record.batched else 0,
            },
        }
    body["parameters"]["state"] = str(entry.state)
    return _json(body)


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """``200`` when the model takes requests now; ``503`` with the reason while it does not."""
    services = services_of(request)
    entry = _entry(services, name, version)
    if entry.state is not ModelState.READY:
        reason = f": {entry.reason}" if entry.reason else ""
        raise ModelUnavailable(f"model {name!r} is {entry.state.lower()}{reason}")
    return _json({"name": name, "ready": True})


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    """The model's configuration in the shape of Triton's ``config.pbtxt`` (as JSON)."""
    services = services_of(request)
    entry = _entry(services, name, version)
    record = _record_of(entry)
    form = form_of(record, services.settings)
    tensors = form if isinstance(form, TensorForm) else None
    batched = record.batched and tensors is not None
    policy = record.policy

    def config_tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = list(spec.shape[1:] if batched else spec.shape)
        return {"name": spec.name, "data_type": f"TYPE_{_config_type(spec.datatype)}", "dims": dims}

    return _json(
        {
            "name": name,
            "platform": PLATFORMS.get(record.kind, record.kind),
            "backend": record.kind,
            "max_batch_size": policy.max_batch if batched else 0,
            "input": [config_tensor(spec) for spec in tensors.inputs] if tensors else [],
            "output": [config_tensor(spec) for spec in tensors.outputs] if tensors else [],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(policy.max_delay_s * 1e6),
                "default_queue_policy": {"max_queue_size": policy.max_queue},
            },
            "instance_group": [{"count": policy.slots, "kind": "KIND_CPU"}],
        }
    )


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run a model on the request's tensors; answer its outputs, as JSON or binary."""
    return await _infer(request, name, version)


async def _fast_infer(request: Request) -> Response:
    """``infer`` served straight from ASGI (``api/fastpath.py``): the same function, without
    the framework's routing and dependency solving around it."""
    params = request.path_params
    return await _infer(request, params["name"], params.get("version"))


fast_routes = [
    Route("/v2/models/{name}/infer", _fast_infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", _fast_infer, methods=["POST"]),
]
"""The inference routes for ``FastRoutes``; the router's copies document them (OpenAPI) and
answer whatever the fast path passes on."""


async def _infer(request: Request, name: str, version: str | None) -> Response:
    services = services_of(request)
    entry = _entry(services, name, version)
    if entry.state is not ModelState.READY or entry.record is None:
        reason = f": {entry.reason}" if entry.reason else ""
        raise ModelUnavailable(f"model {name!r} is {entry.state.lower()}{reason}")
    record = entry.record
    form = form_of(record, services.settings)
    if isinstance(form, NoTensorForm):
        raise BadInput(f"model {name!r} cannot be called with tensors: {form.reason}")
    deadline = deadline_of(request, services.settings.request_timeout_s)
    body = await read_body(request, services.settings.max_body_bytes)
    body = _decompressed(body, request.headers.get("content-encoding"), services.settings)
    header, tail = _split(body, request.headers.get(HEADER_LENGTH))
    parsed = _InferRequest.parse(header, tail, form)
    rows = _rows(parsed.tensors) if form.batched else 1
    if rows > record.policy.max_queue:
        # One job per row: more rows than the queue holds could never be accepted whole.
        raise BadInput(
            f"the request has {rows} rows; model {name!r} queues at most "
            f"{record.policy.max_queue}: send them in smaller requests"
        )
    if parsed.timeout_s is not None:
        deadline = min(deadline, time.time() + parsed.timeout_s)
    outputs = await form.run(parsed.tensors, deadline, services, parsed.priority)
    return _answer(name, record, form, parsed, outputs)


@dataclass(slots=True)
class _OutputRequest:
    name: str
    binary: bool | None
    """``None``: as the request's ``binary_data_output`` says."""
    classes: int = 0


@dataclass(slots=True)
class _InferRequest:
    """A checked inference request: its tensors and what the caller asked about the answer."""

    id: str | None
    tensors: dict[str, np.ndarray]
    outputs: list[_OutputRequest] | None
    binary_output: bool
    timeout_s: float | None
    priority: int
    """``Job.priority`` (higher first) of the request's level: ``job_priority``."""

    @classmethod
    def parse(cls, header: bytes, tail: memoryview, form: TensorForm) -> _InferRequest:
        try:
            body = orjson.loads(header)
        except orjson.JSONDecodeError as error:
            raise BadInput(f"the request is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise BadInput('the request is a JSON object: {"inputs": [...]}')
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadInput("'id' must be a string")
        parameters = _parameters(body.get("parameters"), "the request's 'parameters'")
        binary_output = parameters.get("binary_data_output", False)
        if not isinstance(binary_output, bool):
            raise BadInput("'binary_data_output' must be true or false")
        priority = job_priority(parameters.get("priority", 0))
        if "sequence_id" in parameters and parameters["sequence_id"] not in (0, ""):
            raise BadInput("sequences (sequence_id) are not supported: every request stands alone")
        tensors = _inputs(body.get("inputs"), tail, form.inputs)
        if form.batched:
            _check_rows(tensors)
        return cls(
            id=request_id,
            tensors=tensors,
            outputs=_outputs(body.get("outputs")),
            binary_output=binary_output,
            timeout_s=_timeout(parameters.get("timeout")),
            priority=priority,
        )


def _inputs(given: Any, tail: memoryview, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    if not isinstance(given, list) or not given:
        raise BadInput("'inputs' must be a non-empty list of tensors")
    by_name = {spec.name: spec for spec in specs}
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for item in given:
        if not isinstance(item, dict):
            raise BadInput('each input is an object: {"name", "shape", "datatype", "data"}')
        name = item.get("name")
        shape = item.get("shape")
        datatype = item.get("datatype")
        if not isinstance(name, str):
            raise BadInput("each input needs a 'name'")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise BadInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
        if not isinstance(datatype, str):
            raise BadInput(f"input {name!r} needs a 'datatype'")
        spec = by_name.get(name) if by_name else _undeclared(name, datatype, shape)
        if spec is None:
            raise BadInput(f"unknown input {name!r}; the model takes {list(by_name)}")
        if name in tensors:
            raise BadInput(f"input {name!r} is given twice")
        if datatype != spec.datatype:
            raise BadInput(f"input {name!r} is {datatype}; the model takes {spec.datatype}")
        parameters = _parameters(item.get("parameters"), f"input {name!r}'s 'parameters'")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadInput(f"input {name!r}: 'binary_data_size' must be a byte count")
            if offset + size > len(tail):
                raise BadInput(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(tail) - offset} bytes left)"
                )
            array = tensor_from_bytes(name, datatype, shape, tail[offset : offset + size])
            offset += size
        elif "data" in item:
            array = tensor_from_json(name, datatype, shape, item["data"])
        else:
            raise BadInput(f"input {name!r} has neither 'data' nor a 'binary_data_size'")
        tensors[name] = spec.check(array)
    if offset != len(tail):
        raise BadInput(f"{len(tail) - offset} bytes after the binary inputs belong to none")
    missing = [name for name in by_name if name not in tensors]
    if missing:
        raise BadInput(f"missing inputs {missing}; the model takes {list(by_name)}")
    return tensors


def _undeclared(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    """A tensor of a model whose config declares none: the model file checks it."""
    if datatype not in DATATYPES:
        raise BadInput(f"input {name!r}: unknown datatype {datatype!r}; known: {sorted(DATATYPES)}")
    return TensorSpec(name, datatype, tuple(-1 for _ in shape))


def _check_rows(tensors: dict[str, np.ndarray]) -> None:
    rows = {array.shape[0] for array in tensors.values()}
    if len(rows) > 1:
        raise BadInput(f"every input needs the same batch size (first dimension), got {rows}")
    if rows == {0}:
        raise BadInput("the batch is empty (first dimension 0)")


def _outputs(given: Any) -> list[_OutputRequest] | None:
    if given is None:
        return None
    if not isinstance(given, list):
        raise BadInput("'outputs' must be a list of {\"name\": ...}")
    wanted = []
    for item in given:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadInput("each requested output needs a 'name'")
        parameters = _parameters(item.get("parameters"), f"output {item['name']!r}'s 'parameters'")
        binary = parameters.get("binary_data", None)
        classes = parameters.get("classification", 0)
        if binary is not None and not isinstance(binary, bool):
            raise BadInput(f"output {item['name']!r}: 'binary_data' must be true or false")
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise BadInput(f"output {item['name']!r}: 'classification' must be a class count")
        wanted.append(_OutputRequest(item["name"], binary, classes))
    return wanted


def _answer(
    name: str,
    record: ModelRecord,
    form: TensorForm,
    request: _InferRequest,
    outputs: dict[str, np.ndarray],
) -> Response:
    declared = {spec.name: spec for spec in form.outputs}
    if request.outputs is None:
        wanted = [_OutputRequest(key, request.binary_output) for key in outputs]
    else:
        wanted = request.outputs
        for item in wanted:
            if item.name not in outputs:
                raise BadInput(f"unknown output {item.name!r}; the model gives {list(outputs)}")
    body: dict[str, Any] = {"model_name": name, "model_version": record.version}
    if request.id is not None:
        body["id"] = request.id
    tensors = []
    blobs = []
    for item in wanted:
        array = outputs[item.name]
        spec = declared.get(item.name)
        datatype = spec.datatype if spec is not None else _datatype(array)
        if item.classes:
            array, datatype = _classified(array, item.classes, record.labels), "BYTES"
        binary = item.binary if item.binary is not None else request.binary_output
        tensor: dict[str, Any] = {
            "name": item.name,
            "datatype": datatype,
            "shape": list(array.shape),
        }
        if binary:
            blob = tensor_to_bytes(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = tensor_to_json(array, datatype)
        tensors.append(tensor)
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return _Answer(header, _JSON)
    return _Answer(
        b"".join([header, *blobs]),
        _BINARY,
        (b"inference-header-content-length", b"%d" % len(header)),
    )


_JSON = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")


class _Answer(Response):
    """An inference answer: Starlette's ``Response`` with its headers made in one step (every
    inference request builds one)."""

    def __init__(self, body: bytes, *headers: tuple[bytes, bytes]) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = [(b"content-length", b"%d" % len(body)), *headers]


def _classified(scores: np.ndarray, classes: int, labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: each row's top classes as ``score:index[:label]``."""
    if scores.ndim != 2:
        raise BadInput("'classification' needs an output of shape [batch, classes]")
    k = min(classes, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = []
    for row, indices in zip(scores, order, strict=True):
        items = []
        for index in indices:
            text = f"{float(row[index]):f}:{int(index)}"
            if index < len(labels):
                text += f":{labels[index]}"
            items.append(text.encode())
        rows.append(items)
    return np.array(rows, dtype=np.object_).reshape(len(rows), k)


def _entry(services: Services, name: str, version: str | None) -> ModelEntry:
    entry = services.registry.entry(name)
    if version is not None and version != entry.version:
        served = f"it serves version {entry.version}" if entry.version else "it has no version"
        raise UnknownModel(f"model {name!r} has no version {version!r}; {served}")
    return entry


def _record_of(entry: ModelEntry) -> ModelRecord:
    """The entry's record; ``ModelUnavailable`` with the reason when it could not be read."""
    if entry.record is None:
        raise ModelUnavailable(f"model {entry.name!r} is unavailable: {entry.reason}")
    return entry.record


def _stats(services: Services, entry: ModelEntry) -> dict[str, Any]:
    statistics = getattr(services.dispatcher, "statistics", None)
    stats = statistics.of(entry.name) if statistics is not None else ModelStatistics()
    return stats.as_triton(entry.name, entry.version)


async def _submit_all(dispatcher: Dispatcher, jobs: list[Job]) -> list[Any]:
    """Every job's result in order; at the first failure the others are cancelled (a job not
    yet run is then skipped) and the failure raised.

    All jobs are queued before any batcher runs, so a request's rows fill a batch together.
    """
    if len(jobs) == 1:
        return [await dispatcher.submit(jobs[0])]
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


def _rows(tensors: dict[str, np.ndarray]) -> int:
    return int(next(iter(tensors.values())).shape[0])


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tail of a body (all JSON without the length header).

    The tail is a view: an image's 600 KB go from the body to the model's input uncopied.
    """
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise RequestError(
            400,
            f"Inference-Header-Content-Length must be a byte count within the body's "
            f"{len(body)} bytes, got {header_length!r}",
        )
    length = int(header_length)
    return body[:length], memoryview(body)[length:]


def _decompressed(body: bytes, encoding: str | None, settings: Settings) -> bytes:
    """A body sent gzip- or deflate-compressed (tritonclient's request compression), inflated
    within the body size limit."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise RequestError(400, f"Content-Encoding {encoding!r} is not supported: gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, settings.max_body_bytes + 1)
    except zlib.error as error:
        raise RequestError(400, f"the body is not valid {encoding}: {error}") from None
    if len(inflated) > settings.max_body_bytes or inflater.unconsumed_tail:
        raise RequestError(413, "the decompressed body is over the body size limit")
    return inflated


def _parameters(given: Any, where: str) -> dict[str, Any]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise BadInput(f"{where} must be an object")
    return given


def _timeout(given: Any) -> float | None:
    """The ``timeout`` parameter (microseconds; 0 or absent: the server's own deadline)."""
    if given is None:
        return None
    if not isinstance(given, int) or isinstance(given, bool) or given < 0:
        raise BadInput("'timeout' must be a whole number of microseconds")
    return given / 1e6 if given else None


PRIORITY_LEVELS = 2**31 - 1
"""Triton's ``priority`` levels accepted: 1 (first) to this; 0 is the default level."""


def job_priority(level: Any) -> int:
    """The ``priority`` parameter as Triton means it, as a ``Job.priority`` (higher first).

    Level 1 is served first, then 2, and so on; 0 (or no parameter) is the default level,
    after every explicit one: Triton with its default level set to the lowest. Every other
    contract's jobs are at the default level too.
    """
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= PRIORITY_LEVELS:
        raise BadInput(f"'priority' must be an integer from 0 (default) to {PRIORITY_LEVELS}")
    return PRIORITY_LEVELS + 1 - level if level else 0


def _datatype(array: np.ndarray) -> str:
    if array.dtype == np.object_:
        return "BYTES"
    name = _DTYPE_NAMES.get(str(array.dtype))
    if name is None:  # a model's bug, not the caller's
        raise RuntimeError(f"an output of type {array.dtype} has no protocol datatype")
    return name


def _config_type(datatype: str) -> str:
    return {"BYTES": "STRING"}.get(datatype, datatype)


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
