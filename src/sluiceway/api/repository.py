"""Models over HTTP: the list, the repository extension (load, unload) and tensor inference.

- ``GET /v1/models``: every model, built-in or from the repository, with its state (``READY``,
  ``LOADING``, ``UNLOADING``, ``UNAVAILABLE`` and why), kind, version, tensors and endpoints.
- ``POST /v2/repository/index``: Triton's and KServe's repository index (``{"ready": true}``
  lists only ready models).
- ``POST /v2/repository/models/{name}/load`` and ``.../unload``: need
  ``Authorization: Bearer <SLUICEWAY_ADMIN_TOKEN>``; with no token set they answer 403 saying how
  to turn them on. A load answers once the model is ready (or why it is not); an unload once the
  model's accepted requests are answered. A load's body may carry Triton's load parameters
  (``{"parameters": {"config": "<JSON>", "file:1/model.onnx": "<base64>"}}``, see
  ``load_parameters.py``); what cannot be used as given is a 400 naming it.
- ``POST /v1/models/{name}/infer`` with ``{"inputs": {"<name>": nested lists}}`` →
  ``{"model", "version", "outputs": {"<name>": nested lists}}`` for tensor models; requests of
  the same shapes share one model call.

The ``/v2`` routes answer errors as ``{"error": "..."}``, as the protocol does.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from sluiceway.api.bodies import read_body
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError
from sluiceway.errors import (
    BadInput,
    LoadRefused,
    ModelControlError,
    UnknownModel,
    load_failed,
)
from sluiceway.load_parameters import from_http
from sluiceway.model_entries import ModelEntry, ModelState
from sluiceway.models.tensors import TensorRequest, shape_key
from sluiceway.registry import ModelRegistry
from sluiceway.runtime.jobs import Job
from sluiceway.services import services_of

router = APIRouter(tags=["models"])


def registry_of(request: Request) -> ModelRegistry:
    """The model registry of the app serving ``request``."""
    return services_of(request).registry


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """Every model served here, its state and how to call it."""
    entries = registry_of(request).entries()
    body = {"models": [entry.as_json() for entry in entries]}
    return Response(orjson.dumps(body), media_type="application/json")


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    """The repository extension's index: name, version, state and reason of every model."""
    body = await read_body(request, 64 * 1024)
    ready_only = False
    if body.strip():
        try:
            options = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, 'the body must be JSON, for example {"ready": true}')
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            return _error(400, "'ready' must be true or false")
        ready_only = options.get("ready", False)
    index = repository_index_of(registry_of(request), ready_only)
    return Response(orjson.dumps(index), media_type="application/json")


def repository_index_of(registry: ModelRegistry, ready_only: bool) -> list[dict[str, Any]]:
    """The repository index (every model, or the ready ones): over HTTP and gRPC alike."""
    return [
        index_entry(entry)
        for entry in registry.entries()
        if not ready_only or entry.state is ModelState.READY
    ]


@router.post("/v2/repository/models/{name}/load")
async def load_model(name: str, request: Request) -> Response:
    """Load (or reload, from its folder as it is now) one repository model; with Triton's load
    parameters in the body, from the config (and files) they give."""
    registry = registry_of(request)

    async def load() -> ModelEntry:
        body = await read_body(request, services_of(request).settings.max_body_bytes)
        return await registry.load(name, from_http(body))

    return await _control(request, load)


@router.post("/v2/repository/models/{name}/unload")
async def unload_model(name: str, request: Request) -> Response:
    """Stop serving one repository model once its accepted requests are answered."""
    registry = registry_of(request)
    return await _control(request, lambda: registry.unload(name))


