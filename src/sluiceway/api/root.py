"""``POST /`` is shared by two clients, told apart by content type.

JSON is the bird photo API (``api/birds.py``); a multipart or urlencoded form is the upload
page's no-JavaScript form post (``api/web.py``). Anything else gets 415 naming what is accepted.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from sluiceway.api.birds import bird_api
from sluiceway.api.errors import RequestError
from sluiceway.api.web import upload_form

router = APIRouter(tags=["root"])

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@router.post("/")
async def root_post(request: Request) -> Response:
    """Route ``POST /`` by content type: JSON to the bird API, forms to the upload page."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type or content_type == "application/json" or content_type.endswith("+json"):
        return await bird_api(request)
    if content_type in _FORM_TYPES:
        return await upload_form(request)
    raise RequestError(
        415, f"POST / takes application/json (bird API) or a form post, not {content_type!r}"
    )
