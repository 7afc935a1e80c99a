"""The upload page (MISSION.md §3): a person uploads a photo, sees the top five, reports mistakes.

- ``GET /``: the page, rendered on the server; its script only enhances it.
- ``POST /`` (form, dispatched here by ``api/root.py``): the no-script path. A file renders the
  page with its result; no file redirects back (302) with a message.
- ``POST /uploads``: the script's path; the same work, answered as JSON.
- ``GET /display/<name>``: a stored upload, by its content-addressed name only.
- ``POST /feedback``: "this is wrong", appended to the feedback CSV; the page confirms it.
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
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.staticfiles import StaticFiles

from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError
from sluiceway.api.forms import FORM_OVERHEAD, parse_multipart, parse_urlencoded
from sluiceway.api.predict import ACCEPTED_FORMATS, classify_image
from sluiceway.config import Settings
from sluiceway.models.classifier import Prediction
from sluiceway.runtime.errors import BadInput
from sluiceway.services import services_of
from sluiceway.stores.feedback import FeedbackError, FeedbackLog, FeedbackReport
from sluiceway.stores.uploads import StoredUpload, UploadStore, is_upload_name

logger = logging.getLogger(__name__)

router = APIRouter(tags=["web"])

TOP_K = 5
FEEDBACK_MAX_BYTES = 16 * 1024
"""A report is four short fields; anything near this size is not one."""
# An oversized upload is read (and dropped) up to this many times the cap before answering,
# so the browser receives the page saying so instead of a reset connection.
_DRAIN_FACTOR = 4

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
            max_upload_text=_mb(self.settings.max_upload_bytes),
            asset_version=self.asset_version,
        )
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    async def classify_upload(self, request: Request, filename: str, data: bytes) -> Classified:
        """Classify the photo and keep it; ``BadInput`` saying why if it is not one we take."""
        services = services_of(request)
        deadline = deadline_of(request, self.settings.request_timeout_s)
        if not data:
            raise BadInput("the file is empty")
        predictions = await classify_image(services, data, k=TOP_K, deadline=deadline)
        upload = await asyncio.to_thread(self.uploads.save, data, ACCEPTED_FORMATS)
        logger.debug("upload %s classified as %s", upload.name, predictions[0].label)
        return Classified(upload=upload, filename=_display_name(filename), predictions=predictions)


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the upload page, its static files and its endpoints from ``app``."""
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
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return _back_to_page("no-file", 302)  # only a multipart form can carry a file
    try:
        upload = await _read_upload(request, page.settings.max_upload_bytes)
        if upload is None:
            return _back_to_page("no-file", 302)
        filename, data = upload
        result = await page.classify_upload(request, filename, data)
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
    upload = await _read_upload(request, page.settings.max_upload_bytes)
    if upload is None:
        raise RequestError(400, "no file in form field 'file'")
    result = await page.classify_upload(request, *upload)
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


@router.post("/feedback")
async def feedback(request: Request) -> Response:
    """Append a "this is wrong" report; JSON for the script, a redirect with thanks for forms."""
    page = page_of(request)
    wants_json = "application/json" in request.headers.get("accept", "")
    try:
        form = await _read_form(request, FEEDBACK_MAX_BYTES, max_files=0)
        report = _report_from(form, page.uploads)
        await page.feedback.append(report)
    except FeedbackError as error:
        return _refused(page, wants_json, 400, str(error))
    except RequestError as error:
        return _refused(page, wants_json, error.status, error.message)
    logger.info("feedback on %s: %r is wrong", report.image, report.prediction)
    if wants_json:
        return Response(orjson.dumps({"saved": True}), media_type="application/json")
    return _back_to_page("feedback-saved", 303)


def _refused(page: WebPage, wants_json: bool, status: int, message: str) -> Response:
    """A report that was not saved: JSON for the script, the page saying why for a form."""
    logger.info("feedback refused (%d): %s", status, message)
    if wants_json:
        return Response(orjson.dumps({"detail": message}), status, media_type="application/json")
    return page.render(status=status, error=f"Your report was not saved: {message}.")


def _report_from(form: FormData, uploads: UploadStore) -> FeedbackReport:
    """A report from the feedback form's fields, naming the first one that is wrong."""
    values: dict[str, str] = {}
    for field in ("image", "prediction", "score", "correct_label"):
        value = form.get(field)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise RequestError(400, f"field {field!r} must be text, not a file")
        values[field] = value.strip()
    for field in ("image", "prediction", "score"):
        if not values[field]:
            raise RequestError(400, f"field {field!r} is missing")
    if not is_upload_name(values["image"]) or uploads.path_of(values["image"]) is None:
        raise RequestError(400, "field 'image' does not name a stored upload")
    try:
        score = float(values["score"])
    except ValueError:
        raise RequestError(400, "field 'score' must be a number between 0 and 1") from None
    return FeedbackReport(
        image=values["image"],
        prediction=values["prediction"],
        score=score,
        correct_label=values["correct_label"],
    )


async def _read_upload(request: Request, max_bytes: int) -> tuple[str, bytes] | None:
    """The form's ``file`` (name and bytes), or ``None`` when the form carries no file."""
    try:
        form = await _read_form(request, max_bytes + FORM_OVERHEAD, max_files=1)
    except RequestError as error:
        if error.status == 413:
            raise RequestError(413, f"the photo is too large: at most {_mb(max_bytes)}") from None
        raise
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return None
        data = await upload.read()
    finally:
        await form.close()
    if not upload.filename and not data:
        return None  # a browser sends an empty, nameless part when nothing was chosen
    if len(data) > max_bytes:
        raise RequestError(
            413, f"the photo is too large ({_mb(len(data))}); at most {_mb(max_bytes)} is accepted"
        )
    return upload.filename or "", data


async def _read_form(request: Request, limit: int, max_files: int) -> FormData:
    """Parse a urlencoded or multipart body of at most ``limit`` bytes."""
    body = await _read_capped(request, limit)
    content_type = request.headers.get("content-type", "").lower()
    try:
        if content_type.startswith("multipart/form-data"):
            return await parse_multipart(
                request.headers, body, max_files=max_files, max_part_size=limit
            )
        if content_type.startswith("application/x-www-form-urlencoded"):
            return await parse_urlencoded(request.headers, body)
    except MultiPartException as error:
        raise RequestError(400, f"malformed form: {error.message}") from None
    raise RequestError(415, "send a form (multipart/form-data or x-www-form-urlencoded)")


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, or 413 once it is over ``limit``, after reading a bounded excess.

    Reading the excess lets the browser finish sending and receive the answer; closing on it
    mid-upload would reset the connection and the person would see a network error instead.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit * _DRAIN_FACTOR:
        raise RequestError(413, f"the form is over the {_mb(limit)} limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit * _DRAIN_FACTOR:
            break
    if size > limit:
        raise RequestError(413, f"the form is over the {_mb(limit)} limit")
    return b"".join(chunks)


def _mb(size: int) -> str:
    """A byte count the way a person reads it: ``16 KB``, ``10.5 MB``."""
    if size < 1024 * 1024:
        return f"{size / 1024:.1f}".removesuffix(".0") + " KB"
    return f"{size / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


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
