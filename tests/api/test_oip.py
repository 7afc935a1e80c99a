"""The Open Inference Protocol over HTTP, in-process: bodies, datatypes, batching, errors, stats.

Binary requests are built and binary answers read with ``tritonclient``'s own codec, so the
bytes are those Triton's client sends; ``test_oip_tritonclient.py`` drives a real server with it.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import skimage
import tritonclient.http as triton

from sluiceway.app import create_app
from sluiceway.inputs.pixels import prepare_image
from sluiceway.models.onnx_classifier import IMAGENET_INPUT
from sluiceway.runtime.dispatch import LocalDispatcher
from tests.conftest import app_client, fast_settings
from tests.fixtures.captions import caption_app, expected_titles
from tests.fixtures.model_repository import linear, repository
from tests.fixtures.onnx_models import (
    ECHO_TYPES,
)
from tests.fixtures.tiny_git import png_bytes, swatches
from tests.fixtures.waiting import eventually

CHELSEA = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, np.ndarray]]:
    root, weights = repository(tmp_path / "models")
    async with app_client(create_app(fast_settings(model_repository=str(root)))) as client:
        yield client, weights


@pytest.fixture
def http(served: tuple[httpx.AsyncClient, np.ndarray]) -> httpx.AsyncClient:
    return served[0]


def tensor(name: str, data: Any, datatype: str = "FP32", shape: list[int] | None = None) -> Any:
    array = np.asarray(data)
    return {
        "name": name,
        "shape": shape if shape is not None else list(array.shape),
        "datatype": datatype,
        "data": data,
    }


async def binary_infer(
    http: httpx.AsyncClient,
    model: str,
    inputs: list[triton.InferInput],
    outputs: list[triton.InferRequestedOutput] | None = None,
    **parameters: Any,
) -> triton.InferResult:
    """One request built by tritonclient's codec; the answer read by it."""
    body, header_length = triton.InferenceServerClient.generate_request_body(
        inputs, outputs, **parameters
    )
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    response = await http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get("inference-header-content-length")
    return triton.InferResult.from_response_body(
        response.content, header_length=int(length) if length else None
    )


async def stats(http: httpx.AsyncClient, model: str) -> dict[str, Any]:
    response = await http.get(f"/v2/models/{model}/stats")
    assert response.status_code == 200
    [entry] = response.json()["model_stats"]
    assert entry["name"] == model
    result: dict[str, Any] = entry
    return result


async def test_server_metadata_and_health(http: httpx.AsyncClient) -> None:
    metadata = (await http.get("/v2")).json()
    assert metadata["name"] == "sluiceway"
    assert {"binary_tensor_data", "statistics", "model_repository"} <= set(metadata["extensions"])
    assert (await http.get("/v2/health/live")).status_code == 200
    assert (await http.get("/v2/health/ready")).status_code == 200


