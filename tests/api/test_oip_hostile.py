"""Hostile inference requests, over HTTP (JSON, binary tensors, shared memory) and gRPC: each is
refused quickly with a 4xx (gRPC: ``INVALID_ARGUMENT``) naming what is wrong, never a 500.

Found by sending malformed requests of every kind the protocol's parsing meets: most cases here
once made the server fail with an internal error, answer far more than was asked, or take a bad
input as a good one; the rest hold the edges of the checks that now refuse them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from sluiceway.app import create_app
from tests.conftest import app_client, fast_settings
from tests.fixtures.model_repository import repository
from tests.fixtures.onnx_models import ECHO_TYPES
from tests.redis_server import free_port

try:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
except ImportError:  # the grpc extra: its cases skip without it
    grpc = None


@dataclass
class Served:
    http: httpx.AsyncClient
    grpc_address: str | None


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The small repository's models over HTTP and (with the extra) gRPC, shared memory on."""
    root, _ = repository(tmp_path / "models")
    port = free_port() if grpc is not None else None
    settings = fast_settings(model_repository=str(root), allow_client_shm=True, grpc_port=port)
    async with app_client(create_app(settings)) as http:
        yield Served(http, f"127.0.0.1:{port}" if port is not None else None)


def echo_inputs(**given: dict[str, Any]) -> list[dict[str, Any]]:
    """Every input of the echo model, [1, 2] each; those ``given`` (by datatype) as given."""
    inputs = []
    for datatype in ECHO_TYPES:
        data: Any = {"BOOL": [[True, False]], "BYTES": [["a", "b"]]}.get(datatype, [[1, 0]])
        item = {"name": f"in_{datatype}", "datatype": datatype, "shape": [1, 2], "data": data}
        inputs.append(given.get(datatype, item))
    return inputs


async def refused(http: httpx.AsyncClient, model: str, says: str, **request: Any) -> None:
    response = await http.post(f"/v2/models/{model}/infer", **request)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"], response.text


def binary_request(inputs: list[dict[str, Any]], tail: bytes) -> dict[str, Any]:
    header = orjson.dumps({"inputs": inputs})
    return {
        "content": header + tail,
        "headers": {"Inference-Header-Content-Length": str(len(header))},
    }


def bin_input(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


async def grpc_refused(served: Served, request: Any, says: str) -> None:
    if served.grpc_address is None:
        pytest.skip("needs the grpc extra")
    async with grpc.aio.insecure_channel(served.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert says in (raised.value.details() or "")


# A shape whose product is 0 but whose dimensions numpy cannot hold: the element count matches
# (none sent, none needed), and reshaping to it failed with ValueError, a 500.
NO_ELEMENTS_HUGE_DIMS = [[0, 2**62], [0, 2**62, 2**62], [0, 2**63 + 5], [2**62, 0, 2**62]]


@pytest.mark.parametrize("shape", NO_ELEMENTS_HUGE_DIMS)
async def test_no_elements_in_dimensions_too_large_to_hold_is_400(
    served: Served, shape: list[int]
) -> None:
    http = served.http
    says = "cannot be held"
    json_input = {"name": "x", "datatype": "FP32", "shape": shape, "data": []}
    await refused(http, "rowsum", says, json={"inputs": [json_input]})
    binary = binary_request([bin_input("x", "FP32", shape, 0)], b"")
    await refused(http, "rowsum", says, **binary)
    text = bin_input("in_BYTES", "BYTES", shape, 0)
    await refused(http, "echo", says, **binary_request(echo_inputs(BYTES=text), b""))


async def test_more_dimensions_than_an_array_holds_is_400(served: Served) -> None:
    shape = [1] * 70
    json_input = {"name": "x", "datatype": "FP32", "shape": shape, "data": [1.0]}
    await refused(served.http, "rowsum", "cannot be held", json={"inputs": [json_input]})
    binary = binary_request([bin_input("x", "FP32", shape, 4)], np.ones(1, "<f4").tobytes())
    await refused(served.http, "rowsum", "cannot be held", **binary)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs POSIX shared memory at /dev/shm")
async def test_a_region_read_into_dimensions_too_large_to_hold_is_400(served: Served) -> None:
    http = served.http
    key = f"sluiceway-hostile-{uuid.uuid4().hex[:12]}"
    path = Path("/dev/shm") / key
    path.write_bytes(bytes(64))
    try:
        registered = await http.post(
            "/v2/systemsharedmemory/region/hostile/register",
            json={"key": f"/{key}", "offset": 0, "byte_size": 64},
        )
        assert registered.status_code == 200, registered.text
        for shape, size in (([0, 2**62], 0), ([1] * 70, 4)):
            region = {"shared_memory_region": "hostile", "shared_memory_byte_size": size}
            item = {"name": "x", "datatype": "FP32", "shape": shape, "parameters": region}
            await refused(http, "rowsum", "cannot be held", json={"inputs": [item]})
    finally:
        await http.post("/v2/systemsharedmemory/unregister")
        path.unlink()


@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**63 - 1], [1] * 70])
async def test_grpc_dimensions_too_large_to_hold_are_invalid_argument(
    served: Served, shape: list[int]
) -> None:
    if grpc is None:
        pytest.skip("needs the grpc extra")
    request = service_pb2.ModelInferRequest(model_name="rowsum")
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"" if 0 in shape else np.ones(1, "<f4").tobytes())
    await grpc_refused(served, request, "cannot be held")


