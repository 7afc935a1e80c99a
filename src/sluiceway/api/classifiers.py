"""Image classifiers over HTTP, the native JSON API (images go the one way of
``image_classifiers.py``, as from every other contract).

- ``GET /v1/models`` (``api/repository.py``) lists them with every other model.
- ``POST /v1/models/{model}/classify`` with ``{"images": [base64 or data URL, ...], "k": 5}`` →
  ``{"model": name, "results": [{"predictions": [{"label", "score"}, ...]} | {"error": why}]}``;
  one bad image gets its own ``error`` and never fails the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from sluiceway.api.bodies import read_body
from sluiceway.api.context import client_address
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError, describe_validation
from sluiceway.errors import BadInput, UnknownModel
from sluiceway.inputs.encoded import decode_base64_image
from sluiceway.services import services_of

router = APIRouter(tags=["classifiers"])


class ClassifyRequest(BaseModel):
    """The native API's body: base64 images (or ``data:`` URLs) and how many classes each."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    images: Annotated[list[StrictStr], Field(min_length=1)]
    k: StrictInt = 5


@router.post("/v1/models/{model}/classify")
async def classify(model: str, request: Request) -> Response:
    """Top-k classes of each base64 image by ``model``."""
    services = services_of(request)
    settings = services.settings
    images = services.images
    if model not in images.names():
        # A repository classifier an operator unloaded is known, not ready: 503 saying why,
        # as /v1 infer and the protocol answer (and as split mode's workers do).
        with contextlib.suppress(UnknownModel):
            services.registry.ready_record(model)
        raise RequestError(404, f"no image classifier named {model!r}; known: {images.names()}")
    body = await read_body(request, settings.max_body_bytes)
    try:
        parsed = ClassifyRequest.model_validate_json(body)
    except ValidationError as error:
        raise RequestError(422, describe_validation(error)) from None
    if len(parsed.images) > settings.classify_max_images:
        raise RequestError(
            413, f"{len(parsed.images)} images; at most {settings.classify_max_images} per call"
        )
    if not 1 <= parsed.k <= settings.classify_max_k:
        raise RequestError(422, f"k must be between 1 and {settings.classify_max_k}")
    deadline = deadline_of(request, settings.request_timeout_s)
    client = client_address(request)

    async def one(text: str) -> dict[str, Any]:
        try:
            data = decode_base64_image(text, settings.max_upload_bytes)
            predictions = await images.classify(
                model, data, parsed.k, deadline=deadline, client=client
            )
        except BadInput as error:
            return {"error": str(error)}
        return {"predictions": [{"label": p.label, "score": p.score} for p in predictions]}

    results = await asyncio.gather(*(one(text) for text in parsed.images))
    return Response(
        orjson.dumps({"model": model, "results": results}), media_type="application/json"
    )