async def test_the_model_list_names_every_model_as_kserve_lists_them(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/v2/models")
    assert response.status_code == 200
    names = response.json()["models"]
    index = (await http.post("/v2/repository/index")).json()
    assert names == [entry["name"] for entry in index]  # every model, those not ready too
    assert {"linear", "rowsum", "broken", "knn"} <= set(names)


async def test_model_metadata_names_the_tensors(http: httpx.AsyncClient) -> None:
    for path in ("/v2/models/linear", "/v2/models/linear/versions/1"):
        body = (await http.get(path)).json()
        assert body["name"] == "linear" and body["versions"] == ["1"]
        assert body["platform"] == "onnxruntime_onnx"
        assert body["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert body["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]


async def test_built_in_models_say_what_tensors_they_take_or_why_none(
    http: httpx.AsyncClient,
) -> None:
    imagenet = (await http.get("/v2/models/imagenet")).json()
    assert imagenet["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert imagenet["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}
    ]
    assert "224x224 RGB, NCHW" in imagenet["parameters"]["description"]
    caption = (await http.get("/v2/models/caption")).json()
    assert caption["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert caption["outputs"] == [{"name": "title", "datatype": "BYTES", "shape": [-1]}]
    knn = (await http.get("/v2/models/knn")).json()
    assert knn["parameters"]["infer"] is False and "/classify" in knn["parameters"]["reason"]
    refused = await http.post("/v2/models/knn/infer", json={"inputs": []})
    assert refused.status_code == 400
    assert "no tensor form" in refused.json()["error"]


async def test_unknown_models_and_versions_are_404(http: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v2/models/linear/versions/2"),
        ("GET", "/v2/models/linear/versions/2/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/linear/versions/7/infer"),
        ("GET", "/v2/models/nope/stats"),
    ]:
        response = await http.request(method, path, json={})
        assert response.status_code == 404, path
        assert set(response.json()) == {"error"}


async def test_model_readiness(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v2/models/linear/ready")).status_code == 200
    assert (await http.get("/v2/models/linear/versions/1/ready")).status_code == 200
    broken = await http.get("/v2/models/broken/ready")
    assert broken.status_code == 503 and broken.headers["retry-after"]
    assert "no model.onnx" in broken.json()["error"]
    infer = await http.post("/v2/models/broken/infer", json={})
    assert infer.status_code == 503 and "no model.onnx" in infer.json()["error"]


async def test_infer_with_nested_or_flat_data_echoes_the_id(
    served: tuple[httpx.AsyncClient, np.ndarray],
) -> None:
    http, weights = served
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for data in (x.tolist(), x.ravel().tolist()):
        body = {"id": "req-7", "inputs": [tensor("x", data, shape=[2, 4])]}
        response = await http.post("/v2/models/linear/infer", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model_name"] == "linear" and answer["model_version"] == "1"
        assert answer["id"] == "req-7"
        [output] = answer["outputs"]
        assert output["name"] == "y" and output["datatype"] == "FP32"
        assert output["shape"] == [2, 3]
        got = np.array(output["data"], dtype=np.float32).reshape(2, 3)
        np.testing.assert_allclose(got, linear(weights, x), rtol=1e-5)


@pytest.mark.parametrize("binary", [False, True])
async def test_every_datatype_round_trips(http: httpx.AsyncClient, binary: bool) -> None:
    rng = np.random.default_rng(5)
    arrays: dict[str, np.ndarray] = {}
    for datatype in ECHO_TYPES:
        if datatype == "BYTES":
            arrays[datatype] = np.array([["café", "x"], ["", "ok"]], dtype=np.object_)
        elif datatype == "BOOL":
            arrays[datatype] = np.array([[True, False], [False, True]])
        else:
            dtype = triton.triton_to_np_dtype(datatype)
            arrays[datatype] = (rng.uniform(0, 100, size=(2, 2))).astype(dtype)
    inputs = []
    for datatype, array in arrays.items():
        item = triton.InferInput(f"in_{datatype}", list(array.shape), datatype)
        if datatype == "BYTES":
            array = np.array([[s.encode() for s in row] for row in array], dtype=np.object_)
        # JSON cannot carry FP16: tritonclient sends it as binary either way.
        item.set_data_from_numpy(array, binary_data=binary or datatype == "FP16")
        inputs.append(item)
    outputs = [
        triton.InferRequestedOutput(f"out_{datatype}", binary_data=binary)
        for datatype in arrays
        if not (datatype == "FP16" and not binary)
    ]
    result = await binary_infer(http, "echo", inputs, outputs)
    for datatype, array in arrays.items():
        if datatype == "FP16" and not binary:
            continue
        got = result.as_numpy(f"out_{datatype}")
        assert got is not None, datatype
        if datatype == "BYTES":
            # tritonclient hands JSON strings back as str, binary ones as bytes.
            text = [[s.decode() if isinstance(s, bytes) else s for s in row] for row in got]
            assert text == array.tolist()
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)


async def test_outputs_selection_and_binary_output_parameter(http: httpx.AsyncClient) -> None:
    inputs = [
        tensor(f"in_{t}", [[1, 0]], t) if t not in ("BOOL", "BYTES") else None for t in ECHO_TYPES
    ]
    body: dict[str, Any] = {
        "inputs": [
            *(item for item in inputs if item is not None),
            tensor("in_BOOL", [[True, False]], "BOOL"),
            tensor("in_BYTES", [["a", "b"]], "BYTES"),
        ],
        "outputs": [{"name": "out_INT64"}, {"name": "out_BYTES"}],
    }
    answer = (await http.post("/v2/models/echo/infer", json=body)).json()
    assert [output["name"] for output in answer["outputs"]] == ["out_INT64", "out_BYTES"]
    assert answer["outputs"][0]["data"] == [1, 0]
    assert answer["outputs"][1]["data"] == ["a", "b"]
    body["outputs"] = [{"name": "out_INT64", "parameters": {"binary_data": True}}]
    response = await http.post("/v2/models/echo/infer", json=body)
    header = int(response.headers["inference-header-content-length"])
    [output] = orjson.loads(response.content[:header])["outputs"]
    assert output["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(response.content[header:], "<i8").tolist() == [1, 0]


async def test_a_request_as_kserves_clients_send_it(
    served: tuple[httpx.AsyncClient, np.ndarray],
) -> None:
    """KServe's ``InferRequest.to_rest`` (its REST client, and a KServe transformer calling its
    predictor) sends ``id`` and ``model_name`` in the body and each binary input's
    ``binary_data_size``; a transformer's request carries two ``Content-Type`` headers
    (``application/json`` from the transformer, ``application/octet-stream`` from the client).
    Its reader (``InferResponse.from_bytes``) needs ``model_name`` and each output's ``name``,
    ``shape``, ``datatype`` and ``data`` or ``binary_data_size``."""
    http, weights = served
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = orjson.dumps(
        {
            "id": "3f1c7a52-kserve",
            "model_name": "linear",
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "y"}],
            "parameters": {"binary_data_output": True},
        }
    )
    headers = [
        ("Content-Type", "application/json"),
        ("inference-header-content-length", str(len(header))),
        ("content-type", "application/octet-stream"),
    ]
    response = await http.post(
        "/v2/models/linear/infer", content=header + x.tobytes(), headers=headers
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    answer = orjson.loads(response.content[:length])
    assert (answer["id"], answer["model_name"], answer["model_version"]) == (
        "3f1c7a52-kserve",
        "linear",
        "1",
    )
    # binary_data_output covers a named output that says nothing itself, as in Triton.
    [output] = answer["outputs"]
    assert output == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 3],
        "parameters": {"binary_data_size": 24},
    }
    y = np.frombuffer(response.content[length:], "<f4").reshape(2, 3)
    np.testing.assert_allclose(y, linear(weights, x), rtol=1e-5)