@router.post("/v1/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    """Run a tensor model on named inputs; answer its named outputs."""
    services = services_of(request)
    record = services.registry.ready_record(name)
    if not record.takes_tensors:
        hint = f"; send pictures to /v1/models/{name}/classify" if record.image else ""
        raise RequestError(400, f"{name!r} is a {record.kind} model and takes no tensors{hint}")
    body = await read_body(request, services.settings.max_body_bytes)
    tensors = _tensors(body, record.inputs)
    job = Job(
        model=name,
        payload=tensors,
        key=shape_key(tensors),
        deadline=deadline_of(request, services.settings.request_timeout_s),
    )
    outputs: dict[str, Any] = await services.dispatcher.submit(job)
    answer = {
        "model": name,
        "version": record.version,
        "outputs": {key: np.asarray(value).tolist() for key, value in outputs.items()},
    }
    return Response(orjson.dumps(answer), media_type="application/json")


def _tensors(body: bytes, inputs: tuple[Any, ...]) -> TensorRequest:
    """The request's inputs as arrays of the model's types; 400 naming what does not fit."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestError(400, f"the body is not JSON: {error}") from None
    given = parsed.get("inputs") if isinstance(parsed, dict) else None
    if not isinstance(given, dict):
        raise RequestError(400, 'send {"inputs": {"<input name>": [[...], ...]}}')
    names = [spec.name for spec in inputs]
    unknown = sorted(set(given) - set(names))
    missing = [name for name in names if name not in given]
    if unknown or missing:
        problem = f"unknown inputs {unknown}" if unknown else f"missing inputs {missing}"
        raise RequestError(400, f"{problem}; the model takes {names}")
    tensors: dict[str, np.ndarray] = {}
    for spec in inputs:
        try:
            array = np.asarray(given[spec.name], dtype=spec.dtype)
        except (ValueError, TypeError, OverflowError):
            raise BadInput(
                f"input {spec.name!r} is not a rectangular array of {spec.datatype} values"
            ) from None
        tensors[spec.name] = spec.check(array)
    return tensors


async def _control(request: Request, action: Callable[[], Awaitable[ModelEntry]]) -> Response:
    refused = admin_refusal(request, MODEL_CONTROL, "sluiceway models")
    if refused is not None:
        return refused
    try:
        entry = await action()
    except LoadRefused as error:
        return _error(400, str(error))
    except UnknownModel as error:
        return _error(404, str(error))
    except ModelControlError as error:
        return _error(409, str(error))
    failed = load_failure(entry)
    if failed is not None:
        return _error(400, failed)
    return Response(orjson.dumps(index_entry(entry)), media_type="application/json")


def load_failure(entry: ModelEntry) -> str | None:
    """Why a load or unload left ``entry`` not as asked (a load that failed), else ``None``:
    over HTTP and gRPC alike."""
    if entry.state is ModelState.UNAVAILABLE and entry.reason != "unloaded":
        return f"{load_failed(entry.name)}: {entry.reason}"
    return None


MODEL_CONTROL = "loading and unloading models"
"""What the admin token turns on here, as its refusals name it."""


def admin_refusal(request: Request, action: str, realm: str) -> Response | None:
    """403 while ``action`` is off (no admin token set), 401 without the right bearer token
    (its ``WWW-Authenticate`` naming ``realm``), else ``None``."""
    token = services_of(request).settings.admin_token
    refusal = control_refusal(token, request.headers.get("authorization", ""), action)
    if refusal is None:
        return None
    response = _error(*refusal)
    if refusal[0] == 401:
        response.headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
    return response


def control_refusal(
    token: SecretStr | None, authorization: str, action: str = MODEL_CONTROL
) -> tuple[int, str] | None:
    """Why a caller sending ``authorization`` may not do ``action`` (403 while no admin token is
    set, 401 without the right bearer token), or ``None`` when it may: over HTTP and gRPC
    alike."""
    if token is None:
        return (
            403,
            f"{action} is off: set SLUICEWAY_ADMIN_TOKEN on the server and "
            "send 'Authorization: Bearer <token>'",
        )
    scheme, _, given = authorization.partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return 401, "send 'Authorization: Bearer <SLUICEWAY_ADMIN_TOKEN>'"
    return None


def index_entry(entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "version": entry.version,
        "state": entry.state,
        "reason": entry.reason,
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
