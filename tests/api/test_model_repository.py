"""Serving your own models: a repository folder, the model list, load/unload/reload, inference."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sluiceway.app import create_app
from sluiceway.kinds import served_kinds
from sluiceway.models.tflite_classifier import embedded_labels
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.worker import Worker
from tests.conftest import app_client, fast_settings
from tests.fixtures.external import BIRD_PHOTO, BIRDS_MODEL, require
from tests.fixtures.model_repository import LINEAR_CONFIG
from tests.fixtures.onnx_models import linear_model, tiny_classifier
from tests.redis_server import RedisServer

TOKEN = "let-me-in"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def repository(root: Path) -> Path:
    """Three models: a tensor model, a colour classifier, and one whose config is broken."""
    linear = root / "linear"
    linear_model(linear / "1" / "model.onnx", seed=1)
    (linear / "config.toml").write_text(LINEAR_CONFIG + "\n[warmup]\n")
    colours = root / "colours"
    tiny_classifier(colours / "model.onnx")
    (colours / "labels.txt").write_text("red\ngreen\nblue\n")
    (colours / "config.toml").write_text(
        'platform = "onnx"\nlabels = "labels.txt"\n[image]\nsize = 16\nfit = "stretch"\n'
    )
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.toml").write_text('platform = "onnx"\n')
    return root


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = fast_settings(
        model_repository=str(repository(tmp_path / "models")), admin_token=TOKEN
    )
    async with app_client(create_app(settings)) as client:
        yield client


async def states(http: httpx.AsyncClient) -> dict[str, str]:
    models = (await http.get("/v1/models")).json()["models"]
    return {model["name"]: model["state"] for model in models}


async def test_the_list_shows_every_model_and_why_one_is_unavailable(
    http: httpx.AsyncClient,
) -> None:
    models = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
    assert {name: m["state"] for name, m in models.items() if not m.get("builtin")} == {
        "broken": "UNAVAILABLE",
        "colours": "READY",
        "linear": "READY",
    }
    assert "no model.onnx" in models["broken"]["reason"]
    assert models["linear"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert models["linear"]["infer"] == "/v1/models/linear/infer"
    assert models["colours"]["classify"] == "/v1/models/colours/classify"
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_states"]["broken"]["state"] == "UNAVAILABLE"


async def test_infer_answers_the_model_outputs(http: httpx.AsyncClient, tmp_path: Path) -> None:
    weights = linear_model(tmp_path / "again.onnx", seed=1)
    x = [[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]]
    response = await http.post("/v1/models/linear/infer", json={"inputs": {"x": x}})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "linear" and body["version"] == "1"
    expected = np.asarray(x, np.float32) @ weights[:4] + weights[4]
    np.testing.assert_allclose(body["outputs"]["y"], expected, rtol=1e-5)


async def test_a_model_configured_by_its_platform_alone_takes_the_files_tensors(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    weights = linear_model(root / "bare" / "model.onnx", seed=3)
    (root / "bare" / "config.toml").write_text('platform = "onnx"\n')
    settings = fast_settings(model_repository=str(root))
    async with app_client(create_app(settings)) as http:
        metadata = (await http.get("/v2/models/bare")).json()
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
        x = [[1.0, 2.0, 3.0, 4.0]]
        response = await http.post("/v1/models/bare/infer", json={"inputs": {"x": x}})
        assert response.status_code == 200, response.text
        expected = np.asarray(x, np.float32) @ weights[:4] + weights[4]
        np.testing.assert_allclose(response.json()["outputs"]["y"], expected, rtol=1e-5)
        wrong = await http.post("/v1/models/bare/infer", json={"inputs": {"z": x}})
        assert wrong.status_code == 400 and "the model takes ['x']" in wrong.json()["detail"]


async def test_concurrent_requests_share_model_calls(http: httpx.AsyncClient) -> None:
    rng = np.random.default_rng(3)
    bodies = [{"inputs": {"x": rng.normal(size=(1, 4)).tolist()}} for _ in range(40)]
    responses = await asyncio.gather(
        *(http.post("/v1/models/linear/infer", json=body) for body in bodies)
    )
    assert [r.status_code for r in responses] == [200] * 40
    metrics = (await http.get("/metrics")).text
    calls = _sample(metrics, 'sluiceway_batch_size_count{model="linear"}')
    rows = _sample(metrics, 'sluiceway_batch_size_sum{model="linear"}')
    assert rows == 40 and calls < 20, (rows, calls)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": {"x": [[1, 2, 3]]}}, 400, "has 3 in dimension 1; the model takes 4"),
        ({"inputs": {"x": [1, 2, 3, 4]}}, 400, "has 1 dimensions; the model takes 2"),
        ({"inputs": {"x": [[1, 2], [3]]}}, 400, "not a rectangular array of FP32"),
        ({"inputs": {"x": [["a", "b", "c", "d"]]}}, 400, "not a rectangular array"),
        ({"inputs": {"z": [[1, 2, 3, 4]]}}, 400, "unknown inputs ['z']"),
        ({"inputs": {}}, 400, "missing inputs ['x']"),
        ({"x": [[1, 2, 3, 4]]}, 400, '{"inputs"'),
    ],
)
async def test_bad_tensors_are_400_naming_what_is_wrong(
    http: httpx.AsyncClient, body: object, status: int, message: str
) -> None:
    response = await http.post("/v1/models/linear/infer", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


async def test_infer_errors_for_models_that_cannot_take_tensors(http: httpx.AsyncClient) -> None:
    assert (await http.post("/v1/models/nope/infer", json={})).status_code == 404
    broken = await http.post("/v1/models/broken/infer", json={})
    assert broken.status_code == 503 and "no model.onnx" in broken.json()["detail"]
    colours = await http.post("/v1/models/colours/infer", json={})
    assert colours.status_code == 400 and "/v1/models/colours/classify" in colours.json()["detail"]


async def test_a_repository_classifier_answers_the_classify_api(http: httpx.AsyncClient) -> None:
    images = [_png((250, 10, 10)), _png((10, 250, 10)), _png((10, 10, 250))]
    response = await http.post("/v1/models/colours/classify", json={"images": images, "k": 3})
    assert response.status_code == 200
    tops = [r["predictions"][0]["label"] for r in response.json()["results"]]
    assert len(tops) == 3 and all(label in {"red", "green", "blue"} for label in tops)
    assert len(set(tops)) > 1  # the colour decides the answer


async def test_an_unloaded_classifier_says_so_until_it_is_loaded(http: httpx.AsyncClient) -> None:
    body = {"images": [_png((250, 10, 10))], "k": 1}
    assert (
        await http.post("/v2/repository/models/colours/unload", headers=AUTH)
    ).status_code == 200
    refused = await http.post("/v1/models/colours/classify", json=body)
    assert refused.status_code == 503 and "unloaded" in refused.json()["detail"]
    assert (await http.post("/v1/models/nope/classify", json=body)).status_code == 404
    assert (await http.post("/v1/models/linear/classify", json=body)).status_code == 404
    assert (await http.post("/v2/repository/models/colours/load", headers=AUTH)).status_code == 200
    assert (await http.post("/v1/models/colours/classify", json=body)).status_code == 200


async def test_model_control_needs_the_admin_token(http: httpx.AsyncClient) -> None:
    no_token = await http.post("/v2/repository/models/linear/unload")
    assert no_token.status_code == 401 and "Bearer" in no_token.headers["www-authenticate"]
    wrong = await http.post(
        "/v2/repository/models/linear/unload", headers={"Authorization": "Bearer x"}
    )
    assert wrong.status_code == 401
    assert (await states(http))["linear"] == "READY"


async def test_model_control_is_off_without_a_token(tmp_path: Path) -> None:
    settings = fast_settings(model_repository=str(repository(tmp_path)))
    async with app_client(create_app(settings)) as http:
        response = await http.post("/v2/repository/models/linear/unload", headers=AUTH)
        assert response.status_code == 403
        assert "SLUICEWAY_ADMIN_TOKEN" in response.json()["error"]
        assert (await http.post("/v2/repository/index")).status_code == 200  # listing stays on


async def test_unload_then_load_again(http: httpx.AsyncClient) -> None:
    unloaded = await http.post("/v2/repository/models/linear/unload", headers=AUTH)
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "UNAVAILABLE"
    refused = await http.post("/v1/models/linear/infer", json={"inputs": {"x": [[1, 2, 3, 4]]}})
    assert refused.status_code == 503 and "unloaded" in refused.json()["detail"]
    index = (await http.post("/v2/repository/index", json={"ready": True})).json()
    assert "linear" not in [entry["name"] for entry in index]
    loaded = await http.post("/v2/repository/models/linear/load", headers=AUTH)
    assert loaded.status_code == 200 and loaded.json()["state"] == "READY"
    again = await http.post("/v1/models/linear/infer", json={"inputs": {"x": [[1, 2, 3, 4]]}})
    assert again.status_code == 200


async def test_a_new_version_is_served_after_a_reload(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    folder = tmp_path / "models" / "linear"
    weights = linear_model(folder / "2" / "model.onnx", seed=7)
    response = await http.post("/v2/repository/models/linear/load", headers=AUTH)
    assert response.json() == {"name": "linear", "version": "2", "state": "READY", "reason": ""}
    body = (
        await http.post("/v1/models/linear/infer", json={"inputs": {"x": [[1, 1, 1, 1]]}})
    ).json()
    assert body["version"] == "2"
    np.testing.assert_allclose(
        body["outputs"]["y"][0], weights[:4].sum(axis=0) + weights[4], rtol=1e-5
    )


async def test_a_bad_reload_keeps_the_running_version(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    folder = tmp_path / "models" / "linear"
    (folder / "2").mkdir()
    (folder / "2" / "model.onnx").write_bytes(b"corrupt")
    response = await http.post("/v2/repository/models/linear/load", headers=AUTH)
    assert response.status_code == 409 and "version 1 still serves" in response.json()["error"]
    still = await http.post("/v1/models/linear/infer", json={"inputs": {"x": [[1, 2, 3, 4]]}})
    assert still.status_code == 200 and still.json()["version"] == "1"


async def test_a_fixed_model_loads_without_a_restart(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    linear_model(tmp_path / "models" / "broken" / "model.onnx")
    (tmp_path / "models" / "broken" / "config.toml").write_text(LINEAR_CONFIG)
    response = await http.post("/v2/repository/models/broken/load", headers=AUTH)
    assert response.status_code == 200 and response.json()["state"] == "READY"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/repository/models/knn/unload", 409, "built-in model"),
        # A load that finds no folder is a failed load: it opens as every failed load does.
        ("/v2/repository/models/ghost/load", 404, "failed to load 'ghost': no folder 'ghost'"),
        (
            "/v2/repository/models/ghost/unload",
            404,
            "Request for unknown model: 'ghost' is not found",
        ),
    ],
)
async def test_control_errors(
    http: httpx.AsyncClient, path: str, status: int, message: str
) -> None:
    response = await http.post(path, headers=AUTH)
    assert response.status_code == status and message in response.json()["error"]


async def test_loads_and_unloads_never_fail_requests_to_another_model(
    http: httpx.AsyncClient,
) -> None:
    stop = asyncio.Event()

    async def steady() -> list[int]:
        statuses = []
        while not stop.is_set():
            body = {"inputs": {"x": np.random.default_rng().normal(size=(1, 4)).tolist()}}
            statuses.append((await http.post("/v1/models/linear/infer", json=body)).status_code)
        return statuses

    traffic = [asyncio.create_task(steady()) for _ in range(4)]
    for _ in range(5):
        assert (
            await http.post("/v2/repository/models/colours/unload", headers=AUTH)
        ).status_code == 200
        assert (
            await http.post("/v2/repository/models/colours/load", headers=AUTH)
        ).status_code == 200
    stop.set()
    statuses = [status for task in traffic for status in await task]
    assert statuses and set(statuses) == {200}


async def test_an_unload_finishes_the_accepted_requests(http: httpx.AsyncClient) -> None:
    bodies = [{"inputs": {"x": [[float(i), 0, 0, 0]]}} for i in range(30)]
    requests = [asyncio.create_task(http.post("/v1/models/linear/infer", json=b)) for b in bodies]
    await asyncio.sleep(0)
    unload = asyncio.create_task(http.post("/v2/repository/models/linear/unload", headers=AUTH))
    responses = await asyncio.gather(*requests)
    assert (await unload).status_code == 200
    # Every request was either answered in full or refused as unavailable; none was lost.
    assert {r.status_code for r in responses} <= {200, 503}
    assert all(len(r.json()["outputs"]["y"]) == 1 for r in responses if r.status_code == 200)


async def test_models_over_the_cache_budget_are_evicted_and_loaded_again(tmp_path: Path) -> None:
    root = tmp_path / "models"
    for index in range(4):
        linear_model(root / f"m{index}" / "model.onnx", seed=index)
        (root / f"m{index}" / "config.toml").write_text(LINEAR_CONFIG)
    size = (root / "m0" / "model.onnx").stat().st_size * 2
    budget_mb = size * 2.5 / (1024 * 1024)  # room for two of the four
    settings = fast_settings(model_repository=str(root), model_cache_budget_mb=budget_mb)
    async with app_client(create_app(settings)) as http:
        for _ in range(3):
            for index in range(4):
                response = await http.post(
                    f"/v1/models/m{index}/infer", json={"inputs": {"x": [[1, 2, 3, 4]]}}
                )
                assert response.status_code == 200
        metrics = (await http.get("/metrics")).text
    evictions = sum(
        _sample(metrics, f'sluiceway_model_evictions_total{{model="m{i}"}}') for i in range(4)
    )
    loads = sum(_sample(metrics, f'sluiceway_model_loads_total{{model="m{i}"}}') for i in range(4))
    assert evictions >= 8 and loads >= 12  # round-robin over four with room for two


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _png(colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def test_split_mode_serves_repository_models_from_the_workers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An API node and a worker read the same folder; the node routes to what workers serve."""
    settings = fast_settings(
        model_repository=str(repository(tmp_path / "models")),
        broker_url=redis_server.url,
        broker_prefix=f"repo-{tmp_path.name}",
        worker_port=None,
        worker_heartbeat_s=0.2,
        admin_token=TOKEN,
    )
    async with app_client(create_app(settings)) as http:
        assert (await states(http))["linear"] == "UNAVAILABLE"  # no worker yet
        worker = Worker(settings, served_kinds(settings), Metrics())
        await worker.start()
        try:
            for _ in range(100):
                if (await states(http)).get("linear") == "READY":
                    break
                await asyncio.sleep(0.05)
            body = {"inputs": {"x": [[1, 2, 3, 4], [4, 3, 2, 1]]}}
            response = await http.post("/v1/models/linear/infer", json=body)
            assert response.status_code == 200 and len(response.json()["outputs"]["y"]) == 2
            colours = await http.post(
                "/v1/models/colours/classify", json={"images": [_png((0, 0, 255))]}
            )
            assert colours.status_code == 200 and "predictions" in colours.json()["results"][0]
            control = await http.post("/v2/repository/models/linear/unload", headers=AUTH)
            assert control.status_code == 200 and control.json()["reason"] == "unloaded"
        finally:
            await worker.close()


