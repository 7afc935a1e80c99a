"""The upload page's feedback (MISSION.md §3): "this is wrong", appended to the feedback CSV.

- ``POST /feedback``: the page's own form sends structured fields (``image``, ``prediction``,
  ``score``, ``correct_label``); the seed's page sends one ``report`` text, kept verbatim. A
  form post answers ``200`` with the page and its notice (the seed's clients follow no
  redirect); an empty post shows the page and records nothing; ``Accept: application/json``
  gets ``{"saved": ...}``.
- ``GET /feedback``: the page.

Apart from ``api/web.py`` because reading and checking a report is its own work (its own form
fields, limits and refusals) that shares only the page with the upload routes: this module
imports the page from there, never the other way.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.datastructures import FormData

from sluiceway.api.bodies import read_form
from sluiceway.api.errors import RequestError
from sluiceway.api.web import NOTICES, WebPage, page_of
from sluiceway.stores.feedback import FeedbackError, FeedbackReport
from sluiceway.stores.uploads import UploadStore, is_upload_name

logger = logging.getLogger(__name__)

router = APIRouter(tags=["web"])

FEEDBACK_MAX_BYTES = 16 * 1024
"""A report is a few short fields; anything near this size is not one."""
FEEDBACK_FIELDS = ("image", "prediction", "score", "correct_label", "report")


@router.get("/feedback", response_class=HTMLResponse)
async def feedback_page(request: Request) -> HTMLResponse:
    """The page: where the seed's page shows its feedback form."""
    return page_of(request).render()


@router.post("/feedback")
async def feedback(request: Request) -> Response:
    """Append a "this is wrong" report; JSON for the script, the page with thanks for forms."""
    page = page_of(request)
    wants_json = "application/json" in request.headers.get("accept", "")
    try:
        form = await read_form(request, FEEDBACK_MAX_BYTES, max_files=0)
        report = _report_from(form, page.uploads)
        if report is not None:
            await page.feedback.append(report)
    except FeedbackError as error:
        return _refused(page, wants_json, 400, str(error))
    except RequestError as error:
        return _refused(page, wants_json, error.status, error.message)
    if report is None:
        logger.debug("empty feedback post: nothing recorded")
        if wants_json:
            return Response(orjson.dumps({"saved": False}), media_type="application/json")
        return page.render()
    logger.info("feedback on %r: %r is wrong", report.image, report.prediction)
    if wants_json:
        return Response(orjson.dumps({"saved": True}), media_type="application/json")
    return page.render(notice=NOTICES["feedback-saved"])


def _refused(page: WebPage, wants_json: bool, status: int, message: str) -> Response:
    """A report that was not saved: JSON for the script, the page saying why for a form."""
    logger.info("feedback refused (%d): %s", status, message)
    if wants_json:
        return Response(orjson.dumps({"detail": message}), status, media_type="application/json")
    return page.render(status=status, error=f"Your report was not saved: {message}.")


def _report_from(form: FormData, uploads: UploadStore) -> FeedbackReport | None:
    """A report from the form, ``None`` when it says nothing; names the first field that is wrong.

    With ``image`` (the page's own form), the structured fields must all be right; otherwise
    a ``report`` text (the seed's page) is kept as it is, its fields read from it when it parses.
    """
    values: dict[str, str] = {}
    for field in FEEDBACK_FIELDS:
        value = form.get(field, "")
        if not isinstance(value, str):
            raise RequestError(400, f"field {field!r} must be text, not a file")
        values[field] = value
    if not any(value.strip() for value in values.values()):
        return None
    if values["report"].strip() and not values["image"].strip():
        return FeedbackReport.from_text(values["report"], correct_label=values["correct_label"])
    for field in ("image", "prediction", "score"):
        values[field] = values[field].strip()
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
        correct_label=values["correct_label"].strip(),
        report=values["report"],
    )
