"""Polling the model repository (``SLUICEWAY_REPOSITORY_POLL_S``, Triton's poll mode): models
whose folders appear, change and go are loaded, reloaded and unloaded while the server runs."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

import sluiceway.registry as registry_module
from sluiceway.app import create_app
from sluiceway.registry import ModelRegistry
from sluiceway.repository_poll import RepositoryPoller
from tests.conftest import app_client, fast_settings
from tests.fixtures.model_repository import LINEAR_CONFIG
from tests.fixtures.onnx_models import linear_model
from tests.fixtures.waiting import eventually
from tests.redis_server import free_port

TOKEN = "let-me-in"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ONES = {"inputs": {"x": [[1, 1, 1, 1]]}}


def model_folder(folder: Path, seed: int, version: int = 1) -> np.ndarray:
    """A linear model's folder (its config, one version); its weights, to check answers by."""
    weights = linear_model(folder / str(version) / "model.onnx", seed=seed)
    (folder / "config.toml").write_text(LINEAR_CONFIG)
    return weights


def answer_of(weights: np.ndarray) -> np.ndarray:
    return weights[:4].sum(axis=0) + weights[4]


async def answers(http: httpx.AsyncClient, model: str, weights: np.ndarray) -> bool:
    response = await http.post(f"/v1/models/{model}/infer", json=ONES)
    return response.status_code == 200 and np.allclose(
        response.json()["outputs"]["y"][0], answer_of(weights), rtol=1e-5
    )


async def listed(http: httpx.AsyncClient) -> set[str]:
    models = (await http.get("/v1/models")).json()["models"]
    return {model["name"] for model in models if not model.get("builtin")}


