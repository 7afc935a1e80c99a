"""The bird photo API (MISSION.md §2): ``POST /`` with ``{"images": [url, ...], "k": 3}``.

``200 {"successful_results": {url: [{"bird_name", "score"}, ...]}, "failed_results": [url, ...],
"time_taken": s, "errors": [...]}``. The four input problems of the contract are answered 200
with one message in ``errors``; a string that is not a URL is 422. Each image is downloaded,
decoded and classified on its own, concurrently: one that fails lands in ``failed_results``
and never fails the others. ``errors`` keeps the contract's meaning (validation errors only);
why an image failed is logged with the request id. Overload, an unavailable model or a passed
deadline concern the whole request and answer 503/504 as everywhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import Request, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    HttpUrl,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from sluiceway.api.context import client_address
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.errors import RequestError, describe_validation
from sluiceway.errors import BadInput, DeadlineExceeded
from sluiceway.image_classifiers import ImageClassifiers
from sluiceway.inputs.download_slots import Share
from sluiceway.inputs.fetch import ImageFetcher
from sluiceway.kinds import BIRDS
from sluiceway.services import services_of

logger = logging.getLogger(__name__)

_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _is_url(value: str) -> str:
    """Validate as an http(s) URL but keep the caller's spelling: it is the result's key."""
    _HTTP_URL.validate_python(value)
    return value


ImageUrl = Annotated[StrictStr, AfterValidator(_is_url)]


class BirdRequest(BaseModel):
    """The bird API's body."""

    model_config = ConfigDict(frozen=True)
    images: list[ImageUrl] | None = None
    k: int = 3


def validation_error(request: BirdRequest, max_images: int, max_k: int) -> str | None:
    """The contract's message for the first input problem, or ``None`` if there is none."""
    if not request.images:
        return "No images provided"
    if len(request.images) > max_images:
        return f"Too many images provided. Max {max_images} images allowed"
    if request.k > max_k:
        return f"Max allowed value of K is {max_k}"
    if request.k < 0:
        return "Min allowed value of K is 0"
    return None


def fetcher_of(request: Request) -> ImageFetcher:
    """The app's image fetcher (one shared connection pool per process)."""
    fetcher: ImageFetcher = request.app.state.fetcher
    return fetcher


async def classify_url(
    images: ImageClassifiers,
    fetcher: ImageFetcher,
    url: str,
    k: int,
    deadline: float,
    share: Share | None = None,
    client: str | None = None,
) -> list[dict[str, Any]]:
    """Download one image (within the request's ``share`` of download slots) and return its
    top ``k`` birds in the contract's shape; ``client`` is whom the model's quota counts."""
    data = await fetcher.fetch(url, share)
    predictions = await images.classify(BIRDS, data, k, deadline=deadline, client=client)
    return [{"bird_name": p.label, "score": p.score} for p in predictions]


def _reply(
    started: float,
    successes: dict[str, Any] | None = None,
    failures: list[str] | None = None,
    errors: list[str] | None = None,
) -> Response:
    body = {
        "successful_results": successes or {},
        "failed_results": failures or [],
        "time_taken": time.perf_counter() - started,
        "errors": errors or [],
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def bird_api(request: Request, body: bytes, started: float) -> Response:
    """Top-k birds of each image URL (the JSON branch of ``POST /``; ``body`` already read)."""
    services = services_of(request)
    settings = services.settings
    try:
        parsed = BirdRequest.model_validate_json(body or b"{}")
    except ValidationError as error:
        raise RequestError(422, describe_validation(error)) from None
    problem = validation_error(parsed, settings.birds.max_images, settings.birds.max_k)
    if problem is not None:
        return _reply(started, errors=[problem])
    assert parsed.images is not None
    urls = list(dict.fromkeys(parsed.images))  # one download per distinct URL, input order
    deadline = deadline_of(request, settings.request_timeout_s)
    fetcher = fetcher_of(request)
    share = fetcher.share()
    client = client_address(request)
    try:
        async with asyncio.timeout(max(0.0, deadline - time.time())):
            outcomes = await asyncio.gather(
                *(
                    classify_url(services.images, fetcher, url, parsed.k, deadline, share, client)
                    for url in urls
                ),
                return_exceptions=True,
            )
    except TimeoutError:
        raise DeadlineExceeded("the bird API did not finish before the deadline") from None
    successes: dict[str, Any] = {}
    failures: list[str] = []
    for url, outcome in zip(urls, outcomes, strict=True):
        if isinstance(outcome, BadInput):
            logger.info("image failed: %s: %s", url, outcome)
            failures.append(url)
        elif isinstance(outcome, BaseException):
            raise outcome  # overload, model unavailable, deadline: the whole request's fate
        else:
            successes[url] = outcome
    return _reply(started, successes, failures)
