"""Restaurant kiosks (MISSION.md §1): ``GET``/``POST /classify`` with a nested JSON body.

Each request carries its restaurant's training rows; the rows' content hash is the batching
key, so a restaurant's model is fitted once and its queries share inference calls.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sluiceway.api.bodies import read_body
from sluiceway.api.deadlines import deadline_of
from sluiceway.api.disconnects import while_connected
from sluiceway.api.errors import RequestError, describe_validation
from sluiceway.config import Settings
from sluiceway.kinds import KNN
from sluiceway.runtime.jobs import Job
from sluiceway.services import services_of

Vector = Annotated[list[StrictInt], Field(min_length=1)]


class _TrainingData(BaseModel):
    model_config = ConfigDict(frozen=True)
    training_data: Annotated[list[Vector], Field(min_length=1)]


def _as_matrix(value: Any) -> Any:
    """A flat ``[x1, x2]`` is one query vector."""
    if isinstance(value, list) and value and not isinstance(value[0], list):
        return [value]
    return value


class _QueryInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    query_input: Annotated[list[Vector], Field(min_length=1), BeforeValidator(_as_matrix)]


class ClassifyRequest(BaseModel):
    """The kiosk's body: its restaurant's training rows and one or more query vectors."""

    model_config = ConfigDict(frozen=True)
    training_data: _TrainingData
    query_input: _QueryInput


def parse_classify(
    body: bytes, neighbors: int, max_rows: int, max_queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a kiosk body into (training rows, query matrix) or raise ``RequestError``."""
    if not body.strip():
        raise RequestError(400, "empty body: send the kiosk's JSON")
    try:
        request = ClassifyRequest.model_validate_json(body)
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise RequestError(400, "body is not valid JSON") from None
        raise RequestError(422, describe_validation(error)) from None
    rows = request.training_data.training_data
    width = len(rows[0])
    if width < 2:
        raise RequestError(422, "training rows need at least one feature and a label")
    if any(len(row) != width for row in rows):
        raise RequestError(422, f"training rows must all have {width} values")
    if len(rows) < neighbors:
        raise RequestError(422, f"{len(rows)} training rows; k={neighbors} needs {neighbors}")
    if len(rows) > max_rows:
        raise RequestError(413, f"{len(rows)} training rows; at most {max_rows} are accepted")
    vectors = request.query_input.query_input
    if len(vectors) > max_queries:
        raise RequestError(413, f"{len(vectors)} query vectors; at most {max_queries} per call")
    if any(len(vector) != width - 1 for vector in vectors):
        raise RequestError(422, f"query vectors must have {width - 1} features like the rows")
    try:
        training = np.array(rows, dtype=np.int64)
        queries = np.array(vectors, dtype=np.int64)
    except OverflowError:
        raise RequestError(422, "values must fit in 64-bit integers") from None
    return training, queries


def training_key(training: np.ndarray) -> str:
    """Content hash of a training set: same rows, same model."""
    digest = hashlib.blake2b(training.tobytes(), digest_size=16)
    digest.update(repr(training.shape).encode())
    return digest.hexdigest()


def _read_classify(body: bytes, settings: Settings) -> tuple[np.ndarray, np.ndarray, str]:
    """Training rows, query matrix and training key of a kiosk body."""
    training, queries = parse_classify(
        body, settings.knn.neighbors, settings.knn.max_training_rows, settings.knn.max_queries
    )
    return training, queries, training_key(training)


async def classify(request: Request) -> Response:
    """Label each query vector with the restaurant's KNN (k=3)."""
    services = services_of(request)
    settings = services.settings
    body = await read_body(request, settings.max_body_bytes)
    if len(body) > settings.knn.inline_parse_bytes:
        # Parsing and checking cost grows with the body (1.5 MB: ~0.1 s); in a thread the
        # event loop keeps answering everyone else meanwhile. Small bodies, the kiosks'
        # usual, stay inline: a thread hop would cost more than their parse.
        training, queries, key = await asyncio.to_thread(_read_classify, body, settings)
    else:
        training, queries, key = _read_classify(body, settings)
    job = Job(
        model=KNN,
        key=key,
        spec=training,
        payload=queries,
        deadline=deadline_of(request, settings.request_timeout_s),
    )
    # A kiosk that hangs up (every one of them, after a network blip) leaves no work queued.
    labels = await while_connected(request, services.dispatcher.submit(job))
    return Response(orjson.dumps({"classification_result": labels}), media_type="application/json")


async def ping(_: Request) -> PlainTextResponse:
    """The kiosk's liveness check."""
    return PlainTextResponse("OK")


# Plain Starlette routes: this is the hottest path in the benchmark, and FastAPI's dependency
# solving would cost more CPU per request than the rest of the edge together. The body is read
# and validated by hand anyway, so the OpenAPI-facing FastAPI layer would add nothing but cost.
routes = [
    Route("/classify", classify, methods=["GET", "POST"]),
    Route("/ping", ping, methods=["GET"]),
]