async def test_concurrent_requests_share_model_calls(
    served: tuple[httpx.AsyncClient, np.ndarray],
) -> None:
    http, weights = served
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(40)]
    responses = await asyncio.gather(
        *(
            http.post("/v2/models/linear/infer", json={"inputs": [tensor("x", x.tolist())]})
            for x in xs
        )
    )
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200
        got = np.array(response.json()["outputs"][0]["data"], dtype=np.float32)
        # A batched call may sum in another order than numpy: float32 rounding, which a
        # relative tolerance alone does not allow for results near 0.
        np.testing.assert_allclose(got, linear(weights, x).ravel(), rtol=1e-5, atol=1e-6)
    counted = await stats(http, "linear")
    assert counted["inference_count"] == 40
    assert counted["execution_count"] < 20, counted
    assert counted["inference_stats"]["success"]["count"] == 40


async def test_a_request_larger_than_the_max_batch_is_split_and_put_back(
    http: httpx.AsyncClient,
) -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    response = await http.post(
        "/v2/models/rowsum/infer", json={"inputs": [tensor("x", x.tolist())]}
    )
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert output["shape"] == [10]
    assert output["data"] == x.sum(axis=1).tolist()
    sizes = [batch["batch_size"] for batch in (await stats(http, "rowsum"))["batch_stats"]]
    assert sizes and max(sizes) <= 4, sizes


async def test_requests_of_other_widths_are_batched_apart(http: httpx.AsyncClient) -> None:
    xs = [np.full((2, 2 + i % 3), float(i), dtype=np.float32) for i in range(24)]
    responses = await asyncio.gather(
        *(
            http.post("/v2/models/rowsum/infer", json={"inputs": [tensor("x", x.tolist())]})
            for x in xs
        )
    )
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == x.sum(axis=1).tolist()


async def test_a_full_queue_is_503_with_retry_after(http: httpx.AsyncClient) -> None:
    def rows(count: int) -> dict[str, Any]:
        return {"inputs": [tensor("x", np.ones((count, 2)).tolist())]}

    assert (await http.post("/v2/models/bounded/infer", json=rows(1))).status_code == 200
    transport = http._transport
    assert isinstance(transport, httpx.ASGITransport)
    dispatcher = transport.app.state.services.dispatcher  # type: ignore[attr-defined]
    assert isinstance(dispatcher, LocalDispatcher)
    slots = dispatcher.lane("bounded").slots
    await slots.acquire()  # a model call is running
    try:
        waiting = asyncio.create_task(http.post("/v2/models/bounded/infer", json=rows(3)))
        await eventually(lambda: dispatcher.lane("bounded").depth == 3)  # its rows are queued
        refused = await http.post("/v2/models/bounded/infer", json=rows(2))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"].isdigit()
        assert "queue is full" in refused.json()["error"]
    finally:
        slots.release()
    assert (await waiting).status_code == 200
    too_many = await http.post("/v2/models/bounded/infer", json=rows(5))
    assert too_many.status_code == 400
    assert "queues at most 4" in too_many.json()["error"]


