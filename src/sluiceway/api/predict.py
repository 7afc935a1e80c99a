"""The upload page's prediction endpoint (MISSION.md §3): ``POST /predict``, multipart ``file``.

``200 {"success": true, "prediction": str, "score": float}`` (score rounded to 4 decimals; the
label spelled as Keras's ``decode_predictions`` spells it, e.g. ``Eskimo_dog``, which is what
the seed's clients compare); a missing or bad file gets ``400 {"success": false, "prediction":
null, "score": null}`` and a file over the size cap ``413`` with the same body. The body stays
exactly the contract's; the reason goes in the ``X-Sluiceway-Error`` header and the log.
``GET /predict`` is 405 by routing.
"""

from __future__ import annotations

import logging
from pathlib import PurePath

import orjson
from fastapi import APIRouter, Request, Response

from sluiceway.api.bodies import read_upload
from sluiceway.api.context import client_address
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError
from sluiceway.errors import BadInput
from sluiceway.kinds import IMAGENET
from sluiceway.models.onnx_classifier import keras_name
from sluiceway.services import services_of

logger = logging.getLogger(__name__)

router = APIRouter(tags=["upload"])

UPLOAD_MODEL = IMAGENET
ACCEPTED_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif"})
ACCEPTED_FORMATS = frozenset({"png", "jpeg", "gif"})

ERROR_HEADER = "X-Sluiceway-Error"


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


@router.post("/predict")
async def predict(request: Request) -> Response:
    """Classify one uploaded image with the ImageNet model."""
    services = services_of(request)
    settings = services.settings
    try:
        upload = await read_upload(request, settings.max_upload_bytes)
        if upload is None or not upload.filename:
            raise RequestError(400, "no file in multipart/form-data field 'file'")
        if not accepted_filename(upload.filename):
            raise RequestError(400, "file must be .png, .jpg, .jpeg or .gif")
        if not upload.data:
            raise RequestError(400, "file is empty")
        predictions = await services.images.classify(
            UPLOAD_MODEL,
            upload.data,
            1,
            deadline=deadline_of(request, settings.request_timeout_s),
            client=client_address(request),
            formats=ACCEPTED_FORMATS,
        )
    except RequestError as error:
        return _failure(error.status, error.message)
    except BadInput as error:
        return _failure(400, str(error))
    best = predictions[0]
    name = keras_name(best.label)
    logger.debug("predict %s: %s %.4f", upload.filename, name, best.score)
    body = {"success": True, "prediction": name, "score": round(best.score, 4)}
    return Response(orjson.dumps(body), media_type="application/json")
