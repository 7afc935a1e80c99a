"""Image classifiers over HTTP: the native JSON API, and the one path every image takes.

``classify_bytes`` is that path for all three image contracts (bird API, ``/predict``, this
native API): decode and prepare the picture in a worker thread (Pillow and numpy release the
GIL), then submit the model-ready array as one job, so the batcher can put images from many
concurrent requests into one model call.

Native API:
- ``GET /v1/models``: the image classifiers this server runs and their inputs.
- ``POST /v1/models/{model}/classify`` with ``{"images": [base64 or data URL, ...], "k": 5}`` →
  ``{"model": name, "results": [{"predictions": [{"label", "score"}, ...]} | {"error": why}]}``;
  one bad image gets its own ``error`` and never fails the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from sluiceway.api.bodies import read_body
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError, describe_validation
from sluiceway.inputs.encoded import decode_base64_image
from sluiceway.inputs.pixels import ImageInput, prepare_image
from sluiceway.models.classifier import Pixels, Prediction, ranked
from sluiceway.models.onnx_classifier import IMAGENET_INPUT
from sluiceway.models.tflite_classifier import BIRDS_INPUT
from sluiceway.runtime.errors import BadInput, ModelUnavailable
from sluiceway.runtime.jobs import Job
from sluiceway.services import Services, services_of

router = APIRouter(tags=["classifiers"])

CLASSIFIER_INPUTS: Mapping[str, ImageInput] = MappingProxyType(
    {"birds": BIRDS_INPUT, "imagenet": IMAGENET_INPUT}
)
"""The input each image classifier kind registered in ``kinds.build_kinds`` declares, by name."""


async def classify_bytes(
    services: Services, model: str, data: bytes, k: int, deadline: float | None = None
) -> list[Prediction]:
    """The ``k`` best classes of one image by the named classifier, best first."""
    spec = CLASSIFIER_INPUTS.get(model)
    if spec is None or model not in services.dispatcher.models():
        raise ModelUnavailable(f"no image classifier named {model!r}")
    settings = services.settings
    pixels = await asyncio.to_thread(
        prepare_image, data, spec, settings.max_image_pixels, settings.jpeg_draft
    )
    job = Job(
        model=model,
        payload=Pixels(pixels, k),
        deadline=deadline if deadline is not None else time.time() + settings.request_timeout_s,
    )
    return ranked(await services.dispatcher.submit(job))


class ClassifyRequest(BaseModel):
    """The native API's body: base64 images (or ``data:`` URLs) and how many classes each."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    images: Annotated[list[StrictStr], Field(min_length=1)]
    k: StrictInt = 5


def classifiers_of(services: Services) -> list[str]:
    """Names of the image classifiers the dispatcher runs."""
    return [name for name in services.dispatcher.models() if name in CLASSIFIER_INPUTS]


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The image classifiers served here and the input each expects."""
    services = services_of(request)
    models = []
    for name in classifiers_of(services):
        spec = CLASSIFIER_INPUTS[name]
        models.append(
            {
                "name": name,
                "task": "image-classification",
                "input": {"size": spec.size, "layout": spec.layout, "dtype": spec.dtype},
                "classify": f"/v1/models/{name}/classify",
            }
        )
    return Response(orjson.dumps({"models": models}), media_type="application/json")


@router.post("/v1/models/{model}/classify")
async def classify(model: str, request: Request) -> Response:
    """Top-k classes of each base64 image by ``model``."""
    services = services_of(request)
    settings = services.settings
    if model not in classifiers_of(services):
        raise RequestError(
            404, f"no image classifier named {model!r}; known: {classifiers_of(services)}"
        )
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

    async def one(text: str) -> dict[str, Any]:
        try:
            data = decode_base64_image(text, settings.max_upload_bytes)
            predictions = await classify_bytes(services, model, data, parsed.k, deadline)
        except BadInput as error:
            return {"error": str(error)}
        return {"predictions": [{"label": p.label, "score": p.score} for p in predictions]}

    results = await asyncio.gather(*(one(text) for text in parsed.images))
    return Response(
        orjson.dumps({"model": model, "results": results}), media_type="application/json"
    )