async def test_an_image_classifier_gives_every_class_probability(http: httpx.AsyncClient) -> None:
    pixels = prepare_image(CHELSEA, IMAGENET_INPUT, 40_000_000)
    item = triton.InferInput("image", [1, *pixels.shape], "FP32")
    item.set_data_from_numpy(pixels[None])
    result = await binary_infer(http, "imagenet", [item])
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (1, 1000)
    assert abs(float(probabilities.sum()) - 1) < 1e-3
    ranked = await http.post(
        "/v1/models/imagenet/classify",
        json={"images": [base64.b64encode(CHELSEA).decode()], "k": 1},
    )
    [[best]] = [result["predictions"] for result in ranked.json()["results"]]
    assert abs(float(probabilities.max()) - best["score"]) < 1e-4


async def test_classification_parameter_names_the_top_classes(http: httpx.AsyncClient) -> None:
    red = np.zeros((1, 3, 16, 16), dtype=np.float32)
    red[:, 0] = 1.0
    body = {
        "inputs": [tensor("image", red.tolist())],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    response = await http.post("/v2/models/colours/infer", json=body)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 2]
    scores = [float(item.split(":")[0]) for item in output["data"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item.split(":")[2] in {"red", "green", "blue"} for item in output["data"])


async def test_the_captioner_takes_and_gives_bytes(tiny_git: Path) -> None:
    pictures = [png_bytes(image) for image in swatches(3)]
    titles = await expected_titles(tiny_git, pictures)
    async with caption_app(tiny_git) as http:
        item = triton.InferInput("image", [3], "BYTES")
        item.set_data_from_numpy(np.array(pictures, dtype=np.object_))
        result = await binary_infer(http, "caption", [item])
    got = result.as_numpy("title")
    assert got is not None
    assert [title.decode() for title in got] == titles


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [tensor("x", [[1, 2, 3]])]}, "has 3 in dimension 1; the model takes 4"),
        ({"inputs": [tensor("x", [1, 2, 3, 4], shape=[2, 4])]}, "has 4 elements"),
        ({"inputs": [tensor("x", [[1, 2, 3, 4]], "INT64")]}, "is INT64; the model takes FP32"),
        ({"inputs": [tensor("x", [["a", "b", "c", "d"]])]}, "not FP32 values"),
        ({"inputs": [tensor("z", [[1, 2, 3, 4]])]}, "unknown input 'z'"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}, "neither 'data'"),
        ({"inputs": [tensor("x", [[1, 2, 3, 4]], shape=[1, -4])]}, "non-negative integers"),
        ({"inputs": []}, "non-empty list"),
        ({"x": 1}, "non-empty list"),
        ({"inputs": [tensor("x", [[1, 2, 3, 4]])], "outputs": [{"name": "q"}]}, "unknown output"),
        ({"inputs": [tensor("x", [[1, 2, 3, 4]])], "parameters": {"timeout": -1}}, "timeout"),
        ({"inputs": [tensor("x", [[1, 2, 3, 4]])], "parameters": {"priority": "hi"}}, "priority"),
        ({"inputs": [tensor("x", [], shape=[0, 4])]}, "empty"),
        ({"inputs": [tensor("x", [[1, 2, 3, 4]])], "id": 5}, "'id' must be a string"),
    ],
)
async def test_bad_requests_are_400_naming_what_is_wrong(
    http: httpx.AsyncClient, body: Any, message: str
) -> None:
    response = await http.post("/v2/models/linear/infer", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


async def test_bad_binary_bodies_are_400(http: httpx.AsyncClient) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    )
    cases = [
        (header + b"\0" * 8, str(len(header)), "runs past the end"),
        (header + b"\0" * 20, str(len(header)), "belong to none"),
        (header + b"\0" * 16, "many", "Inference-Header-Content-Length"),
        (header + b"\0" * 16, str(len(header) + 100), "Inference-Header-Content-Length"),
        (b"not json" + b"\0" * 16, "8", "not JSON"),
    ]
    for body, length, message in cases:
        response = await http.post(
            "/v2/models/linear/infer",
            content=body,
            headers={"Inference-Header-Content-Length": length},
        )
        assert response.status_code == 400, (length, response.text)
        assert message in response.json()["error"]
    good = await http.post(
        "/v2/models/linear/infer",
        content=header + np.ones(4, "<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert good.status_code == 200


async def test_a_passed_timeout_is_504_and_counted_as_a_failure(http: httpx.AsyncClient) -> None:
    body = {"inputs": [tensor("x", [[1, 2, 3, 4]])], "parameters": {"timeout": 1}}
    response = await http.post("/v2/models/linear/infer", json=body)
    assert response.status_code == 504 and "deadline" in response.json()["error"]
    counted = await stats(http, "linear")
    assert counted["inference_stats"]["fail"]["count"] == 1
    assert counted["inference_stats"]["success"]["count"] == 0


async def test_priority_orders_the_waiting_requests_as_triton_does(
    http: httpx.AsyncClient,
) -> None:
    dispatcher = _dispatcher(http)
    lane = dispatcher.lane("single")
    await lane.slots.acquire()  # a model call is running: what comes next waits
    levels = [0, 2, 1, 3, 0]  # 1 first, then 2, 3; the default level (0) last
    try:
        waiting = []
        for index, level in enumerate(levels):
            body = {
                "inputs": [tensor("x", [[float(index), 0.0]])],
                "parameters": {"priority": level} if level else {},
            }
            waiting.append(asyncio.create_task(http.post("/v2/models/single/infer", json=body)))
            await asyncio.sleep(0.05)
        order = [int(job.payload["x"][0, 0]) for job in lane.waiting()]
        assert order == [2, 1, 3, 0, 4]
    finally:
        lane.slots.release()
    answers = await asyncio.gather(*waiting)
    assert [answer.json()["outputs"][0]["data"] for answer in answers] == [[i] for i in range(5)]
    too_high = {"inputs": [tensor("x", [[1.0, 2.0]])], "parameters": {"priority": 2**31}}
    refused = await http.post("/v2/models/single/infer", json=too_high)
    assert refused.status_code == 400 and "priority" in refused.json()["error"]


def _dispatcher(http: httpx.AsyncClient) -> LocalDispatcher:
    transport = http._transport
    assert isinstance(transport, httpx.ASGITransport)
    dispatcher = transport.app.state.services.dispatcher  # type: ignore[attr-defined]
    assert isinstance(dispatcher, LocalDispatcher)
    return dispatcher


async def test_the_fast_path_answers_as_the_framework_route(tmp_path: Path) -> None:
    """Inference is served straight from ASGI; without that fast path the framework's route
    answers: the two must give the same answers, errors included."""
    root, _ = repository(tmp_path / "models")
    settings = fast_settings(model_repository=str(root), max_body_bytes=64 * 1024)
    fast = create_app(settings)
    routed = create_app(settings, fast_routes=False)
    x = tensor("x", [[1.0, 2.0, 3.0, 4.0]])
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32",
                 "parameters": {"binary_data_size": 16}}
            ],
            "parameters": {"binary_data_output": True},
        }
    )  # fmt: skip
    binary = {"Inference-Header-Content-Length": str(len(header))}
    bad_timeout = {"X-Request-Timeout": "x"}
    requests: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("POST", "/v2/models/linear/infer", orjson.dumps({"id": "a", "inputs": [x]}), {}),
        ("POST", "/v2/models/linear/versions/1/infer", orjson.dumps({"inputs": [x]}), {}),
        ("POST", "/v2/models/linear/infer", header + np.ones(4, "<f4").tobytes(), binary),
        ("POST", "/v2/models/linear/infer", header + b"\0" * 8, binary),
        ("POST", "/v2/models/linear/infer", b"{", {}),
        ("POST", "/v2/models/linear/versions/9/infer", orjson.dumps({"inputs": [x]}), {}),
        ("POST", "/v2/models/nope/infer", orjson.dumps({"inputs": [x]}), {}),
        ("POST", "/v2/models/broken/infer", orjson.dumps({"inputs": [x]}), {}),
        ("POST", "/v2/models/knn/infer", orjson.dumps({"inputs": [x]}), {}),
        ("POST", "/v2/models/linear/infer", b" " * (65 * 1024), {}),
        ("POST", "/v2/models/linear/infer", orjson.dumps({"inputs": [x]}), bad_timeout),
        ("GET", "/v2/models/linear/infer", b"", {}),
        ("POST", "/v2/models/linear/infer/", orjson.dumps({"inputs": [x]}), {}),
        # The probes, served from ASGI too, and what they refuse.
        ("GET", "/v2", b"", {}),
        ("GET", "/v2/health/live", b"", {}),
        ("HEAD", "/v2/health/live", b"", {}),
        ("GET", "/v2/health/ready", b"", {}),
        ("GET", "/v2/models/linear/ready", b"", {}),
        ("HEAD", "/v2/models/linear/versions/1/ready", b"", {}),
        ("GET", "/v2/models/linear/versions/9/ready", b"", {}),
        ("GET", "/v2/models/broken/ready", b"", {}),
        ("GET", "/v2/models/nope/ready", b"", {}),
        ("POST", "/v2/health/live", b"", {}),
        ("DELETE", "/v2/models/linear/ready", b"", {}),
        ("GET", "/v2/nowhere", b"", {}),
    ]  # fmt: skip
    async with app_client(fast) as one, app_client(routed) as other:
        for method, path, content, headers in requests:
            answers = [
                await client.request(method, path, content=content, headers=headers)
                for client in (one, other)
            ]
            first, second = answers
            assert first.status_code == second.status_code, (path, first.text, second.text)
            assert first.content == second.content, path
            for name in ("content-type", "inference-header-content-length", "retry-after", "allow"):
                assert first.headers.get(name) == second.headers.get(name), (path, name)
            if first.status_code >= 400 and method != "HEAD":  # the protocol's error shape
                assert set(first.json()) == {"error"}, (method, path, first.text)
        metrics = (await one.get("/metrics")).text
        assert 'route="/v2/models/{name}/infer"' in metrics
        assert 'route="/v2/models/{name}/ready"' in metrics


