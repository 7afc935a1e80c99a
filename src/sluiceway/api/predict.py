"""The upload page's prediction endpoint (MISSION.md §3): ``POST /predict``, multipart ``file``.

``200 {"success": true, "prediction": str, "score": float}`` (score rounded to 4 decimals);
a missing or bad file gets ``400 {"success": false, "prediction": null, "score": null}`` and a
file over the size cap ``413`` with the same body. The body stays exactly the contract's; the
reason goes in the ``X-Sluiceway-Error`` header and the log. ``GET /predict`` is 405 by routing.
"""

from __future__ import annotations

import logging
from pathlib import PurePath

import orjson
from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from sluiceway.api.bodies import read_body
from sluiceway.api.classifiers import classify_bytes
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError
from sluiceway.api.forms import FORM_OVERHEAD, parse_multipart
from sluiceway.inputs.images import sniff
from sluiceway.models.classifier import Prediction
from sluiceway.runtime.errors import BadInput
from sluiceway.services import Services, services_of

logger = logging.getLogger(__name__)

router = APIRouter(tags=["upload"])

UPLOAD_MODEL = "imagenet"
ACCEPTED_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif"})
ACCEPTED_FORMATS = frozenset({"png", "jpeg", "gif"})

ERROR_HEADER = "X-Sluiceway-Error"


async def classify_image(
    services: Services, data: bytes, k: int = 5, deadline: float | None = None
) -> list[Prediction]:
    """The upload model's ``k`` best classes for one image; ``BadInput`` if it is not one."""
    if sniff(data) not in ACCEPTED_FORMATS:
        raise BadInput("not a PNG, JPEG or GIF image")
    return await classify_bytes(services, UPLOAD_MODEL, data, k, deadline)


def accepted_filename(name: str) -> bool:
    """Whether an upload's file name has one of the accepted extensions, in any letter case."""
    return PurePath(name).suffix.lower() in ACCEPTED_EXTENSIONS


def _failure(status: int, reason: str) -> Response:
    logger.info("predict refused (%d): %s", status, reason)
    body = {"success": False, "prediction": None, "score": None}
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={ERROR_HEADER: reason.replace("×", "x").encode("ascii", "replace").decode()},
    )


async def read_upload(request: Request, max_bytes: int) -> tuple[str, bytes]:
    """The uploaded ``file`` field's name and bytes; ``RequestError`` saying what is wrong."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(400, "send the image as multipart/form-data field 'file'")
    body = await read_body(request, max_bytes + FORM_OVERHEAD)
    try:
        form = await parse_multipart(request.headers, body, max_files=4)
    except MultiPartException as error:
        raise RequestError(400, f"malformed multipart body: {error.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise RequestError(400, "no file in form field 'file'")
        if not accepted_filename(upload.filename):
            raise RequestError(400, "file must be .png, .jpg, .jpeg or .gif")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise RequestError(413, f"file is {len(data)} bytes; at most {max_bytes} are accepted")
    if not data:
        raise RequestError(400, "file is empty")
    return upload.filename, data


@router.post("/predict")
async def predict(request: Request) -> Response:
    """Classify one uploaded image with the ImageNet model."""
    services = services_of(request)
    settings = services.settings
    try:
        name, data = await read_upload(request, settings.max_upload_bytes)
        predictions = await classify_image(
            services, data, k=1, deadline=deadline_of(request, settings.request_timeout_s)
        )
    except RequestError as error:
        return _failure(error.status, error.message)
    except BadInput as error:
        return _failure(400, str(error))
    best = predictions[0]
    logger.debug("predict %s: %s %.4f", name, best.label, best.score)
    body = {"success": True, "prediction": best.label, "score": round(best.score, 4)}
    return Response(orjson.dumps(body), media_type="application/json")
