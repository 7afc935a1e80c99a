"""``POST /`` is shared by two clients: the bird photo API and the upload page's form.

- JSON (by content type, or a body starting with ``{`` when no type is sent) is the bird photo
  API (``api/birds.py``), exactly as its seed's clients send it.
- A form, an empty body, or a body with no type that is not JSON is the upload page's form post
  (``api/web.py``): without a file it redirects back to ``/`` with a message (``302``), as the
  seed's page clients expect of a bare ``POST /``.
- A non-empty body of any other type gets 415 naming what is accepted.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from sluiceway.api.birds import bird_api
from sluiceway.api.bodies import MULTIPART, URLENCODED, media_type, read_body
from sluiceway.api.errors import RequestError
from sluiceway.api.web import upload_form
from sluiceway.services import services_of

router = APIRouter(tags=["root"])


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


@router.post("/")
async def root_post(request: Request) -> Response:
    """Route ``POST /``: JSON to the bird API, everything a page may post to the upload form."""
    started = time.perf_counter()
    content_type = media_type(request)
    if content_type in (MULTIPART, URLENCODED):
        return await upload_form(request)
    body = await read_body(request, services_of(request).settings.max_body_bytes)
    if _is_json(content_type) or (not content_type and body.lstrip().startswith(b"{")):
        return await bird_api(request, body, started)
    if not content_type or not body:
        return await upload_form(request)  # no file can be in it: back to the page
    raise RequestError(
        415, f"POST / takes application/json (bird API) or a form post, not {content_type!r}"
    )
