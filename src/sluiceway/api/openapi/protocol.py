"""The Open Inference Protocol's routes (``/v2``) and model control: summaries, bodies, and
errors in the protocol's own ``{"error": ...}`` shape."""

from __future__ import annotations

from typing import Any

from sluiceway.api.openapi.parts import JSON, answer, ref
from sluiceway.api.openapi.parts import body as request_body


def _model_control(action: str) -> dict[str, Any]:
    error = (JSON, ref("ProtocolError"))
    return {
        "summary": f"{action.capitalize()} a repository model (bearer SLUICEWAY_ADMIN_TOKEN)",
        "responses": {
            "200": answer("the model's state afterwards", (JSON, ref("RepositoryEntry"))),
            "400": answer("the model did not load, and why", error),
            "401": answer("no or a wrong bearer token", error),
            "403": answer("model control is off: no SLUICEWAY_ADMIN_TOKEN is set", error),
            "404": answer("no model of that name", error),
            "409": answer("a built-in model, no repository, split mode, or a failed reload", error),
        },
    }


def _log_settings(*, change: bool) -> dict[str, Any]:
    """``GET`` (``change=False``) or ``POST /v2/logging``: Triton's logging extension."""
    error = (JSON, ref("ProtocolError"))
    settings = (JSON, ref("LogSettings"))
    summary = "change log settings (bearer SLUICEWAY_ADMIN_TOKEN)" if change else "log settings"
    responses = {
        "200": answer("every log setting" + (", afterwards" if change else ""), settings),
        "409": answer("the process's logging is its host's, not sluiceway serve's", error),
    }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if change:
        responses["400"] = answer("an unknown setting, a wrong type or value, or log_file", error)
        responses["401"] = answer("no or a wrong bearer token", error)
        responses["403"] = answer("changes are off: no SLUICEWAY_ADMIN_TOKEN is set", error)
        responses["413"] = answer("body over its limit", error)
        operation["requestBody"] = request_body(settings)
    return operation


def _shared_memory(
    summary: str, answered: Any | None = None, *, named: bool = False, body: bool = False
) -> dict[str, Any]:
    """A route of the system shared memory extension (``api/oip/regions.py``); ``named``: it
    names one region, which may not be registered; ``body``: it takes a registration."""
    error = (JSON, ref("ProtocolError"))
    ok = answer(summary, (JSON, answered)) if answered is not None else answer(summary)
    responses = {
        "200": ok,
        "400": answer("what is wrong with the region or the request", error),
        "403": answer("shared memory is off: SLUICEWAY_ALLOW_CLIENT_SHM is not set", error),
    }
    if named:
        responses["404"] = answer("no region of that name is registered", error)
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        responses["413"] = answer("body over its limit", error)
        operation["requestBody"] = request_body(
            (JSON, ref("SharedMemoryRegistration")), required=True
        )
    return operation


def _protocol(summary: str, *, body: bool = False, model: bool = True) -> dict[str, Any]:
    """An Open Inference Protocol route: its errors are ``{"error": ...}``."""
    error = (JSON, ref("ProtocolError"))
    responses: dict[str, Any] = {"200": answer(summary, (JSON, {"type": "object"}))}
    if model:
        responses["400"] = answer("the version asked is not a whole number", error)
        responses["404"] = answer("no model (or version) of that name", error)
    responses["503"] = answer("not ready, or the queue is full (Retry-After)", error)
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        operation["requestBody"] = request_body(
            (JSON, {"type": "object"}), ("application/octet-stream", {"type": "string"})
        )
        responses["200"] = answer(
            summary, (JSON, {"type": "object"}), ("application/octet-stream", {"type": "string"})
        )
        responses["400"] = answer(
            "the request is not the protocol's, or the model refuses it", error
        )
        responses["403"] = answer(
            "a tensor in shared memory, and SLUICEWAY_ALLOW_CLIENT_SHM is off", error
        )
        responses["404"] = answer(
            "no model (or version) of that name, or no shared memory region", error
        )
        responses["413"] = answer("body over its limit", error)
        responses["504"] = answer("the deadline (or the request's timeout) passed", error)
    return operation


