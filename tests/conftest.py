"""Fixtures shared across the suite."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from sluiceway.app import create_app
from sluiceway.config import Settings
from tests.fixtures.fileserver import FileServer
from tests.fixtures.images import bird_server, photo_server
from tests.fixtures.tiny_git import build_tiny_git
from tests.redis_server import (  # noqa: F401  (fixtures: the suite's redis-server, a test's own)
    own_redis_server,
    redis_server,
)

_CONFIGURED_LOGGERS = ("", "sluiceway", "httpx", "httpcore")
"""The loggers ``sluiceway.logs.configure`` sets (``""``: the root)."""


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """The process's logging put back as it was after each test: a test that runs the command
    line configures it (a handler on the root logger writing to that test's captured stderr),
    and later tests would write through a handler whose stream is closed."""
    loggers = [logging.getLogger(name) for name in _CONFIGURED_LOGGERS]
    handlers, levels = logging.getLogger().handlers[:], [each.level for each in loggers]
    yield
    logging.getLogger().handlers[:] = handlers
    for each, level in zip(loggers, levels, strict=True):
        each.setLevel(level)


def fast_settings(**overrides: object) -> Settings:
    """Settings with the kiosk's simulated costs shrunk so tests take milliseconds."""
    values: dict[str, object] = {
        "knn_fit_cost_s": 0.05,
        "knn_infer_base_cost_s": 0.01,
        "knn_infer_per_query_cost_s": 0.001,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def birds_server() -> Iterator[FileServer]:
    """The birds model, its two photos and some bad files, on 127.0.0.1 (skips without them)."""
    with bird_server() as server:
        yield server


@pytest.fixture(scope="session")
def photos_server() -> Iterator[FileServer]:
    """Photos made by the suite and some bad files, on 127.0.0.1: needs nothing from outside."""
    with photo_server() as server:
        yield server


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache folder shared by the session, so the birds model downloads once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_git(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny GIT captioning model (seeded random weights, ~200 KB)."""
    return build_tiny_git(tmp_path_factory.mktemp("tiny-git"))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on an app with fast settings, lifespan running."""
    async with app_client(create_app(fast_settings())) as http:
        yield http


class app_client:  # lower-case: used like a function, ``async with app_client(app)``
    """Run ``app``'s lifespan and give an httpx client talking to it in-process."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._lifespan = app.router.lifespan_context(app)
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sluiceway.test", timeout=30
        )

    async def __aenter__(self) -> httpx.AsyncClient:
        await self._lifespan.__aenter__()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)