async def test_statistics_in_tritons_shape_and_histograms(http: httpx.AsyncClient) -> None:
    body = {"inputs": [tensor("x", [[1, 2, 3, 4], [5, 6, 7, 8]])]}
    assert (await http.post("/v2/models/linear/infer", json=body)).status_code == 200
    every = (await http.get("/v2/models/stats")).json()["model_stats"]
    assert {"linear", "imagenet", "echo"} <= {entry["name"] for entry in every}
    counted = await stats(http, "linear")
    assert counted["version"] == "1"
    assert counted["inference_count"] == 2 and counted["last_inference"] > 0
    inference = counted["inference_stats"]
    # One request of two rows: one success, as Triton counts requests; two inferences.
    assert inference["success"]["count"] == 1 and inference["success"]["ns"] > 0
    assert inference["queue"]["count"] == 1 and inference["compute_infer"]["count"] == 1
    assert (
        sum(b["compute_infer"]["count"] for b in counted["batch_stats"])
        == counted["execution_count"]
    )
    metrics = (await http.get("/metrics")).text
    assert 'sluiceway_queue_seconds_count{model="linear"} 2.0' in metrics
    assert 'sluiceway_compute_duration_seconds_count{model="linear"} 1.0' in metrics


async def test_gzip_bodies_are_read(http: httpx.AsyncClient) -> None:
    body = gzip.compress(orjson.dumps({"inputs": [tensor("x", [[1, 2, 3, 4]])]}))
    response = await http.post(
        "/v2/models/linear/infer", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    refused = await http.post(
        "/v2/models/linear/infer", content=body, headers={"Content-Encoding": "br"}
    )
    assert refused.status_code == 400 and "gzip or deflate" in refused.json()["error"]


async def test_a_bug_answers_500_on_the_fast_path_as_through_the_framework(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error no handler knows (a bug) answers Starlette's 500 either way, with the request
    id, and is counted under its route."""
    root, _ = repository(tmp_path / "models")
    settings = fast_settings(model_repository=str(root))

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("sluiceway.api.oip.routes.answer", broken)
    body = orjson.dumps({"inputs": [tensor("x", [[1.0, 2.0, 3.0, 4.0]])]})
    for fast in (True, False):
        app = create_app(settings, fast_routes=fast)
        client = app_client(app)
        client._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://sluiceway.test",
        )
        async with client as http:
            answer = await http.post("/v2/models/linear/infer", content=body)
            metrics = (await http.get("/metrics")).text
        assert (answer.status_code, answer.text) == (500, "Internal Server Error"), fast
        assert answer.headers.get("x-request-id"), fast
        assert 'method="POST",route="/v2/models/{name}/infer",status="500"' in metrics, fast
