"""Request metrics tell the truth: route templates as labels, disconnects not counted as 500."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from starlette.types import Message

from sluiceway.app import create_app
from tests.conftest import app_client, fast_settings

SAMPLES = {"model": "birds", "name": "0" * 64 + ".png", "path": "style.css", "version": "1"}
"""A value for each path parameter of the OpenAPI document."""


def labels(metrics: str, name: str) -> list[dict[str, str]]:
    found = []
    for line in metrics.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} ", line)
        if match:
            found.append(dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))))
    return found


async def test_every_route_is_labelled_by_its_template_never_unmatched() -> None:
    app = create_app(fast_settings())
    document = app.openapi()
    calls = [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    ]
    assert len(calls) >= 16, "the OpenAPI document should describe every route"
    async with app_client(app) as client:
        for method, template in calls:
            url = re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], template)
            await client.request(method, url, content=b"")
        for extra in ("/openapi.json", "/docs"):
            await client.get(extra)
        metrics = (await client.get("/metrics")).text
    seen = {(row["method"], row["route"]) for row in labels(metrics, "sluiceway_requests_total")}
    assert "unmatched" not in {route for _, route in seen}
    for method, template in calls:
        assert (method, template) in seen, f"{method} {template} not labelled by its template"
    assert ("GET", "/openapi.json") in seen


async def test_a_path_no_route_matches_is_one_unmatched_label(client: httpx.AsyncClient) -> None:
    for path in ("/nope", "/nope/../../etc/passwd", "/v1/nope"):
        assert (await client.get(path)).status_code == 404
    metrics = (await client.get("/metrics")).text
    rows = labels(metrics, "sluiceway_requests_total")
    assert {row["route"] for row in rows if row["status"] == "404"} == {"unmatched"}


async def _call_and_hang_up(app: Any, method: str, path: str) -> list[Message]:
    """Send the head and part of a body, then a disconnect, straight into the ASGI app."""
    events: list[Message] = [
        {"type": "http.request", "body": b'{"training_data": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return events.pop(0) if len(events) > 1 else events[0]

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"400")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)
    return sent


async def test_a_client_that_hangs_up_mid_body_is_counted_499_and_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(fast_settings())
    caplog.set_level(logging.DEBUG)
    async with app_client(app) as client:
        for method, path in (
            ("POST", "/classify"),  # the kiosk's fast path
            ("POST", "/v1/models/birds/classify"),  # a FastAPI route
            ("POST", "/api/v1/predictions"),
        ):
            await _call_and_hang_up(app, method, path)
        metrics = (await client.get("/metrics")).text
    rows = labels(metrics, "sluiceway_requests_total")
    statuses = {(row["route"], row["status"]) for row in rows}
    assert ("/classify", "499") in statuses
    assert ("/v1/models/{model}/classify", "499") in statuses
    assert ("/api/v1/predictions", "499") in statuses
    assert not [row for row in rows if row["status"] == "500"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 3 and {r.levelno for r in gone} == {logging.DEBUG}
