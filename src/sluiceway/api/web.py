"""The upload page (MISSION.md §3): a person uploads a photo, sees the top five, reports mistakes.

- ``GET /``: the page, rendered on the server; its script only enhances it.
- ``POST /`` (form, dispatched here by ``api/root.py``): the no-script path. A file renders the
  page with its result; no file redirects back (302) with a message.
- ``POST /uploads``: the script's path; the same work, answered as JSON.
- ``GET /display/<name>``: a stored upload, by its content-addressed name only.

``WebPage`` (the page's templates and stores) is also what ``api/feedback.py`` answers with: the
``/feedback`` routes, which read and record people's reports, live there and import the page
from here (``app.py`` includes their router after ``install``).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader
from starlette.staticfiles import StaticFiles

from sluiceway.api.bodies import Upload, read_upload, size_text
from sluiceway.api.context import client_address
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError
from sluiceway.api.predict import ACCEPTED_FORMATS, UPLOAD_MODEL
from sluiceway.config import Settings
from sluiceway.errors import BadInput
from sluiceway.models.classifier import Prediction
from sluiceway.services import services_of
from sluiceway.stores.feedback import FeedbackLog
from sluiceway.stores.uploads import StoredUpload, UploadStore

logger = logging.getLogger(__name__)

router = APIRouter(tags=["web"])

TOP_K = 5

NOTICES = {
    "no-file": "Choose a photo first, then press Classify.",
    "feedback-saved": "Thank you — your report was saved.",
}
"""Messages the page shows after a redirect, by code: only these texts, never request text."""

# Scripts and styles come only from this server; the preview is a blob: URL.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class Classified:
    """One classified, stored upload: what the page shows."""

    upload: StoredUpload
    filename: str
    predictions: list[Prediction]

    def as_json(self) -> dict[str, Any]:
        """The shape ``POST /uploads`` answers with."""
        return {
            "image": self.upload.name,
            "url": f"/display/{self.upload.name}",
            "filename": self.filename,
            "predictions": [{"label": p.label, "score": p.score} for p in self.predictions],
        }


class WebPage:
    """The page's templates and stores, built once per app by ``install``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.uploads = UploadStore(
            Path(settings.upload_dir).expanduser(), settings.max_upload_bytes
        )
        self.feedback = FeedbackLog(Path(settings.feedback_dir).expanduser())
        self.templates = Environment(
            loader=PackageLoader("sluiceway", "templates"), autoescape=True, enable_async=False
        )
        self.asset_version = _asset_version()

    def render(
        self,
        *,
        status: int = 200,
        result: Classified | None = None,
        error: str | None = None,
        notice: str | None = None,
    ) -> HTMLResponse:
        """The page, with a result, an error or a notice when there is one."""
        html = self.templates.get_template("index.html").render(
            result=result,
            error=error,
            notice=notice,
            max_upload_bytes=self.settings.max_upload_bytes,
            max_upload_text=size_text(self.settings.max_upload_bytes),
            asset_version=self.asset_version,
        )
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    async def classify_upload(self, request: Request, upload: Upload) -> Classified:
        """Classify the photo and keep it; ``BadInput`` saying why if it is not one we take."""
        deadline = deadline_of(request, self.settings.request_timeout_s)
        if not upload.data:
            raise BadInput("the file is empty")
        predictions = await services_of(request).images.classify(
            UPLOAD_MODEL,
            upload.data,
            TOP_K,
            deadline=deadline,
            formats=ACCEPTED_FORMATS,
            client=client_address(request),
        )
        stored = await asyncio.to_thread(self.uploads.save, upload.data, ACCEPTED_FORMATS)
        logger.debug("upload %s classified as %s", stored.name, predictions[0].label)
        return Classified(
            upload=stored, filename=_display_name(upload.filename), predictions=predictions
        )

    async def read_photo(self, request: Request) -> Upload | None:
        """The form's photo, read to the end even when too large (so the browser sees why)."""
        limit = self.settings.max_upload_bytes
        try:
            return await read_upload(request, limit, drain=True)
        except RequestError as error:
            if error.status == 413:
                raise RequestError(
                    413, f"the photo is too large: at most {size_text(limit)}"
                ) from None
            raise


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the upload page, its static files and its endpoints from ``app`` (the feedback
    routes are ``api/feedback.py``'s router)."""
    app.state.web_page = WebPage(settings)
    app.include_router(router)
    app.mount("/static", StaticFiles(packages=[("sluiceway", "static")]), name="static")


def page_of(request: Request) -> WebPage:
    """The upload page of the app serving ``request``."""
    page: WebPage = request.app.state.web_page
    return page


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, notice: str = "") -> HTMLResponse:
    """The upload page; ``?notice=`` picks one of the page's own messages."""
    return page_of(request).render(notice=NOTICES.get(notice))


async def upload_form(request: Request) -> Response:
    """``POST /`` as a form: render the result, or send a person without a file back to ``/``."""
    page = page_of(request)
    try:
        upload = await page.read_photo(request)
        if upload is None:
            return _back_to_page("no-file", 302)
        result = await page.classify_upload(request, upload)
    except RequestError as error:
        return page.render(status=error.status, error=error.message)
    except BadInput as error:
        return page.render(status=400, error=f"That file cannot be classified: {error}.")
    return page.render(result=result)


@router.post("/uploads")
async def upload_json(request: Request) -> Response:
    """The page script's upload: classify and keep one photo, answer its top five as JSON."""
    page = page_of(request)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise RequestError(415, "send the photo as multipart/form-data field 'file'")
    upload = await page.read_photo(request)
    if upload is None:
        raise RequestError(400, "no file in form field 'file'")
    result = await page.classify_upload(request, upload)
    return Response(orjson.dumps(result.as_json()), media_type="application/json")


@router.get("/display/{name}")
async def display(name: str, request: Request) -> Response:
    """A stored upload; any other name, ``../`` included, is 404."""
    uploads = page_of(request).uploads
    path = uploads.path_of(name)
    if path is None:
        raise RequestError(404, "no stored image by that name")
    return FileResponse(
        path,
        media_type=uploads.media_type_of(name),
        headers={
            # The name is the content's hash: it never changes.
            "Cache-Control": "public, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'",
        },
    )


def _back_to_page(notice: str, status: int) -> RedirectResponse:
    return RedirectResponse(f"/?notice={notice}", status_code=status)


def _display_name(filename: str) -> str:
    """The last part of the name the browser sent, for showing only (never used as a path)."""
    name = PureWindowsPath(PurePosixPath(filename).name).name
    return name[:120] or "photo"


def _asset_version() -> str:
    """A short hash of the static files: their URLs change whenever they do."""
    digest = hashlib.sha256()
    static = importlib.resources.files("sluiceway").joinpath("static")
    for asset in sorted(static.iterdir(), key=lambda item: item.name):
        if asset.is_file():
            digest.update(asset.read_bytes())
    return digest.hexdigest()[:12]
