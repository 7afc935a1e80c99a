"""The protocol's endpoints: server and model metadata, health, readiness, Triton's model
configuration and statistics, and inference (also served by ``FastRoutes``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, Response
from starlette.routing import Route

from sluiceway import __version__
from sluiceway.api.bodies import receive_body
from sluiceway.api.deadlines import TIMEOUT_HEADER, deadline_from
from sluiceway.api.oip.answer import answer
from sluiceway.api.oip.forms import NoTensorForm, TensorForm, form_of, request_rows
from sluiceway.api.oip.inference_request import (
    HEADER_LENGTH,
    InferRequest,
    decompressed,
    split_body,
)
from sluiceway.errors import BadInput, ModelUnavailable, UnknownModel
from sluiceway.model_entries import ModelEntry, ModelState
from sluiceway.models.records import ModelRecord
from sluiceway.models.tensors import TensorSpec
from sluiceway.runtime.stats import ModelStatistics
from sluiceway.services import Services, services_of

router = APIRouter(tags=["open inference protocol"])

EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_repository",
    "schedule_policy",
    "statistics",
)


_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def _head(path: str) -> Callable[[_Endpoint], _Endpoint]:
    """HEAD too on a route that probes ask (some load balancers probe with it), as the fast
    path's copies serve it (``fast_routes``); the document lists the GET."""
    return router.api_route(path, methods=["HEAD"], include_in_schema=False)


PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "onnx-classifier": "onnxruntime_onnx",
    "tflite-classifier": "tflite",
    "captioner": "transformers",
    "knn": "sklearn",
}
"""Each model kind's ``platform`` in model metadata (Triton's names where it has one)."""


@router.get("/v2")
@_head("/v2")
async def server_metadata(request: Request) -> Response:
    """Server name, version and the protocol extensions it speaks."""
    extensions = list(EXTENSIONS)
    if services_of(request).shared_memory is not None:
        extensions.append("system_shared_memory")
    return _json({"name": "sluiceway", "version": __version__, "extensions": extensions})


@router.get("/v2/health/live")
@_head("/v2/health/live")
async def live() -> Response:
    """The process answers."""
    return _json({"live": True})


@router.get("/v2/health/ready")
@_head("/v2/health/ready")
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
@_head("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
@_head("/v2/models/{name}/versions/{version}/ready")
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


async def _fast_server_metadata(request: Request) -> Response:
    return await server_metadata(request)


async def _fast_live(_: Request) -> Response:
    return await live()


async def _fast_model_ready(request: Request) -> Response:
    params = request.path_params
    return await model_ready(request, params["name"], params.get("version"))


fast_routes = [
    Route("/v2/models/{name}/infer", _fast_infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", _fast_infer, methods=["POST"]),
    # Probes: Kubernetes and load balancers ask these every few seconds per replica.
    Route("/v2", _fast_server_metadata, methods=["GET"]),
    Route("/v2/health/live", _fast_live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{name}/ready", _fast_model_ready, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}/ready", _fast_model_ready, methods=["GET"]),
]
"""Inference and the health probes for ``FastRoutes``; the router's copies document them
(OpenAPI) and answer whatever the fast path passes on."""


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
    settings = services.settings
    timeout, encoding, header_length, declared = _headers(request.scope["headers"])
    deadline = deadline_from(timeout, settings.request_timeout_s)
    body = await receive_body(request.receive, declared, settings.max_body_bytes)
    body = decompressed(body, encoding, settings)
    header, tail = split_body(body, header_length)
    parsed = InferRequest.parse(header, tail, form, services.shared_memory)
    rows = request_rows(parsed.tensors) if form.batched else 1
    if rows > record.policy.max_queue:
        # One job per row: more rows than the queue holds could never be accepted whole.
        raise BadInput(
            f"the request has {rows} rows; model {name!r} queues at most "
            f"{record.policy.max_queue}: send them in smaller requests"
        )
    if parsed.timeout_s is not None:
        deadline = min(deadline, time.time() + parsed.timeout_s)
    outputs = await form.run(parsed.tensors, deadline, services, parsed.priority)
    return answer(name, record, form, parsed, outputs, services.shared_memory)


def _headers(
    raw: Iterable[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, str | None, str | None]:
    """The request's ``X-Request-Timeout``, ``Content-Encoding``,
    ``Inference-Header-Content-Length`` and ``Content-Length``, the first of each as
    ``Request.headers.get`` gives it, in one pass: lookups through Starlette's ``Headers`` cost
    a trivial request more (each header not sent is a ``KeyError`` raised and caught)."""
    found: dict[bytes, str] = {}
    for key, value in raw:
        if key in _WANTED and key not in found:
            found[key] = value.decode("latin-1")
    get = found.get
    return get(_TIMEOUT), get(_ENCODING), get(_HEADER_LENGTH), get(b"content-length")


_TIMEOUT = TIMEOUT_HEADER.encode()
_ENCODING = b"content-encoding"
_HEADER_LENGTH = HEADER_LENGTH.encode()
_WANTED = frozenset((_TIMEOUT, _ENCODING, _HEADER_LENGTH, b"content-length"))


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


def _config_type(datatype: str) -> str:
    return {"BYTES": "STRING"}.get(datatype, datatype)


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
