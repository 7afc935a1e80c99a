"""The protocol's endpoints: server and model metadata, health, readiness, Triton's model
configuration and statistics, inference (also served by ``FastRoutes``), and Triton's logging
extension (``GET``/``POST /v2/logging``, ``sluiceway/log_settings.py``). Triton's trace
extension is not served: its routes answer 501 saying so, as gRPC's ``TraceSetting`` answers
``UNIMPLEMENTED``, rather than a bare 404 a client would take for a wrong address."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, Response
from starlette.routing import Route

from sluiceway import log_settings
from sluiceway.api.bodies import read_body, receive_body
from sluiceway.api.deadlines import TIMEOUT_HEADER, deadline_from
from sluiceway.api.errors import RequestError
from sluiceway.api.oip import serving
from sluiceway.api.oip.answer import answer
from sluiceway.api.oip.inference_request import (
    HEADER_LENGTH,
    InferRequest,
    decompressed,
    split_body,
)
from sluiceway.api.repository import admin_refusal
from sluiceway.errors import BadInput, ModelUnavailable
from sluiceway.services import services_of

router = APIRouter(tags=["open inference protocol"])


_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def _head(path: str) -> Callable[[_Endpoint], _Endpoint]:
    """HEAD too on a route that probes ask (some load balancers probe with it), as the fast
    path's copies serve it (``fast_routes``); the document lists the GET."""
    return router.api_route(path, methods=["HEAD"], include_in_schema=False)


@router.get("/v2")
@_head("/v2")
async def server_metadata(request: Request) -> Response:
    """Server name, version and the protocol extensions it speaks."""
    return _json(serving.server_metadata(services_of(request)))


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


@router.get("/v2/models")
async def model_names(request: Request) -> Response:
    """KServe's list of models: the name of every model the server knows, ready or not."""
    return _json({"models": [entry.name for entry in services_of(request).registry.entries()]})


@router.get("/v2/models/stats")
async def all_stats(request: Request) -> Response:
    """Triton's statistics of every model."""
    return _json(await serving.model_statistics(services_of(request), None, None))


@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
async def model_stats(request: Request, name: str, version: str | None = None) -> Response:
    """Triton's statistics of one model."""
    return _json(await serving.model_statistics(services_of(request), name, version))


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Name, versions, platform and tensors of a model; whether and how it takes tensors."""
    return _json(serving.model_metadata(services_of(request), name, version))


@router.get("/v2/models/{name}/ready")
@_head("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
@_head("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """``200`` when the model takes requests now; ``503`` with the reason while it does not."""
    serving.check_ready(serving.entry_of(services_of(request), name, version))
    return _json({"name": name, "ready": True})


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    """The model's configuration in the shape of Triton's ``config.pbtxt`` (as JSON)."""
    return _json(serving.model_config(services_of(request), name, version))


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run a model on the request's tensors; answer its outputs, as JSON or binary."""
    return await _infer(request, name, version)


# Triton's logging extension. Reading the settings needs no token, as server metadata needs
# none: they say which levels are written and how, nothing more (the log file is always
# stderr), and ops scripts and dashboards read them. Changing them needs the admin token, as
# loading models does: a client that turns DEBUG on can slow every request and fill the disk,
# and one that turns errors off can hide what it does next.
_LOG_SETTINGS_MAX_BYTES = 64 * 1024
"""Six settings: a body larger than this is not a log settings request."""


@router.get("/v2/logging")
async def get_log_settings() -> Response:
    """Triton's log settings, as they apply now."""
    return _json(log_settings.current())


@router.post("/v2/logging")
async def update_log_settings(request: Request) -> Response:
    """Change any of Triton's log settings (bearer ``SLUICEWAY_ADMIN_TOKEN``); answer them all
    afterwards."""
    refused = admin_refusal(request, log_settings.ADMIN_ACTION, "sluiceway logging")
    if refused is not None:
        return refused
    body = await read_body(request, _LOG_SETTINGS_MAX_BYTES)
    processes = services_of(request).settings.workers
    return _json(log_settings.update(_log_changes(body), processes))


def _log_changes(body: bytes) -> dict[str, object]:
    """The settings a ``POST /v2/logging`` body names (none for an empty body)."""
    if not body.strip():
        return {}
    try:
        given = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadInput(f"the body is not JSON this server reads: {error}") from error
    if not isinstance(given, dict):
        raise BadInput(
            'the body must be a JSON object of log settings, for example {"log_verbose_level": 1}'
        )
    return given


# One route per method: a route of two methods gets one OpenAPI operation id for both.
@router.get("/v2/trace/setting")
@router.post("/v2/trace/setting")
async def trace_setting() -> Response:
    """Triton's trace settings: not served (501)."""
    raise RequestError(501, serving.NO_TRACE)


@router.get("/v2/models/{name}/trace/setting")
@router.post("/v2/models/{name}/trace/setting")
async def model_trace_setting(name: str) -> Response:
    """A model's trace settings: not served (501), whatever the model."""
    raise RequestError(501, serving.NO_TRACE)


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
    record, form = serving.tensor_model(services, name, version)
    settings = services.settings
    timeout, encoding, header_length, declared = _headers(request.scope["headers"])
    deadline = deadline_from(timeout, settings.request_timeout_s)
    body = await receive_body(request.receive, declared, settings.max_body_bytes)
    body = decompressed(body, encoding, settings)
    header, tail = split_body(body, header_length)
    parsed = InferRequest.parse(header, tail, form, services.shared_memory)
    outputs = await serving.run_request(services, record, form, parsed, deadline)
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


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
