"""Image captions (MISSION.md §4): ``POST /api/v1/predictions`` → ``{"title": "<caption>"}``.

The image comes as base64, bare or in a ``data:image/<type>;base64,`` URL. Problems with it are
answered ``400 {"image": ["<why>"]}``, the shape of the seed's Django REST framework service, and
so are the other body errors, with that framework's messages, so its clients read them as before.
Each picture is decoded and bounded here, in a worker thread, and queued as one caption job whose
deadline is the request's; jobs of concurrent requests share ``generate`` calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from sluiceway.api.bodies import read_body
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError
from sluiceway.api.ratelimit import RateLimiter
from sluiceway.config import Settings
from sluiceway.errors import BadInput
from sluiceway.inputs.encoded import TOO_LARGE, decode_base64_image, encoded_limit
from sluiceway.inputs.images import decode_image
from sluiceway.kinds import CAPTION
from sluiceway.models.captioner import CaptionInput
from sluiceway.runtime.jobs import Job
from sluiceway.services import services_of

PATH = "/api/v1/predictions"
MODEL = CAPTION

# Room for the JSON around the base64 and for line-wrapped base64 (76-character lines add
# under 3 %); a body larger than this cannot hold an image within the size cap.
_BODY_SLACK = 1.05
_JSON_SLACK = 64 * 1024


class InvalidBody(Exception):
    """The body fails the contract; ``errors`` is the 400 response's JSON."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(str(errors))
        self.errors = errors


def image_error(message: str) -> InvalidBody:
    """The contract's answer about the ``image`` field."""
    return InvalidBody({"image": [message]})


def parse_prediction(body: bytes) -> str:
    """The ``image`` string of a predictions body, or ``InvalidBody`` saying what is wrong."""
    if not body.strip():
        raise image_error("This field is required.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidBody({"detail": f"JSON parse error - {error}"}) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        message = f"Invalid data. Expected a dictionary, but got {kind}."
        raise InvalidBody({"non_field_errors": [message]})
    if "image" not in data:
        raise image_error("This field is required.")
    image = data["image"]
    if image is None:
        raise image_error("This field may not be null.")
    if not isinstance(image, str):
        raise image_error("Not a valid string.")
    if not image.strip():
        raise image_error("This field may not be blank.")
    return image


def prepare_picture(text: str, *, max_bytes: int, max_pixels: int, shape: CaptionInput) -> Any:
    """Base64 text → bounded RGB array, or ``ImageError`` saying why not. Blocking."""
    data = decode_base64_image(text, max_bytes)
    decoded = decode_image(data, max_pixels=max_pixels, draft=shape.draft)
    pixels: np.ndarray = shape.prepare(decoded.image)
    return pixels


def build_router(settings: Settings) -> APIRouter:
    """The captions router, with its own rate limiter when ``caption.rate_per_s`` is set."""
    router = APIRouter(tags=["captions"])
    limiter = (
        RateLimiter(settings.caption.rate_per_s, settings.caption.rate_burst)
        if settings.caption.rate_per_s > 0
        else None
    )
    shape = CaptionInput(max_side=settings.caption.max_side)
    max_bytes = settings.caption.max_image_bytes
    body_limit = int(encoded_limit(max_bytes) * _BODY_SLACK) + _JSON_SLACK

    @router.post(PATH)
    async def predictions(request: Request) -> Response:
        """Title one picture: ``{"image": "<base64 or data URL>"}`` → ``{"title": ...}``."""
        if limiter is not None:
            limiter.check(request)
        services = services_of(request)
        deadline = deadline_of(request, settings.request_timeout_s)
        try:
            try:
                body = await read_body(request, body_limit)
            except RequestError as error:
                if error.status == 413:
                    raise image_error(TOO_LARGE) from None
                raise
            text = parse_prediction(body)
            pixels = await asyncio.to_thread(
                prepare_picture,
                text,
                max_bytes=max_bytes,
                max_pixels=settings.max_image_pixels,
                shape=shape,
            )
            job = Job(model=MODEL, payload=pixels, deadline=deadline)
            title = await services.dispatcher.submit(job)
        except InvalidBody as invalid:
            return JSONResponse(invalid.errors, status_code=400)
        except BadInput as error:  # the image could not be decoded, or the model refused it
            return JSONResponse({"image": [str(error)]}, status_code=400)
        return Response(orjson.dumps({"title": title}), media_type="application/json")

    return router
