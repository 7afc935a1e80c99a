"""Property-based fuzzing of every route against the OpenAPI document (schemathesis).

Schemathesis reads ``/openapi.json`` from the app, generates valid and invalid requests for
each operation from its schema (bodies, forms, path parameters) and checks each answer: never a
5xx but the documented 503/504, only statuses and content types the document lists, bodies of
the documented shape. Bounded by ``MAX_EXAMPLES`` per operation so the suite stays fast.
Image downloads are answered by a stand-in: fuzzed URLs must not reach the network.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sluiceway.app import create_app
from sluiceway.errors import BadInput
from tests.conftest import fast_settings

MAX_EXAMPLES = 25
DOCUMENTED_5XX = (501, 503, 504)
"""The only 5xx a route may answer: overload or an unavailable model, a passed deadline, and
an extension of Triton's that this server does not serve (trace settings;
``status_code_conformance`` checks that only their routes document it)."""


@schemathesis.check
def no_undocumented_server_error(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Any 5xx but the documented 503/504 is a bug (``status_code_conformance`` checks that
    the route documents the one it got)."""
    if response.status_code >= 500 and response.status_code not in DOCUMENTED_5XX:
        raise AssertionError(f"{case.operation.label} answered {response.status_code}")
    return None


class OfflineFetcher:
    """Stands in for the image fetcher: every download fails as an unreachable host would."""

    async def fetch(self, url: str) -> bytes:
        raise BadInput(f"{url}: no network in the fuzz tests")

    async def aclose(self) -> None:
        return None


def fuzzed_app() -> object:
    """The app under fuzz, offline, writing only to a temporary folder of its own."""
    root = Path(_FOLDER.name)
    app = create_app(
        fast_settings(
            upload_dir=str(root / "uploads"),
            feedback_dir=str(root / "feedback"),
            model_cache_dir=str(root / "models"),
            birds_model_url="http://127.0.0.1:9/offline.tflite",
            caption_model=str(root / "no-caption-model"),
        )
    )
    app.state.fetcher = OfflineFetcher()
    return app


# Built at collection: schemathesis's lazy fixture loader does not run on pytest 9.
_FOLDER = tempfile.TemporaryDirectory(prefix="sluiceway-fuzz-")
schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_route_answers_only_what_the_document_says(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[
            no_undocumented_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )
