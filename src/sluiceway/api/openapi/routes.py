"""What FastAPI cannot tell of the routes of the clients' contracts (the kiosk, the bird and
upload pages, ``/predict``, the captions, the ``/v1`` classifiers and inference), the
repository index and the operations routes: their bodies and every status they answer."""

from __future__ import annotations

from typing import Any

from sluiceway.api.openapi.parts import (
    BUSY,
    DETAIL,
    HTML,
    JSON,
    LATE,
    MULTIPART,
    URLENCODED,
    answer,
    body,
    detail,
    ref,
)

_KIOSK = {
    "requestBody": body((JSON, ref("KioskRequest"))),
    "responses": {
        "200": answer("one label per query vector", (JSON, ref("KioskAnswer"))),
        "400": detail("empty body, or not JSON"),
        "413": detail("body, training set or query list over its limit"),
        "422": detail("wrong shapes, non-integers, too few rows for k"),
        "503": BUSY,
        "504": LATE,
    },
}
_PAGE_ERRORS = ("the page, saying what is wrong", (HTML, {"type": "string"}))

ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("/ping", "get"): {
        "summary": "The kiosk's liveness check",
        "responses": {"200": answer("OK", ("text/plain", {"type": "string"}))},
    },
    ("/classify", "get"): {"summary": "Label kiosk query vectors (JSON body)", **_KIOSK},
    ("/classify", "post"): {"summary": "Label kiosk query vectors", **_KIOSK},
    ("/", "post"): {
        "requestBody": body(
            (JSON, ref("BirdRequest")), (MULTIPART, ref("UploadForm")), (URLENCODED, {})
        ),
        "responses": {
            "200": answer(
                "JSON: the birds of each image URL; a form: the page with the result",
                (JSON, ref("BirdAnswer")),
                (HTML, {"type": "string"}),
            ),
            "302": {"description": "a form without a file: back to the page with a notice"},
            "400": answer(*_PAGE_ERRORS),
            "413": answer(*_PAGE_ERRORS, (JSON, DETAIL)),
            "415": detail("neither JSON nor a form"),
            "422": detail("an image that is not an http(s) URL, or a wrongly typed field"),
            "503": BUSY,
            "504": LATE,
        },
    },
    ("/predict", "post"): {
        "requestBody": body((MULTIPART, ref("UploadForm"))),
        "responses": {
            "200": answer("the best ImageNet class", (JSON, ref("PredictAnswer"))),
            "400": answer(
                "no file, a bad file or name (why: X-Sluiceway-Error)",
                (JSON, ref("PredictAnswer")),
            ),
            "413": answer("file over the size cap", (JSON, ref("PredictAnswer"))),
            "503": BUSY,
            "504": LATE,
        },
    },
    ("/uploads", "post"): {
        "requestBody": body((MULTIPART, ref("UploadForm"))),
        "responses": {
            "200": answer("the stored photo and its top five", (JSON, {"type": "object"})),
            "400": detail("no file, or not an image we take"),
            "413": detail("photo or form over the size cap"),
            "415": detail("not multipart/form-data"),
            "503": BUSY,
            "504": LATE,
        },
    },
    ("/feedback", "get"): {
        "summary": "The upload page (where the seed's page shows its feedback form)",
        "responses": {"200": answer("the page", (HTML, {"type": "string"}))},
    },
    ("/feedback", "post"): {
        "requestBody": body((URLENCODED, ref("FeedbackForm")), (MULTIPART, ref("FeedbackForm"))),
        "responses": {
            "200": answer(
                "saved: the page with thanks (JSON with Accept: application/json); an empty "
                "post: the page, nothing recorded",
                (HTML, {"type": "string"}),
                (JSON, {"type": "object"}),
            ),
            "400": answer(*_PAGE_ERRORS, (JSON, DETAIL)),
            "413": answer(*_PAGE_ERRORS, (JSON, DETAIL)),
            "415": answer(*_PAGE_ERRORS, (JSON, DETAIL)),
        },
    },
    ("/display/{name}", "get"): {
        "responses": {
            "200": answer(
                "a stored upload",
                ("image/png", {"type": "string", "format": "binary"}),
                ("image/jpeg", {"type": "string", "format": "binary"}),
                ("image/gif", {"type": "string", "format": "binary"}),
            ),
            "404": detail("no stored image by that name"),
        },
    },
    ("/static/{path}", "get"): {
        "summary": "The upload page's script, style and icon",
        "parameters": [
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {"description": "the file"},
            "404": detail("no such file"),
        },
    },
    ("/v1/models/{model}/classify", "post"): {
        "requestBody": body((JSON, ref("ClassifyRequest"))),
        "responses": {
            "200": answer("top-k classes per image", (JSON, ref("ClassifyAnswer"))),
            "404": detail("no image classifier by that name"),
            "413": detail("body or image list over its limit"),
            "422": detail("body not of the documented shape, or k out of range"),
            "503": BUSY,
            "504": LATE,
        },
    },
    ("/v1/models", "get"): {
        "summary": "Every model, its state and how to call it",
        "responses": {"200": answer("the models", (JSON, ref("ModelList")))},
    },
    ("/v1/models/{name}/infer", "post"): {
        "requestBody": body((JSON, ref("InferRequest"))),
        "responses": {
            "200": answer("the model's outputs", (JSON, ref("InferAnswer"))),
            "400": detail(
                "not JSON, unknown or missing inputs, wrong shapes or types, or a model that "
                "takes no tensors"
            ),
            "404": detail("no model by that name"),
            "413": detail("body over its limit"),
            "503": BUSY,
            "504": LATE,
        },
    },
    ("/v2/repository/index", "post"): {
        "requestBody": body(
            (JSON, {"type": "object", "properties": {"ready": {"type": "boolean"}}})
        ),
        "responses": {
            "200": answer(
                "every model's name, version, state and reason",
                (JSON, {"type": "array", "items": ref("RepositoryEntry")}),
            ),
            "400": answer('the body is not {"ready": bool}', (JSON, ref("ProtocolError"))),
            "413": detail("body over its limit"),
        },
    },
    ("/api/v1/predictions", "post"): {
        "requestBody": body((JSON, ref("CaptionRequest"))),
        "responses": {
            "200": answer(
                "the picture's title",
                (JSON, {"type": "object", "properties": {"title": {"type": "string"}}}),
            ),
            "400": answer("what is wrong with the body or image", (JSON, ref("CaptionError"))),
            "429": detail("over the per-client rate (with Retry-After)"),
            "503": BUSY,
            "504": LATE,
        },
    },
    ("/readyz", "get"): {
        "responses": {
            "200": answer("ready", (JSON, {"type": "object"})),
            "503": answer("not ready", (JSON, {"type": "object"})),
        }
    },
    ("/metrics", "get"): {
        "responses": {"200": answer("Prometheus text", ("text/plain", {"type": "string"}))}
    },
}