PROTOCOL: dict[tuple[str, str], dict[str, Any]] = {}
PROTOCOL[("/v2", "get")] = _protocol("server metadata", model=False)
PROTOCOL[("/v2/health/live", "get")] = _protocol("live", model=False)
PROTOCOL[("/v2/health/ready", "get")] = _protocol("ready", model=False)
PROTOCOL[("/v2/models", "get")] = _protocol("KServe's list of model names", model=False)
PROTOCOL[("/v2/models/stats", "get")] = _protocol("every model's statistics", model=False)
for _prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    PROTOCOL[(_prefix, "get")] = _protocol("model metadata")
    PROTOCOL[(f"{_prefix}/ready", "get")] = _protocol("the model is ready")
    PROTOCOL[(f"{_prefix}/config", "get")] = _protocol("the model's configuration")
    PROTOCOL[(f"{_prefix}/stats", "get")] = _protocol("the model's statistics")
    PROTOCOL[(f"{_prefix}/infer", "post")] = _protocol("the model's outputs", body=True)
PROTOCOL[("/v2/repository/models/{name}/load", "post")] = _model_control("load")
PROTOCOL[("/v2/repository/models/{name}/unload", "post")] = _model_control("unload")
PROTOCOL[("/v2/logging", "get")] = _log_settings(change=False)
PROTOCOL[("/v2/logging", "post")] = _log_settings(change=True)

_REGIONS = {"type": "array", "items": ref("SharedMemoryRegion")}
_SHM = "/v2/systemsharedmemory"
PROTOCOL[(f"{_SHM}/region/{{name}}/register", "post")] = _shared_memory(
    "register a region of a shared-memory object", body=True
)
PROTOCOL[(f"{_SHM}/unregister", "post")] = _shared_memory("unregister every region")
PROTOCOL[(f"{_SHM}/region/{{name}}/unregister", "post")] = _shared_memory("unregister a region")
PROTOCOL[(f"{_SHM}/status", "get")] = _shared_memory("every registered region", _REGIONS)
PROTOCOL[(f"{_SHM}/region/{{name}}/status", "get")] = _shared_memory(
    "the region", _REGIONS, named=True
)


def _not_served(summary: str, why: str, *, body: bool = False) -> dict[str, Any]:
    """A route of a Triton extension this server does not serve: 501 saying so."""
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"501": answer(why, (JSON, ref("ProtocolError")))},
    }
    if body:
        operation["requestBody"] = request_body((JSON, {"type": "object"}))
    return operation


def _no_cuda_region(summary: str, answered: Any | None = None) -> dict[str, Any]:
    """CUDA shared memory: no region is ever registered (``api/oip/regions.py``)."""
    ok = answer(summary, (JSON, answered)) if answered is not None else answer(summary)
    return {"summary": summary, "responses": {"200": ok}}


_CUDA = "/v2/cudasharedmemory"
PROTOCOL[(f"{_CUDA}/region/{{name}}/register", "post")] = {
    "summary": "CUDA shared memory is not served",
    "responses": {
        "400": answer(
            "models run on the CPU: no CUDA region can be registered (as Triton without GPUs)",
            (JSON, ref("ProtocolError")),
        )
    },
    "requestBody": request_body((JSON, {"type": "object"})),
}
PROTOCOL[(f"{_CUDA}/unregister", "post")] = _no_cuda_region("nothing to unregister")
PROTOCOL[(f"{_CUDA}/region/{{name}}/unregister", "post")] = _no_cuda_region("nothing to unregister")
PROTOCOL[(f"{_CUDA}/status", "get")] = _no_cuda_region("no CUDA region is registered", _REGIONS)
PROTOCOL[(f"{_CUDA}/region/{{name}}/status", "get")] = {
    "summary": "no CUDA region is registered",
    "responses": {"404": answer("no CUDA region is ever registered", (JSON, ref("ProtocolError")))},
}
for _path in ("/v2/trace/setting", "/v2/models/{name}/trace/setting"):
    PROTOCOL[(_path, "get")] = _not_served("trace settings", "the trace extension is not served")
    PROTOCOL[(_path, "post")] = _not_served(
        "trace settings", "the trace extension is not served", body=True
    )