async def test_deeply_nested_bool_data_is_400(served: Served) -> None:
    """Nested lists as deep as JSON parsing allows: checking each value was a bool recursed
    past Python's limit (RecursionError, a 500)."""
    depth = 900
    nested = "[" * depth + "true" + "]" * depth
    inputs = echo_inputs(BOOL={"name": "in_BOOL", "datatype": "BOOL", "shape": [1, 2]})
    header = orjson.dumps({"inputs": inputs})
    # The BOOL input's data, spliced in as text: orjson writes no list that deep.
    body = header.replace(b'"shape":[1,2]}', b'"shape":[1,2],"data":' + nested.encode() + b"}", 1)
    await refused(served.http, "echo", "BOOL", content=body)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([[True, 1]], "true or false"),
        ([[True, None]], "true or false"),
        ([[1, 0]], "true or false"),
        ([["true", "false"]], "true or false"),
        ([[True], [False, True]], "BOOL"),
    ],
)
async def test_bool_data_must_be_bools(served: Served, data: Any, says: str) -> None:
    item = {"name": "in_BOOL", "datatype": "BOOL", "shape": [1, 2], "data": data}
    await refused(served.http, "echo", says, json={"inputs": echo_inputs(BOOL=item)})


@pytest.mark.parametrize(
    "length",
    [
        "\u00b2".encode("latin-1"),  # a digit to str.isdigit, not to int()
        b"9" * 5000,  # past int()'s 4300-digit limit
        b"0" * 4999 + b"1",
    ],
)
async def test_a_header_length_int_cannot_read_is_400(served: Served, length: bytes) -> None:
    header = orjson.dumps({"inputs": [bin_input("x", "FP32", [1, 4], 16)]})
    await refused(
        served.http,
        "linear",
        "Inference-Header-Content-Length",
        content=header + np.ones(4, "<f4").tobytes(),
        headers={"Inference-Header-Content-Length": length},
    )


async def test_an_input_with_data_and_binary_data_is_400(served: Served) -> None:
    """Sent twice, two ways: the binary bytes were used and the JSON data silently dropped."""
    item = {**bin_input("x", "FP32", [1, 4], 16), "data": [[5.0, 6.0, 7.0, 8.0]]}
    request = binary_request([item], np.ones(4, "<f4").tobytes())
    await refused(served.http, "linear", "send it once", **request)


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
@pytest.mark.parametrize("data", [[[None, 1.0]], [[1.0, "nan"]]])
async def test_a_null_in_float_data_is_400(served: Served, datatype: str, data: Any) -> None:
    """numpy reads null (and "nan") as NaN: the model ran on a value nobody sent."""
    item = {"name": f"in_{datatype}", "datatype": datatype, "shape": [1, 2], "data": data}
    inputs = echo_inputs(**{datatype: item})
    await refused(served.http, "echo", "not null", json={"inputs": inputs})


PAST_THE_RANGE = {"INT8": 128, "INT32": -(2**31) - 1, "INT64": 2**63, "UINT8": 256, "UINT64": -1}
"""A value just past what each integer datatype holds."""


@pytest.mark.parametrize("datatype", list(PAST_THE_RANGE))
@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([[1.7, 2]], "whole numbers"),  # was truncated to 1
        ([["1", "2"]], "whole numbers"),  # was parsed as a number
        ([[None, 2]], "INT"),
        ([[-1, 2**70]], "values"),  # JSON past 64 bits, which orjson reads as a float
        (None, "values"),  # PAST_THE_RANGE
    ],
)
async def test_integer_data_must_be_integers_the_datatype_holds(
    served: Served, datatype: str, data: Any, says: str
) -> None:
    data = data if data is not None else [[0, PAST_THE_RANGE[datatype]]]
    item = {"name": f"in_{datatype}", "datatype": datatype, "shape": [1, 2], "data": data}
    body = json.dumps({"inputs": echo_inputs(**{datatype: item})})  # orjson stops at 64 bits
    await refused(served.http, "echo", says, content=body)


async def test_integers_every_integer_datatype_holds_are_taken(served: Served) -> None:
    """The whole range of each datatype, whole floats among them (lossless), and UINT64
    values past INT64 beside small ones (numpy holds those only as floats)."""
    given = {
        "INT8": [[-128, 127.0]],
        "INT64": [[-(2**63), 2**63 - 1]],
        "UINT8": [[0, 255]],
        "UINT64": [[2**64 - 1, 1]],
        "UINT32": [[True, 2**32 - 1]],
    }
    items = {
        datatype: {"name": f"in_{datatype}", "datatype": datatype, "shape": [1, 2], "data": data}
        for datatype, data in given.items()
    }
    body = {
        "inputs": echo_inputs(**items),
        "outputs": [{"name": f"out_{datatype}"} for datatype in given],
    }
    response = await served.http.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 200, response.text
    answered = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert answered == {
        f"out_{datatype}": [int(value) for value in data[0]] for datatype, data in given.items()
    }


async def test_an_output_asked_for_twice_is_400(served: Served) -> None:
    """Each copy was answered whole: a body of 139 KB asking 2,000 times for a [1000, 2] output
    got a 77 MB answer, and 16 MB of such names would have filled the machine's memory."""
    inputs = [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}]
    for outputs in (
        [{"name": "y"}, {"name": "y"}],
        [{"name": "y", "parameters": {"binary_data": True}}, {"name": "y"}],
        [{"name": "y", "parameters": {"classification": 1}}, {"name": "y"}],
    ):
        body = {"inputs": inputs, "outputs": outputs}
        await refused(served.http, "linear", "'y' is asked for twice", json=body)


async def test_grpc_an_output_asked_for_twice_is_invalid_argument(served: Served) -> None:
    if grpc is None:
        pytest.skip("needs the grpc extra")
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, "<f4").tobytes())
    request.outputs.add(name="y")
    request.outputs.add(name="y")
    await grpc_refused(served, request, "'y' is asked for twice")