async def test_a_tflite_classifier_from_a_folder(tmp_path: Path) -> None:
    """The AIY birds model as a repository model: a TFLite file, its labels, an [image] table."""
    model = require(BIRDS_MODEL).read_bytes()
    folder = tmp_path / "models" / "aiy-birds"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.tflite").write_bytes(model)
    (folder / "labels.txt").write_text(
        "\n".join(embedded_labels(model, "probability-labels-en.txt"))
    )
    (folder / "config.toml").write_text(
        'platform = "tflite"\nlabels = "labels.txt"\ninstances = 2\n'
        '[image]\nsize = 224\nfit = "stretch"\nlayout = "NHWC"\ndtype = "uint8"\n'
    )
    photo = base64.b64encode(require(BIRD_PHOTO).read_bytes()).decode()
    settings = fast_settings(model_repository=str(tmp_path / "models"))
    async with app_client(create_app(settings)) as http:
        response = await http.post(
            "/v1/models/aiy-birds/classify", json={"images": [photo], "k": 1}
        )
    assert response.status_code == 200
    [best] = response.json()["results"][0]["predictions"]
    assert best["label"] == "Aix galericulata" and best["score"] > 0.5


async def test_a_repository_model_cannot_take_a_built_in_name(tmp_path: Path) -> None:
    root = repository(tmp_path / "models")
    linear_model(root / "knn" / "model.onnx")
    (root / "knn" / "config.toml").write_text(LINEAR_CONFIG)
    async with app_client(create_app(fast_settings(model_repository=str(root)))) as http:
        models = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
        assert models["knn"]["kind"] == "knn" and models["knn"]["state"] == "READY"
        kiosk = await http.post(
            "/classify",
            json={
                "training_data": {"training_data": [[0, 0, 1], [1, 1, 1], [2, 2, 1], [9, 9, 0]]},
                "query_input": {"query_input": [1, 1]},
            },
        )
        assert kiosk.json() == {"classification_result": [1]}


async def test_a_warm_up_the_model_cannot_run_leaves_the_model_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "models"
    linear_model(root / "cold" / "model.onnx")
    # The declared input's width is left open (-1); the warm-up's zeros then have 1 column,
    # and the model multiplies by a 4-row matrix.
    (root / "cold" / "config.toml").write_text(
        LINEAR_CONFIG.replace("dims = [4]", "dims = [-1]") + "\n[warmup]\n"
    )
    settings = fast_settings(model_repository=str(root), admin_token=TOKEN)
    async with app_client(create_app(settings)) as http:
        models = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
        assert models["cold"]["state"] == "UNAVAILABLE"
        assert "warm-up request failed" in models["cold"]["reason"]
        again = await http.post("/v2/repository/models/cold/load", headers=AUTH)
        assert again.status_code == 400 and "warm-up request failed" in again.json()["error"]