async def test_models_are_loaded_reloaded_and_unloaded_as_their_folders_change(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    first = model_folder(root / "linear", seed=1)
    settings = fast_settings(model_repository=str(root), repository_poll_s=0.02)
    async with app_client(create_app(settings)) as http:
        assert await answers(http, "linear", first)
        # A folder dropped in is served.
        added = model_folder(root / "added", seed=2)
        await eventually(lambda: answers(http, "added", added))
        # A new version is served once it is there.
        second = linear_model(root / "linear" / "2" / "model.onnx", seed=3)
        await eventually(lambda: answers(http, "linear", second))
        # A folder taken away is unloaded and listed no more.
        shutil.rmtree(root / "added")

        async def gone() -> bool:
            return "added" not in await listed(http)

        await eventually(gone)
        assert (await http.post("/v1/models/added/infer", json=ONES)).status_code == 404
        assert await answers(http, "linear", second)


async def test_a_broken_change_keeps_the_running_version_and_is_tried_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    weights = model_folder(root / "linear", seed=1)
    async with polled(root) as (http, poller, _):
        (root / "linear" / "2").mkdir()
        (root / "linear" / "2" / "model.onnx").write_bytes(b"corrupt")
        with caplog.at_level(logging.WARNING, logger="sluiceway.repository_poll"):
            for _ in range(5):
                await poller.poll()
        failures = [r for r in caplog.records if "did not load after its folder" in r.message]
        assert len(failures) == 1, failures  # not again at every poll
        assert "version 1 still serves" in failures[0].getMessage()
        assert await answers(http, "linear", weights)
        # Fixed: loaded at once.
        fixed = linear_model(root / "linear" / "2" / "model.onnx", seed=5)
        await poller.poll()
        await poller.poll()
        assert await answers(http, "linear", fixed)


async def test_a_folder_is_loaded_only_once_it_stopped_changing(tmp_path: Path) -> None:
    root = tmp_path / "models"
    model_folder(root / "linear", seed=1)
    async with polled(root, admin_token=TOKEN) as (http, poller, _):
        (root / "late").mkdir()
        (root / "late" / "config.toml").write_text(LINEAR_CONFIG)  # the file is still coming
        await poller.poll()
        assert "late" not in await listed(http)  # seen once: not yet
        weights = linear_model(root / "late" / "1" / "model.onnx", seed=4)
        await poller.poll()
        assert "late" not in await listed(http)  # it changed since: not yet
        await poller.poll()
        assert await answers(http, "late", weights)  # the same twice: loaded

        # An operator's unload stands while the folder does not change.
        unloaded = await http.post("/v2/repository/models/late/unload", headers=AUTH)
        assert unloaded.json()["state"] == "UNAVAILABLE"
        await poller.poll()
        await poller.poll()
        assert (await http.post("/v1/models/late/infer", json=ONES)).status_code == 503


async def test_a_repository_that_cannot_be_read_unloads_nothing_and_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    weights = model_folder(root / "linear", seed=1)
    async with polled(root) as (http, poller, _):
        hidden = tmp_path / "elsewhere"
        root.rename(hidden)  # a volume unmounted, say
        with caplog.at_level(logging.WARNING, logger="sluiceway.repository_poll"):
            for _ in range(5):
                await poller.poll()
            assert await answers(http, "linear", weights)
            hidden.rename(root)
            await poller.poll()
        said = [record.getMessage() for record in caplog.records]
        assert len(said) == 2, said  # when it went, and when it came back
        assert "cannot be read" in said[0] and "can be read again" in said[1]


async def test_a_change_seen_while_a_load_runs_is_loaded_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's load that read the folder before a change must not stand for the poller's
    load of that change."""
    root = tmp_path / "models"
    model_folder(root / "linear", seed=1)
    async with polled(root) as (http, poller, registry):
        read = registry_module.read_model
        folder_read = threading.Event()

        def slow_read(folder: Path, given: object = None) -> object:  # a slow model's load
            found = read(folder, given)  # type: ignore[arg-type]
            folder_read.set()
            time.sleep(0.5)
            return found

        monkeypatch.setattr(registry_module, "read_model", slow_read)
        operator = asyncio.create_task(registry.load("linear"))
        await asyncio.to_thread(folder_read.wait, 5)  # it has read version 1 only
        second = linear_model(root / "linear" / "2" / "model.onnx", seed=3)
        await poller.poll()
        await poller.poll()  # settled: loads after the operator's, reading the folder again
        await operator
        assert await answers(http, "linear", second)


async def test_a_model_served_from_files_given_with_its_load_outlives_its_folder(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    model_folder(root / "linear", seed=1)
    async with polled(root, admin_token=TOKEN) as (http, poller, _):
        given = tmp_path / "given.onnx"
        weights = linear_model(given, seed=7)
        body = {
            "parameters": {
                "config": json.dumps({"name": "linear", "backend": "onnxruntime"}),
                "file:1/model.onnx": base64.b64encode(given.read_bytes()).decode(),
            }
        }
        loaded = await http.post("/v2/repository/models/linear/load", json=body, headers=AUTH)
        assert loaded.status_code == 200, loaded.text
        shutil.rmtree(root / "linear")
        await poller.poll()
        await poller.poll()
        assert await answers(http, "linear", weights)  # it never needed the folder


async def test_a_new_version_that_is_a_symbolic_link_is_seen(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = linear_model(store / "a" / "model.onnx", seed=1)
    second = linear_model(store / "b" / "model.onnx", seed=2)
    root = tmp_path / "models"
    (root / "linear").mkdir(parents=True)
    (root / "linear" / "config.toml").write_text(LINEAR_CONFIG)
    (root / "linear" / "1").symlink_to(store / "a")
    (root / "linear" / "loop").symlink_to(root / "linear")  # walked once, not for ever
    async with polled(root) as (http, poller, _):
        assert await answers(http, "linear", first)
        (root / "linear" / "2").symlink_to(store / "b")
        await poller.poll()
        await poller.poll()
        assert await answers(http, "linear", second)


async def test_a_repository_emptied_at_once_is_taken_for_a_volume_not_mounted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    weights = model_folder(root / "linear", seed=1)
    other = model_folder(root / "other", seed=2)
    async with polled(root) as (http, poller, _):
        aside = tmp_path / "aside"
        root.rename(aside)
        root.mkdir()  # the mount point, empty
        with caplog.at_level(logging.WARNING, logger="sluiceway.repository_poll"):
            for _ in range(3):
                await poller.poll()
        assert await answers(http, "linear", weights) and await answers(http, "other", other)
        assert len(caplog.records) == 1 and "empty" in caplog.records[0].getMessage()
        # Mounted again, then one model taken away: that one goes.
        root.rmdir()
        aside.rename(root)
        shutil.rmtree(root / "other")
        await poller.poll()
        await poller.poll()
        assert await listed(http) == {"linear"}


def test_split_mode_refuses_polling_saying_why(tmp_path: Path) -> None:
    model_folder(tmp_path / "models" / "linear", seed=1)
    settings = fast_settings(
        model_repository=str(tmp_path / "models"),
        repository_poll_s=5,
        broker_url="redis://127.0.0.1:1/0",
    )
    with pytest.raises(ValueError, match="SLUICEWAY_REPOSITORY_POLL_S is for embedded mode"):
        create_app(settings)
    # The command refuses once, before any process starts (uvicorn would restart workers
    # that raised it, again and again).
    env = {
        **os.environ,
        "SLUICEWAY_BROKER_URL": "redis://127.0.0.1:1/0",
        "SLUICEWAY_REPOSITORY_POLL_S": "5",
        "SLUICEWAY_WORKERS": "2",
        "SLUICEWAY_PORT": str(free_port()),
    }
    command = [sys.executable, "-m", "sluiceway", "serve"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "sluiceway serve: SLUICEWAY_REPOSITORY_POLL_S is for embedded mode" in done.stderr


@asynccontextmanager
async def polled(
    root: Path, **settings: object
) -> AsyncIterator[tuple[httpx.AsyncClient, RepositoryPoller, ModelRegistry]]:
    """The app serving ``root`` (``settings`` beside), a poller on its registry that polls when
    the test says (the app's own, at an hour, never does during a test) with its baseline
    taken, and the registry."""
    app = create_app(fast_settings(model_repository=str(root), repository_poll_s=3600, **settings))
    async with app_client(app) as http:
        registry = app.state.services.registry
        poller = RepositoryPoller(registry, root, interval_s=3600)
        await poller.baseline()
        yield http, poller, registry
