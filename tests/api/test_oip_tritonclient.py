"""Triton's own Python client (``tritonclient[http]`` from PyPI) against a real Sluiceway server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.fixtures.live_server import live_server
from tests.fixtures.model_repository import linear, repository


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, np.ndarray]]:
    root, weights = repository(tmp_path_factory.mktemp("oip") / "models")
    with live_server({"SLUICEWAY_MODEL_REPOSITORY": str(root)}) as url:
        yield url.removeprefix("http://"), weights


@pytest.fixture
def client(server: tuple[str, np.ndarray]) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server[0], concurrency=4)
    yield client
    client.close()


def x_input(x: np.ndarray, *, binary: bool) -> triton.InferInput:
    item = triton.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x, binary_data=binary)
    return item


def test_live_ready_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("linear")
    assert client.is_model_ready("linear", "1")
    assert not client.is_model_ready("linear", "2")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata()["name"] == "sluiceway"
    metadata = client.get_model_metadata("linear")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    config = client.get_model_config("linear")
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]


@pytest.mark.parametrize("binary", [False, True])
def test_infer_numpy_arrays(
    client: triton.InferenceServerClient, server: tuple[str, np.ndarray], binary: bool
) -> None:
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    result = client.infer(
        "linear",
        [x_input(x, binary=binary)],
        outputs=[triton.InferRequestedOutput("y", binary_data=binary)],
        request_id="r1",
    )
    y = result.as_numpy("y")
    assert y is not None
    np.testing.assert_allclose(y, linear(server[1], x), rtol=1e-5)
    assert result.get_response()["id"] == "r1"
    # Without outputs named, tritonclient asks for every output in binary.
    everything = client.infer("linear", [x_input(x, binary=binary)], model_version="1")
    np.testing.assert_array_equal(everything.as_numpy("y"), y)


def test_async_infer(client: triton.InferenceServerClient, server: tuple[str, np.ndarray]) -> None:
    xs = [np.full((1, 4), float(i), dtype=np.float32) for i in range(8)]
    pending = [client.async_infer("linear", [x_input(x, binary=True)]) for x in xs]
    for x, request in zip(xs, pending, strict=True):
        y = request.get_result().as_numpy("y")
        np.testing.assert_allclose(y, linear(server[1], x), rtol=1e-5)


async def test_the_asyncio_client(server: tuple[str, np.ndarray]) -> None:
    async with triton_aio.InferenceServerClient(server[0]) as client:
        assert await client.is_server_ready()
        x = np.ones((2, 4), dtype=np.float32)
        result = await client.infer("linear", [x_input(x, binary=True)])
        np.testing.assert_allclose(result.as_numpy("y"), linear(server[1], x), rtol=1e-5)


def test_error_paths_raise_with_the_servers_reason(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope")
    # Triton's opening words, which its clients' scripts check with startswith.
    assert unknown.value.message().startswith("Request for unknown model: 'nope' is not found")
    assert unknown.value.status() == "404"
    wrong = np.ones((1, 3), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="has 3 in dimension 1") as raised:
        client.infer("linear", [x_input(wrong, binary=True)])
    assert raised.value.status() == "400"
    with pytest.raises(InferenceServerException, match="no tensor form"):
        client.infer("knn", [x_input(wrong, binary=False)])
    with pytest.raises(InferenceServerException, match="deadline") as late:
        client.infer("linear", [x_input(np.ones((1, 4), np.float32), binary=True)], timeout=1)
    assert late.value.status() == "504"


def test_a_version_that_is_not_a_number_is_a_bad_request(
    client: triton.InferenceServerClient, server: tuple[str, np.ndarray]
) -> None:
    """As Triton: a version that is not a whole number is a malformed request (400), which no
    model could serve; a number the model does not serve stays a 404."""
    one = np.ones((1, 4), np.float32)
    for call in (
        lambda: client.infer("linear", [x_input(one, binary=True)], model_version="wrong_spec"),
        lambda: client.get_model_metadata("linear", "latest"),
        lambda: client.get_model_config("linear", "-1"),
        lambda: client.get_inference_statistics("linear", "1.0"),
    ):
        with pytest.raises(InferenceServerException, match="not a version number") as raised:
            call()
        assert raised.value.status() == "400"
    assert not client.is_model_ready("linear", "v1")  # it reads any status but 200 as False
    for method in ("GET", "HEAD"):  # the probes' fast path says the same
        ready = httpx.request(method, f"http://{server[0]}/v2/models/linear/versions/v1/ready")
        assert ready.status_code == 400
    with pytest.raises(InferenceServerException, match="no version '2'") as missing:
        client.get_model_metadata("linear", "2")
    assert missing.value.status() == "404"


def test_trace_settings_are_refused_saying_so(client: triton.InferenceServerClient) -> None:
    """Not a bare 404, which a client would take for a wrong address: 501 and why."""
    for call in (
        client.get_trace_settings,
        lambda: client.get_trace_settings(model_name="linear"),
        lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
    ):
        with pytest.raises(InferenceServerException, match="trace extension") as raised:
            call()
        assert raised.value.status() == "501"


def test_statistics(client: triton.InferenceServerClient) -> None:
    client.infer("linear", [x_input(np.ones((2, 4), np.float32), binary=True)])
    [entry] = client.get_inference_statistics("linear")["model_stats"]
    assert entry["name"] == "linear" and entry["inference_count"] >= 2
    assert entry["inference_stats"]["success"]["count"] >= 2


def test_the_repository_extension(client: triton.InferenceServerClient) -> None:
    index = {model["name"]: model["state"] for model in client.get_model_repository_index()}
    assert index["linear"] == "READY" and index["broken"] == "UNAVAILABLE"
