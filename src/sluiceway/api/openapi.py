"""The OpenAPI document: every route, its body and every status it can answer.

FastAPI describes a route from its signature, and most of ours read their own bodies (to cap
their size, keep the contracts' exact error shapes, or skip the framework on the hot path), so
its document names neither their bodies nor their error statuses, and leaves out the kiosk's
routes and the static files. This module completes it. The fuzz tests
(``tests/api/test_fuzz.py``) hold the server to it: an undocumented status is a failure.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_JSON = "application/json"
_HTML = "text/html"
_MULTIPART = "multipart/form-data"
_URLENCODED = "application/x-www-form-urlencoded"

_DETAIL = {"$ref": "#/components/schemas/Detail"}
_VECTOR = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
_PREDICTION = {
    "type": "object",
    "required": ["label", "score"],
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
}

SCHEMAS: dict[str, Any] = {
    "Detail": {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"type": "string"}},
        "description": "What is wrong, in one line.",
    },
    "KioskRequest": {
        "type": "object",
        "required": ["training_data", "query_input"],
        "properties": {
            "training_data": {
                "type": "object",
                "required": ["training_data"],
                "properties": {
                    "training_data": {
                        "type": "array",
                        "items": _VECTOR,
                        "minItems": 1,
                        "description": "rows [x1, ..., label], all of one length, at least k",
                    }
                },
            },
            "query_input": {
                "type": "object",
                "required": ["query_input"],
                "properties": {
                    "query_input": {
                        "anyOf": [_VECTOR, {"type": "array", "items": _VECTOR, "minItems": 1}],
                        "description": "one query vector, or a list of them",
                    }
                },
            },
        },
    },
    "KioskAnswer": {
        "type": "object",
        "required": ["classification_result"],
        "properties": {"classification_result": {"type": "array", "items": {"type": "integer"}}},
    },
    "BirdRequest": {
        "type": "object",
        "properties": {
            "images": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "description": "http(s) URLs of bird photos",
            },
            "k": {"type": "integer", "default": 3},
        },
    },
    "BirdAnswer": {
        "type": "object",
        "required": ["successful_results", "failed_results", "time_taken", "errors"],
        "properties": {
            "successful_results": {"type": "object"},
            "failed_results": {"type": "array", "items": {"type": "string"}},
            "time_taken": {"type": "number"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    },
    "UploadForm": {
        "type": "object",
        "properties": {"file": {"type": "string", "format": "binary"}},
    },
    "PredictAnswer": {
        "type": "object",
        "required": ["success", "prediction", "score"],
        "properties": {
            "success": {"type": "boolean"},
            "prediction": {"type": ["string", "null"]},
            "score": {"type": ["number", "null"]},
        },
    },
    "FeedbackForm": {
        "type": "object",
        "properties": {
            "image": {"type": "string", "description": "a stored upload's name"},
            "prediction": {"type": "string"},
            "score": {"type": "string", "description": "a number between 0 and 1"},
            "correct_label": {"type": "string"},
            "report": {
                "type": "string",
                "description": "the seed page's one field: a short dict-like text, kept as sent",
            },
        },
    },
    "ClassifyRequest": {
        "type": "object",
        "required": ["images"],
        "additionalProperties": False,
        "properties": {
            "images": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "base64 images or data: URLs",
            },
            "k": {"type": "integer", "default": 5},
        },
    },
    "ClassifyAnswer": {
        "type": "object",
        "required": ["model", "results"],
        "properties": {
            "model": {"type": "string"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "predictions": {"type": "array", "items": _PREDICTION},
                        "error": {"type": "string"},
                    },
                },
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "object",
                "additionalProperties": {"type": "array"},
                "description": "input name → nested lists, the first axis the request's rows",
            }
        },
    },
    "InferAnswer": {
        "type": "object",
        "required": ["model", "version", "outputs"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "outputs": {"type": "object", "additionalProperties": {"type": "array"}},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": {"type": "object"}}},
    },
    "RepositoryEntry": {
        "type": "object",
        "required": ["name", "version", "state", "reason"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "state": {"enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
            "reason": {"type": "string"},
        },
    },
    "ProtocolError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "description": "The Open Inference Protocol's error shape.",
    },
    "CaptionRequest": {
        "type": "object",
        "required": ["image"],
        "properties": {"image": {"type": "string", "description": "base64 or a data: URL"}},
    },
    "CaptionError": {
        "type": "object",
        "description": "Django REST framework's shape: field (or detail) to messages.",
        "additionalProperties": {
            "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, *contents: tuple[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {media: {"schema": schema} for media, schema in contents},
    }


def _detail(description: str) -> dict[str, Any]:
    return _answer(description, (_JSON, _DETAIL))


def _body(*contents: tuple[str, Any], required: bool = False) -> dict[str, Any]:
    return {
        "required": required,
        "content": {media: {"schema": schema} for media, schema in contents},
    }


_BUSY = _detail("the model's queue is full or it is unavailable (with Retry-After)")
_LATE = _detail("the request's deadline passed")
_EDGE = {
    "408": _detail("headers or body not received in time (the HTTP edge)"),
    "431": _detail("request headers too large or too many (the HTTP edge)"),
    "503": _detail("too many connections or requests in progress (the HTTP edge; Retry-After)"),
}
"""Statuses the HTTP edge (``sluiceway.edge``) may answer for any route before it runs."""

_KIOSK = {
    "requestBody": _body((_JSON, _ref("KioskRequest"))),
    "responses": {
        "200": _answer("one label per query vector", (_JSON, _ref("KioskAnswer"))),
        "400": _detail("empty body, or not JSON"),
        "413": _detail("body, training set or query list over its limit"),
        "422": _detail("wrong shapes, non-integers, too few rows for k"),
        "503": _BUSY,
        "504": _LATE,
    },
}
_PAGE_ERRORS = ("the page, saying what is wrong", (_HTML, {"type": "string"}))

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/ping", "get"): {
        "summary": "The kiosk's liveness check",
        "responses": {"200": _answer("OK", ("text/plain", {"type": "string"}))},
    },
    ("/classify", "get"): {"summary": "Label kiosk query vectors (JSON body)", **_KIOSK},
    ("/classify", "post"): {"summary": "Label kiosk query vectors", **_KIOSK},
    ("/", "post"): {
        "requestBody": _body(
            (_JSON, _ref("BirdRequest")), (_MULTIPART, _ref("UploadForm")), (_URLENCODED, {})
        ),
        "responses": {
            "200": _answer(
                "JSON: the birds of each image URL; a form: the page with the result",
                (_JSON, _ref("BirdAnswer")),
                (_HTML, {"type": "string"}),
            ),
            "302": {"description": "a form without a file: back to the page with a notice"},
            "400": _answer(*_PAGE_ERRORS),
            "413": _answer(*_PAGE_ERRORS, (_JSON, _DETAIL)),
            "415": _detail("neither JSON nor a form"),
            "422": _detail("an image that is not an http(s) URL, or a wrongly typed field"),
            "503": _BUSY,
            "504": _LATE,
        },
    },
    ("/predict", "post"): {
        "requestBody": _body((_MULTIPART, _ref("UploadForm"))),
        "responses": {
            "200": _answer("the best ImageNet class", (_JSON, _ref("PredictAnswer"))),
            "400": _answer(
                "no file, a bad file or name (why: X-Sluiceway-Error)",
                (_JSON, _ref("PredictAnswer")),
            ),
            "413": _answer("file over the size cap", (_JSON, _ref("PredictAnswer"))),
            "503": _BUSY,
            "504": _LATE,
        },
    },
    ("/uploads", "post"): {
        "requestBody": _body((_MULTIPART, _ref("UploadForm"))),
        "responses": {
            "200": _answer("the stored photo and its top five", (_JSON, {"type": "object"})),
            "400": _detail("no file, or not an image we take"),
            "413": _detail("photo or form over the size cap"),
            "415": _detail("not multipart/form-data"),
            "503": _BUSY,
            "504": _LATE,
        },
    },
    ("/feedback", "get"): {
        "summary": "The upload page (where the seed's page shows its feedback form)",
        "responses": {"200": _answer("the page", (_HTML, {"type": "string"}))},
    },
    ("/feedback", "post"): {
        "requestBody": _body(
            (_URLENCODED, _ref("FeedbackForm")), (_MULTIPART, _ref("FeedbackForm"))
        ),
        "responses": {
            "200": _answer(
                "saved: the page with thanks (JSON with Accept: application/json); an empty "
                "post: the page, nothing recorded",
                (_HTML, {"type": "string"}),
                (_JSON, {"type": "object"}),
            ),
            "400": _answer(*_PAGE_ERRORS, (_JSON, _DETAIL)),
            "413": _answer(*_PAGE_ERRORS, (_JSON, _DETAIL)),
            "415": _answer(*_PAGE_ERRORS, (_JSON, _DETAIL)),
        },
    },
    ("/display/{name}", "get"): {
        "responses": {
            "200": _answer(
                "a stored upload",
                ("image/png", {"type": "string", "format": "binary"}),
                ("image/jpeg", {"type": "string", "format": "binary"}),
                ("image/gif", {"type": "string", "format": "binary"}),
            ),
            "404": _detail("no stored image by that name"),
        },
    },
    ("/static/{path}", "get"): {
        "summary": "The upload page's script, style and icon",
        "parameters": [
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {"description": "the file"},
            "404": _detail("no such file"),
        },
    },
    ("/v1/models/{model}/classify", "post"): {
        "requestBody": _body((_JSON, _ref("ClassifyRequest"))),
        "responses": {
            "200": _answer("top-k classes per image", (_JSON, _ref("ClassifyAnswer"))),
            "404": _detail("no image classifier by that name"),
            "413": _detail("body or image list over its limit"),
            "422": _detail("body not of the documented shape, or k out of range"),
            "503": _BUSY,
            "504": _LATE,
        },
    },
    ("/v1/models", "get"): {
        "summary": "Every model, its state and how to call it",
        "responses": {"200": _answer("the models", (_JSON, _ref("ModelList")))},
    },
    ("/v1/models/{name}/infer", "post"): {
        "requestBody": _body((_JSON, _ref("InferRequest"))),
        "responses": {
            "200": _answer("the model's outputs", (_JSON, _ref("InferAnswer"))),
            "400": _detail(
                "not JSON, unknown or missing inputs, wrong shapes or types, or a model that "
                "takes no tensors"
            ),
            "404": _detail("no model by that name"),
            "413": _detail("body over its limit"),
            "503": _BUSY,
            "504": _LATE,
        },
    },
    ("/v2/repository/index", "post"): {
        "requestBody": _body(
            (_JSON, {"type": "object", "properties": {"ready": {"type": "boolean"}}})
        ),
        "responses": {
            "200": _answer(
                "every model's name, version, state and reason",
                (_JSON, {"type": "array", "items": _ref("RepositoryEntry")}),
            ),
            "400": _answer('the body is not {"ready": bool}', (_JSON, _ref("ProtocolError"))),
            "413": _detail("body over its limit"),
        },
    },
    ("/api/v1/predictions", "post"): {
        "requestBody": _body((_JSON, _ref("CaptionRequest"))),
        "responses": {
            "200": _answer(
                "the picture's title",
                (_JSON, {"type": "object", "properties": {"title": {"type": "string"}}}),
            ),
            "400": _answer("what is wrong with the body or image", (_JSON, _ref("CaptionError"))),
            "429": _detail("over the per-client rate (with Retry-After)"),
            "503": _BUSY,
            "504": _LATE,
        },
    },
    ("/readyz", "get"): {
        "responses": {
            "200": _answer("ready", (_JSON, {"type": "object"})),
            "503": _answer("not ready", (_JSON, {"type": "object"})),
        }
    },
    ("/metrics", "get"): {
        "responses": {"200": _answer("Prometheus text", ("text/plain", {"type": "string"}))}
    },
}


def _model_control(action: str) -> dict[str, Any]:
    error = (_JSON, _ref("ProtocolError"))
    return {
        "summary": f"{action.capitalize()} a repository model (bearer SLUICEWAY_ADMIN_TOKEN)",
        "responses": {
            "200": _answer("the model's state afterwards", (_JSON, _ref("RepositoryEntry"))),
            "400": _answer("the model did not load, and why", error),
            "401": _answer("no or a wrong bearer token", error),
            "403": _answer("model control is off: no SLUICEWAY_ADMIN_TOKEN is set", error),
            "404": _answer("no model of that name", error),
            "409": _answer(
                "a built-in model, no repository, split mode, or a failed reload", error
            ),
        },
    }


def _protocol(summary: str, *, body: bool = False, model: bool = True) -> dict[str, Any]:
    """An Open Inference Protocol route: its errors are ``{"error": ...}``."""
    error = (_JSON, _ref("ProtocolError"))
    responses: dict[str, Any] = {"200": _answer(summary, (_JSON, {"type": "object"}))}
    if model:
        responses["404"] = _answer("no model (or version) of that name", error)
    responses["503"] = _answer("not ready, or the queue is full (Retry-After)", error)
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        operation["requestBody"] = _body(
            (_JSON, {"type": "object"}), ("application/octet-stream", {"type": "string"})
        )
        responses["200"] = _answer(
            summary, (_JSON, {"type": "object"}), ("application/octet-stream", {"type": "string"})
        )
        responses["400"] = _answer(
            "the request is not the protocol's, or the model refuses it", error
        )
        responses["413"] = _answer("body over its limit", error)
        responses["504"] = _answer("the deadline (or the request's timeout) passed", error)
    return operation


OPERATIONS[("/v2", "get")] = _protocol("server metadata", model=False)
OPERATIONS[("/v2/health/live", "get")] = _protocol("live", model=False)
OPERATIONS[("/v2/health/ready", "get")] = _protocol("ready", model=False)
OPERATIONS[("/v2/models/stats", "get")] = _protocol("every model's statistics", model=False)
for _prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    OPERATIONS[(_prefix, "get")] = _protocol("model metadata")
    OPERATIONS[(f"{_prefix}/ready", "get")] = _protocol("the model is ready")
    OPERATIONS[(f"{_prefix}/config", "get")] = _protocol("the model's configuration")
    OPERATIONS[(f"{_prefix}/stats", "get")] = _protocol("the model's statistics")
    OPERATIONS[(f"{_prefix}/infer", "post")] = _protocol("the model's outputs", body=True)
OPERATIONS[("/v2/repository/models/{name}/load", "post")] = _model_control("load")
OPERATIONS[("/v2/repository/models/{name}/unload", "post")] = _model_control("unload")


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document of ``app`` completed with ``OPERATIONS`` and the edge's statuses."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    paths: dict[str, dict[str, Any]] = schema.setdefault("paths", {})
    for (path, method), described in OPERATIONS.items():
        operation = paths.setdefault(path, {}).setdefault(method, {})
        operation.update(copy.deepcopy(described))
    for operations in paths.values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, answer in _EDGE.items():
                responses.setdefault(status, answer)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(copy.deepcopy(SCHEMAS))
    return schema


def install(app: FastAPI) -> None:
    """Serve ``document(app)`` as the app's ``/openapi.json``, built once on first use."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(document(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
