"""Triton's system shared memory extension, driven by ``tritonclient`` and its shared memory
utilities against a real Sluiceway server on this machine."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, triton_to_np_dtype

from tests.fixtures.live_server import live_server
from tests.fixtures.model_repository import linear, repository
from tests.fixtures.onnx_models import ECHO_TYPES

pytestmark = pytest.mark.skipif(
    not Path("/dev/shm").is_dir(), reason="needs POSIX shared memory at /dev/shm (Linux)"
)


MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, np.ndarray]]:
    root, weights = repository(tmp_path_factory.mktemp("shm") / "models")
    env = {
        "SLUICEWAY_MODEL_REPOSITORY": str(root),
        "SLUICEWAY_ALLOW_CLIENT_SHM": "true",
        "SLUICEWAY_MAX_BODY_BYTES": str(MAX_BODY),
    }
    with live_server(env) as url:
        yield url.removeprefix("http://"), weights


@pytest.fixture
def client(server: tuple[str, np.ndarray]) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server[0])
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def regions() -> Iterator[list[shm.SharedMemoryRegion]]:
    """Regions a test creates, destroyed after it (keys unique per test)."""
    made: list[shm.SharedMemoryRegion] = []
    yield made
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _region(made: list[shm.SharedMemoryRegion], name: str, size: int) -> tuple[str, object]:
    key = f"/sluiceway-test-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(name, key, size)
    made.append(handle)
    return key, handle


def test_cuda_shared_memory_is_refused_and_cleaning_it_up_is_no_error(
    client: triton.InferenceServerClient,
) -> None:
    """Triton's clients unregister CUDA regions before they use system shared memory, on
    machines without a GPU too: that goes on; registering one is refused saying why, with
    the 400 of Triton built without GPU support."""
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("gpu")
    assert client.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException, match="'gpu' is registered") as raised:
        client.get_cuda_shared_memory_status("gpu")
    assert raised.value.status() == "404"
    with pytest.raises(InferenceServerException, match="runs models on the CPU") as raised:
        client.register_cuda_shared_memory("gpu", "aGFuZGxl", 0, 64)
    assert raised.value.status() == "400"


def test_inputs_and_outputs_through_shared_memory(
    client: triton.InferenceServerClient,
    server: tuple[str, np.ndarray],
    regions: list[shm.SharedMemoryRegion],
) -> None:
    x = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
    in_key, in_handle = _region(regions, "x-in", x.nbytes + 64)
    out_key, out_handle = _region(regions, "y-out", 1024)
    shm.set_shared_memory_region(in_handle, [x], offset=64)
    client.register_system_shared_memory("x-in", in_key, x.nbytes + 64)
    client.register_system_shared_memory("y-out", out_key, 1024)

    item = triton.InferInput("x", list(x.shape), "FP32")
    item.set_shared_memory("x-in", x.nbytes, offset=64)
    wanted = triton.InferRequestedOutput("y")
    wanted.set_shared_memory("y-out", 1024)
    result = client.infer("linear", [item], outputs=[wanted])

    [output] = result.get_response()["outputs"]
    # Name, datatype and shape, as Triton answers: the data are in the region (tritonclient's
    # users read them with get_contents_as_numpy, not as_numpy).
    assert output == {"name": "y", "datatype": "FP32", "shape": [3, 3]}
    y = shm.get_contents_as_numpy(out_handle, np.float32, output["shape"])
    np.testing.assert_allclose(y, linear(server[1], x), rtol=1e-5)

    # An input in shared memory, the output in the answer, as JSON.
    result = client.infer("linear", [item], outputs=[triton.InferRequestedOutput("y", False)])
    np.testing.assert_allclose(result.as_numpy("y"), y, rtol=1e-6)


def test_bytes_tensors_through_shared_memory(
    client: triton.InferenceServerClient, regions: list[shm.SharedMemoryRegion]
) -> None:
    # BYTES elements each prefixed with their 4-byte length, as tritonclient serializes them.
    words = np.array([[b"kiosk", b""], [b"nul\x00inside", "caf\u00e9".encode()]], np.object_)
    raw = serialize_byte_tensor(words).item()
    in_key, in_handle = _region(regions, "words-in", len(raw))
    out_key, out_handle = _region(regions, "words-out", 256)
    shm.set_shared_memory_region(in_handle, [np.array(raw, dtype=np.object_)])
    client.register_system_shared_memory("words-in", in_key, len(raw))
    client.register_system_shared_memory("words-out", out_key, 256)
    inputs = []
    for datatype in ECHO_TYPES:  # the echo model takes every datatype at once
        item = triton.InferInput(f"in_{datatype}", [2, 2], datatype)
        if datatype == "BYTES":
            item.set_shared_memory("words-in", len(raw))
        else:
            item.set_data_from_numpy(np.ones((2, 2), triton_to_np_dtype(datatype)))
        inputs.append(item)
    wanted = triton.InferRequestedOutput("out_BYTES")
    wanted.set_shared_memory("words-out", 256)
    result = client.infer("echo", inputs, outputs=[wanted])
    assert result.get_response()["outputs"] == [
        {"name": "out_BYTES", "datatype": "BYTES", "shape": [2, 2]}
    ]
    echoed = shm.get_contents_as_numpy(out_handle, np.object_, [2, 2])
    assert echoed.tolist() == words.tolist()


def test_status_and_unregister(
    client: triton.InferenceServerClient, regions: list[shm.SharedMemoryRegion]
) -> None:
    key_a, _ = _region(regions, "a", 256)
    key_b, _ = _region(regions, "b", 512)
    client.register_system_shared_memory("a", key_a, 128, offset=64)
    client.register_system_shared_memory("b", key_b, 512)
    assert client.get_system_shared_memory_status() == [
        {"name": "a", "key": key_a, "offset": 64, "byte_size": 128},
        {"name": "b", "key": key_b, "offset": 0, "byte_size": 512},
    ]
    assert client.get_system_shared_memory_status("b") == [
        {"name": "b", "key": key_b, "offset": 0, "byte_size": 512}
    ]
    client.unregister_system_shared_memory("a")
    client.unregister_system_shared_memory("a")  # not registered: no error
    assert [region["name"] for region in client.get_system_shared_memory_status()] == ["b"]
    with pytest.raises(InferenceServerException, match="no shared memory region 'a'") as gone:
        client.get_system_shared_memory_status("a")
    assert gone.value.status() == "404"  # Triton's NOT_FOUND
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_the_server_says_it_speaks_the_extension(client: triton.InferenceServerClient) -> None:
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize(
    ("key", "size", "offset", "reason"),
    [
        ("/sluiceway-test-no-such-object", 16, 0, "no shared-memory object"),
        ("/../etc/passwd", 16, 0, "must name a POSIX shared-memory object"),
        ("MADE", 4096, 0, "holds 256 bytes"),
        ("MADE", 200, 100, "do not fit"),
        ("MADE", 0, 0, "'byte_size' more than 0"),
        ("/a\u0000b", 16, 0, "must name a POSIX shared-memory object"),
    ],
)
def test_registration_errors(
    client: triton.InferenceServerClient,
    regions: list[shm.SharedMemoryRegion],
    key: str,
    size: int,
    offset: int,
    reason: str,
) -> None:
    made, _ = _region(regions, "r", 256)
    with pytest.raises(InferenceServerException, match=reason) as raised:
        client.register_system_shared_memory("r", made if key == "MADE" else key, size, offset)
    assert raised.value.status() == "400"
    assert client.get_system_shared_memory_status() == []


def test_a_name_is_registered_once(
    client: triton.InferenceServerClient, regions: list[shm.SharedMemoryRegion]
) -> None:
    key, _ = _region(regions, "twice", 64)
    client.register_system_shared_memory("twice", key, 64)
    with pytest.raises(InferenceServerException, match="already registered"):
        client.register_system_shared_memory("twice", key, 32)


def test_inference_errors_name_the_region(
    client: triton.InferenceServerClient, regions: list[shm.SharedMemoryRegion]
) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    key, handle = _region(regions, "small", 64)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("small", key, 64)

    def infer(region: str, size: int, offset: int = 0, out: int | None = None) -> None:
        item = triton.InferInput("x", [2, 4], "FP32")
        item.set_shared_memory(region, size, offset)
        outputs = None
        if out is not None:
            wanted = triton.InferRequestedOutput("y")
            wanted.set_shared_memory("small", out)
            outputs = [wanted]
        client.infer("linear", [item], outputs=outputs)

    with pytest.raises(InferenceServerException, match="no shared memory region 'nope'") as gone:
        infer("nope", 32)
    assert gone.value.status() == "404"
    with pytest.raises(InferenceServerException, match="do not fit shared memory region"):
        infer("small", 32, offset=48)
    with pytest.raises(
        InferenceServerException, match="has 2 elements; its shape \\[2, 4\\] needs 8"
    ):
        infer("small", 8)
    with pytest.raises(InferenceServerException, match="more than the 4 bytes") as raised:
        infer("small", 32, out=4)
    assert raised.value.status() == "400"
    calls = _calls(client)
    with pytest.raises(InferenceServerException, match="128 bytes at offset 0 do not fit"):
        infer("small", 32, out=128)
    assert _calls(client) == calls  # refused before the model ran


def _calls(client: triton.InferenceServerClient) -> int:
    [entry] = client.get_inference_statistics("linear")["model_stats"]
    return int(entry["inference_count"])


def test_an_input_over_the_body_limit_is_refused(
    client: triton.InferenceServerClient, regions: list[shm.SharedMemoryRegion]
) -> None:
    rows = MAX_BODY // 16 + 1  # 16 bytes a row: one row over the limit a body would have
    key, _ = _region(regions, "large", rows * 16)
    client.register_system_shared_memory("large", key, rows * 16)
    item = triton.InferInput("x", [rows, 4], "FP32")
    item.set_shared_memory("large", rows * 16)
    with pytest.raises(InferenceServerException, match="over the server's 65536-byte limit"):
        client.infer("linear", [item])


def test_a_shrunk_object_is_refused_not_a_crash(
    client: triton.InferenceServerClient, regions: list[shm.SharedMemoryRegion]
) -> None:
    key, _ = _region(regions, "shrinks", 8192)
    client.register_system_shared_memory("shrinks", key, 8192)
    os.truncate(f"/dev/shm/{key.lstrip('/')}", 0)  # reading the mapping now would be SIGBUS
    item = triton.InferInput("x", [1, 4], "FP32")
    item.set_shared_memory("shrinks", 16, offset=4096)
    with pytest.raises(InferenceServerException, match="shrank"):
        client.infer("linear", [item])
    assert client.is_server_live()


def test_off_unless_allowed(tmp_path: Path) -> None:
    root, _ = repository(tmp_path / "models")
    with live_server({"SLUICEWAY_MODEL_REPOSITORY": str(root)}) as url:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert "system_shared_memory" not in client.get_server_metadata()["extensions"]
        with pytest.raises(InferenceServerException, match="SLUICEWAY_ALLOW_CLIENT_SHM") as off:
            client.register_system_shared_memory("r", "/anything", 16)
        assert off.value.status() == "403"
        for call in (
            client.get_system_shared_memory_status,
            client.unregister_system_shared_memory,
        ):
            with pytest.raises(InferenceServerException, match="SLUICEWAY_ALLOW_CLIENT_SHM"):
                call()
        params = {"shared_memory_region": "r", "shared_memory_byte_size": 16}
        request = {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": params,
                }
            ]
        }
        answer = httpx.post(f"{url}/v2/models/linear/infer", json=request)
        assert answer.status_code == 403
        assert "SLUICEWAY_ALLOW_CLIENT_SHM" in answer.json()["error"]
        request = {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "y", "parameters": params}],
        }
        answer = httpx.post(f"{url}/v2/models/linear/infer", json=request)
        assert answer.status_code == 403
        client.close()
