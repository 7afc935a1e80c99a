"""The Open Inference Protocol over gRPC, driven by Triton's own ``tritonclient.grpc`` (and its
generated stub, for what tritonclient never sends) against a real Sluiceway server."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

_EXTRA = "needs the grpc extra (pip install -e '.[grpc]')"
pytest.importorskip("grpc", reason=_EXTRA)
pytest.importorskip("tritonclient.grpc", reason=_EXTRA)

import grpc  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402
import tritonclient.utils.shared_memory as shm  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException, triton_to_np_dtype  # noqa: E402

from sluiceway.api.oip.grpc_service import InferenceService  # noqa: E402
from sluiceway.runtime.metrics import Metrics  # noqa: E402
from tests.fixtures.live_server import live_server  # noqa: E402
from tests.fixtures.model_repository import linear, repository  # noqa: E402
from tests.fixtures.onnx_models import ECHO_TYPES  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

MAX_BODY = 64 * 1024
TOKEN = "grpc-test-token"


class Served:
    def __init__(self, url: str, grpc_url: str, weights: np.ndarray) -> None:
        self.url = url
        self.grpc_url = grpc_url
        self.weights = weights


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root, weights = repository(tmp_path_factory.mktemp("grpc") / "models")
    port = free_port()
    env = {
        "SLUICEWAY_MODEL_REPOSITORY": str(root),
        "SLUICEWAY_GRPC_PORT": str(port),
        "SLUICEWAY_MAX_BODY_BYTES": str(MAX_BODY),
        "SLUICEWAY_ADMIN_TOKEN": TOKEN,
        "SLUICEWAY_ALLOW_CLIENT_SHM": "true",
    }
    with live_server(env) as url:
        yield Served(url, f"127.0.0.1:{port}", weights)


@pytest.fixture
def client(server: Served) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture
def stub(server: Served) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def x_input(x: np.ndarray) -> triton.InferInput:
    item = triton.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return item


def test_health_and_metadata_say_what_rest_says(
    client: triton.InferenceServerClient, server: Served
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("linear")
    assert client.is_model_ready("linear", "1")
    assert not client.is_model_ready("linear", "2")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("nope")
    metadata = client.get_server_metadata(as_json=True)
    rest = httpx.get(f"{server.url}/v2").json()
    assert metadata["name"] == "sluiceway" == rest["name"]
    assert metadata["extensions"] == rest["extensions"]
    assert "system_shared_memory" in metadata["extensions"]
    model = client.get_model_metadata("linear", as_json=True)
    rest_model = httpx.get(f"{server.url}/v2/models/linear").json()
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [int(d) for d in model["inputs"][0]["shape"]] == rest_model["inputs"][0]["shape"]
    assert model["versions"] == rest_model["versions"] and model["platform"] == "onnxruntime_onnx"
    config = client.get_model_config("linear", as_json=True)["config"]
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_infer_numpy_arrays(client: triton.InferenceServerClient, server: Served) -> None:
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    result = client.infer(
        "linear",
        [x_input(x)],
        outputs=[triton.InferRequestedOutput("y")],
        request_id="r1",
        model_version="1",
    )
    np.testing.assert_allclose(result.as_numpy("y"), linear(server.weights, x), rtol=1e-5)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r1", "linear", "1")
    # Without outputs named, every output comes back.
    everything = client.infer("linear", [x_input(x)])
    np.testing.assert_array_equal(everything.as_numpy("y"), result.as_numpy("y"))


def test_every_datatype_round_trips(client: triton.InferenceServerClient) -> None:
    rng = np.random.default_rng(2)
    inputs = []
    sent = {}
    for datatype in ECHO_TYPES:
        if datatype == "BYTES":
            array = np.array([[b"a", b""], ["\u00e9t\u00e9".encode(), b"\x00z"]], dtype=np.object_)
        elif datatype == "BOOL":
            array = np.array([[True, False], [False, True]])
        else:
            array = (rng.random((2, 2)) * 100).astype(triton_to_np_dtype(datatype))
        item = triton.InferInput(f"in_{datatype}", [2, 2], datatype)
        item.set_data_from_numpy(array)
        inputs.append(item)
        sent[datatype] = array
    result = client.infer("echo", inputs)
    for datatype, array in sent.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got is not None and got.shape == (2, 2), datatype
        np.testing.assert_array_equal(got, array, err_msg=datatype)


def test_typed_contents_as_other_clients_send_them(stub: Any, server: Served) -> None:
    """KServe's and MLServer's clients send ``contents`` (``fp32_contents``...), not raw bytes."""
    x = [0.5, -1.0, 2.0, 3.5, 1.0, 0.0, -2.0, 4.0]
    request = service_pb2.ModelInferRequest(model_name="linear", id="typed")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(x)
    response = stub.ModelInfer(request)
    assert response.id == "typed" and [o.name for o in response.outputs] == ["y"]
    y = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, -1)
    expected = linear(server.weights, np.array(x, dtype=np.float32).reshape(2, 4))
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    # A value the datatype cannot hold is the caller's error, named.
    request = service_pb2.ModelInferRequest(model_name="echo")
    for datatype in ECHO_TYPES:
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[1, 2])
        if datatype == "INT8":
            tensor.contents.int_contents.extend([1, 300])
        elif datatype == "FP16":
            request.raw_input_contents.append(np.zeros(2, np.float16).tobytes())
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend([b"a", b"b"])
        elif datatype == "BOOL":
            tensor.contents.bool_contents.extend([True, False])
        else:
            field = {"INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents"}
            field |= {"UINT8": "uint_contents", "UINT16": "uint_contents"}
            field |= {"UINT32": "uint_contents", "UINT64": "uint64_contents"}
            field |= {"FP32": "fp32_contents", "FP64": "fp64_contents"}
            getattr(tensor.contents, field[datatype]).extend([1, 2])
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'in_INT8'" in raised.value.details() and "INT8" in raised.value.details()
    # Fixed, the same request answers every datatype.
    request.inputs[[t.name for t in request.inputs].index("in_INT8")].contents.int_contents[1] = 3
    response = stub.ModelInfer(request)
    names = [output.name for output in response.outputs]
    by_name = dict(zip(names, response.raw_output_contents, strict=True))
    assert np.frombuffer(by_name["out_INT8"], np.int8).tolist() == [1, 3]
    assert by_name["out_BYTES"] == b"\x01\x00\x00\x00a\x01\x00\x00\x00b"


def test_raw_contents_must_match_the_inputs(stub: Any) -> None:
    def infer(raw: list[bytes], *, contents: bool = False) -> grpc.RpcError:
        request = service_pb2.ModelInferRequest(model_name="linear")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        if contents:
            tensor.contents.fp32_contents.extend([1, 2, 3, 4])
        request.raw_input_contents.extend(raw)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return raised.value

    assert "has no data" in infer([]).details()
    four = np.ones(4, np.float32).tobytes()
    assert "1 raw_input_contents entries belong to no input" in infer([four, four]).details()
    assert "belong to no input" in infer([four], contents=True).details()
    assert "not a whole number of FP32" in infer([b"\x00" * 5]).details()


def test_async_and_streamed_inference(client: triton.InferenceServerClient, server: Served) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def done(result: Any, error: Any) -> None:
        results.put((result, error))

    xs = {f"r{i}": np.full((1, 4), float(i), dtype=np.float32) for i in range(8)}
    for request_id, x in xs.items():
        client.async_infer("linear", [x_input(x)], partial(done), request_id=request_id)
    _check_answers(results, xs, server)
    client.start_stream(callback=done)
    try:
        for request_id, x in xs.items():
            client.async_stream_infer("linear", [x_input(x)], request_id=request_id)
        _check_answers(results, xs, server)
        # An error is that request's answer; the stream goes on.
        client.async_stream_infer("nope", [x_input(xs["r0"])], request_id="bad")
        _, error = results.get(timeout=30)
        assert isinstance(error, InferenceServerException) and "nope" in error.message()
        client.async_stream_infer("linear", [x_input(xs["r1"])], request_id="r1")
        _check_answers(results, {"r1": xs["r1"]}, server)
    finally:
        client.stop_stream()


def _check_answers(results: queue.Queue[Any], xs: dict[str, np.ndarray], server: Served) -> None:
    for _ in xs:
        result, error = results.get(timeout=30)
        assert error is None
        request_id = result.get_response().id
        expected = linear(server.weights, xs[request_id])
        np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-5)


def test_errors_carry_the_servers_reason_and_code(client: triton.InferenceServerClient) -> None:
    def fails(call: Any, code: str, match: str) -> None:
        with pytest.raises(InferenceServerException, match=match) as raised:
            call()
        assert raised.value.status() == code

    fails(
        lambda: client.get_model_metadata("nope"),
        "StatusCode.NOT_FOUND",
        "Request for unknown model",
    )
    fails(lambda: client.get_model_metadata("linear", "2"), "StatusCode.NOT_FOUND", "version")
    wrong = np.ones((1, 3), dtype=np.float32)
    fails(
        lambda: client.infer("linear", [x_input(wrong)]),
        "StatusCode.INVALID_ARGUMENT",
        "has 3 in dimension 1",
    )
    fails(lambda: client.infer("knn", [x_input(wrong)]), "StatusCode.INVALID_ARGUMENT", "tensor")
    fails(lambda: client.infer("broken", [x_input(wrong)]), "StatusCode.UNAVAILABLE", "'broken'")
    one = np.ones((1, 4), dtype=np.float32)
    fails(
        lambda: client.infer("linear", [x_input(one)], timeout=1),
        "StatusCode.DEADLINE_EXCEEDED",
        "deadline",
    )
    fails(
        lambda: client.infer("linear", [x_input(one)], outputs=[triton.InferRequestedOutput("z")]),
        "StatusCode.INVALID_ARGUMENT",
        "unknown output 'z'",
    )
    # Larger than SLUICEWAY_MAX_BODY_BYTES: refused by gRPC itself before any work.
    big = np.ones((MAX_BODY // 16 + 1, 4), dtype=np.float32)
    too_big = "StatusCode.RESOURCE_EXHAUSTED"
    fails(lambda: client.infer("linear", [x_input(big)]), too_big, "larger than max")
    assert client.is_server_live()


def test_a_version_that_is_not_a_number_is_an_invalid_argument(
    client: triton.InferenceServerClient,
) -> None:
    """As Triton: a version that is not a whole number is INVALID_ARGUMENT (no model could
    serve it), ModelReady included; a number the model does not serve stays NOT_FOUND."""
    one = np.ones((1, 4), np.float32)
    for call in (
        lambda: client.infer("linear", [x_input(one)], model_version="wrong_specification"),
        lambda: client.get_model_metadata("linear", "latest"),
        lambda: client.get_model_config("linear", "-1"),
        lambda: client.get_inference_statistics("linear", "1.0"),
        lambda: client.is_model_ready("linear", "v1"),
    ):
        with pytest.raises(InferenceServerException, match="not a version number") as raised:
            call()
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="no version '2'") as missing:
        client.infer("linear", [x_input(one)], model_version="2")
    assert missing.value.status() == "StatusCode.NOT_FOUND"


def test_priority_and_classification(client: triton.InferenceServerClient) -> None:
    image = np.random.default_rng(3).random((1, 3, 16, 16)).astype(np.float32)
    metadata = client.get_model_metadata("colours", as_json=True)
    item = triton.InferInput(metadata["inputs"][0]["name"], [1, 3, 16, 16], "FP32")
    item.set_data_from_numpy(image)
    output = metadata["outputs"][0]["name"]
    scores = client.infer("colours", [item], priority=1).as_numpy(output)
    assert scores is not None and scores.shape == (1, 3)
    top = client.infer(
        "colours", [item], outputs=[triton.InferRequestedOutput(output, class_count=2)]
    ).as_numpy(output)
    best = int(np.argmax(scores[0]))
    assert top is not None and top.shape == (1, 2)
    assert top[0][0].decode().split(":")[1:] == [str(best), ["red", "green", "blue"][best]]
    with pytest.raises(InferenceServerException, match="priority"):
        client.infer("colours", [item], priority=2**31)


def test_statistics_and_metrics(client: triton.InferenceServerClient, server: Served) -> None:
    before = _success(client)
    client.infer("linear", [x_input(np.ones((2, 4), np.float32))])
    assert _success(client) == before + 1  # a request of two rows counts once, as in Triton
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"linear", "echo"} <= {entry["name"] for entry in every}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'route="grpc:ModelInfer"' in metrics
    assert 'route="grpc:ModelMetadata",status="404"' in metrics


def _success(client: triton.InferenceServerClient) -> int:
    [entry] = client.get_inference_statistics("linear", as_json=True)["model_stats"]
    return int(entry["inference_stats"]["success"].get("count", 0))


def test_the_repository_extension(client: triton.InferenceServerClient) -> None:
    models = client.get_model_repository_index(as_json=True)["models"]
    index = {model["name"]: model for model in models}
    assert index["linear"]["state"] == "READY" and index["broken"]["state"] == "UNAVAILABLE"
    assert "reason" in index["broken"]
    with pytest.raises(InferenceServerException, match="Bearer") as raised:
        client.unload_model("single")
    assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    headers = {"authorization": f"Bearer {TOKEN}"}
    client.unload_model("single", headers=headers)
    assert not client.is_model_ready("single")
    client.load_model("single", headers=headers)
    assert client.is_model_ready("single")
    with pytest.raises(InferenceServerException, match="failed to load") as raised:
        client.load_model("broken", headers=headers)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    # A model no folder holds is a failed load too (Triton's model control examples check
    # its opening), still NOT_FOUND.
    with pytest.raises(InferenceServerException) as no:
        client.load_model("ghost", headers=headers)
    assert no.value.message().startswith("failed to load 'ghost': no folder 'ghost'")
    assert no.value.status() == "StatusCode.NOT_FOUND"


def kserve_repository_messages() -> dict[str, Any]:
    """The repository messages of KServe's ``predict_v2.proto`` (``kserve.protocol.grpc``),
    which differ from Triton's: the model's name is field 1, and the answers say so."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FieldDescriptorProto
    layouts = {
        "RepositoryModelLoadRequest": [("model_name", proto.TYPE_STRING)],
        "RepositoryModelLoadResponse": [
            ("model_name", proto.TYPE_STRING),
            ("isLoaded", proto.TYPE_BOOL),
        ],
        "RepositoryModelUnloadRequest": [("model_name", proto.TYPE_STRING)],
        "RepositoryModelUnloadResponse": [
            ("model_name", proto.TYPE_STRING),
            ("isUnloaded", proto.TYPE_BOOL),
        ],
    }
    file = descriptor_pb2.FileDescriptorProto(
        name="kserve_predict_v2_repository.proto", package="kserve_v2", syntax="proto3"
    )
    for message, fields in layouts.items():
        described = file.message_type.add(name=message)
        for number, (field, kind) in enumerate(fields, start=1):
            described.field.add(name=field, number=number, type=kind, label=proto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"kserve_v2.{name}"))
        for name in layouts
    }


def test_the_repository_extension_in_kserves_layout(
    server: Served, client: triton.InferenceServerClient
) -> None:
    """KServe's stub calls the same methods with other messages: the model's name is field 1
    (Triton's ``repository_name``) and the answer carries it with ``isLoaded``/``isUnloaded``.
    A KServe call names its model and reads its answer; tritonclient's calls are unchanged."""
    kserve = kserve_repository_messages()
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(server.grpc_url) as channel:

        def call(method: str) -> Any:
            return channel.unary_unary(
                f"/inference.GRPCInferenceService/{method}",
                request_serializer=kserve[f"{method}Request"].SerializeToString,
                response_deserializer=kserve[f"{method}Response"].FromString,
            )

        unloaded = call("RepositoryModelUnload")(
            kserve["RepositoryModelUnloadRequest"](model_name="single"), metadata=metadata
        )
        assert (unloaded.model_name, unloaded.isUnloaded) == ("single", True)
        assert not client.is_model_ready("single")
        loaded = call("RepositoryModelLoad")(
            kserve["RepositoryModelLoadRequest"](model_name="single"), metadata=metadata
        )
        assert (loaded.model_name, loaded.isLoaded) == ("single", True)
        assert client.is_model_ready("single")
        # A failed load is an error, as in Triton's layout; and the token is still needed.
        with pytest.raises(grpc.RpcError) as failed:
            call("RepositoryModelLoad")(
                kserve["RepositoryModelLoadRequest"](model_name="broken"), metadata=metadata
            )
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "failed to load" in str(failed.value.details())
        with pytest.raises(grpc.RpcError) as refused:
            call("RepositoryModelUnload")(
                kserve["RepositoryModelUnloadRequest"](model_name="single")
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.is_model_ready("single")
    # Triton's message names the model in field 2; its answer is Triton's empty one to Triton's
    # classes (KServe's fields are unknown to them, so skipped) and KServe's to KServe's.
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name="single"), metadata=metadata
        )
    assert answer.ListFields() == []
    kserve_answer = kserve["RepositoryModelLoadResponse"].FromString(answer.SerializeToString())
    assert (kserve_answer.model_name, kserve_answer.isLoaded) == ("single", True)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs POSIX shared memory at /dev/shm")
def test_shared_memory(client: triton.InferenceServerClient, server: Served) -> None:
    x = np.random.default_rng(4).normal(size=(2, 4)).astype(np.float32)
    key_in, key_out = (f"/sluiceway-grpc-{uuid.uuid4().hex[:12]}" for _ in range(2))
    into = shm.create_shared_memory_region("in", key_in, x.nbytes)
    out = shm.create_shared_memory_region("out", key_out, 64)
    try:
        shm.set_shared_memory_region(into, [x])
        client.register_system_shared_memory("in", key_in, x.nbytes)
        client.register_system_shared_memory("out", key_out, 64)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert status["in"]["key"] == key_in and int(status["out"]["byte_size"]) == 64
        item = triton.InferInput("x", [2, 4], "FP32")
        item.set_shared_memory("in", x.nbytes)
        wanted = triton.InferRequestedOutput("y")
        wanted.set_shared_memory("out", 64)
        result = client.infer("linear", [item], outputs=[wanted])
        [output] = result.get_response().outputs
        assert (output.name, output.datatype, list(output.shape)) == ("y", "FP32", [2, 3])
        y = shm.get_contents_as_numpy(out, np.float32, [2, 3])
        np.testing.assert_allclose(y, linear(server.weights, x), rtol=1e-5)
        with pytest.raises(InferenceServerException, match="'gone'") as raised:
            item.set_shared_memory("gone", x.nbytes)
            client.infer("linear", [item])
        assert raised.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(into)
        shm.destroy_shared_memory_region(out)
    assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}


def test_classification_of_a_non_numeric_output_is_refused(
    client: triton.InferenceServerClient,
) -> None:
    inputs = []
    for datatype in ECHO_TYPES:
        item = triton.InferInput(f"in_{datatype}", [1, 2], datatype)
        dtype = np.object_ if datatype == "BYTES" else triton_to_np_dtype(datatype)
        item.set_data_from_numpy(
            np.array([[b"a", b"b"]] if datatype == "BYTES" else [[1, 0]], dtype)
        )
        inputs.append(item)
    for datatype in ("BYTES", "BOOL"):
        wanted = [triton.InferRequestedOutput(f"out_{datatype}", class_count=1)]
        with pytest.raises(InferenceServerException, match="'classification' ranks") as raised:
            client.infer("echo", inputs, outputs=wanted)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    # An unsigned output ranks its largest value first (negating it would wrap 0 to the top).
    wanted = [triton.InferRequestedOutput("out_UINT8", class_count=1)]
    top = client.infer("echo", inputs, outputs=wanted).as_numpy("out_UINT8")
    assert top is not None and top[0][0].decode().split(":")[:2] == ["1.000000", "0"]


def test_every_call_is_counted(client: triton.InferenceServerClient, server: Served) -> None:
    assert client.is_server_live() and client.is_model_ready("linear")
    client.get_server_metadata()
    client.get_model_repository_index()
    metrics = httpx.get(f"{server.url}/metrics").text
    for method in ("ServerLive", "ModelReady", "ServerMetadata", "RepositoryIndex"):
        assert f'route="grpc:{method}",status="200"' in metrics, method


def _request(request_id: str, value: float) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="linear", id=request_id)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([value] * 4)
    return request


def _raw_stream(address: str) -> Any:
    """ModelStreamInfer taking messages already serialized (or not messages at all)."""
    channel = grpc.insecure_channel(address)
    return channel, channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda message: message,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )


def test_a_bad_message_ends_the_stream_after_the_good_ones_are_answered(server: Served) -> None:
    """A message that is not a ModelInferRequest ends the stream with INVALID_ARGUMENT once
    the requests read before it are answered: it never hangs."""
    channel, call = _raw_stream(server.grpc_url)
    with channel:
        messages = iter([_request("good", 1.0).SerializeToString(), b"\xff\xff\xff"])
        answers = call(messages, timeout=20)
        seen = []
        with pytest.raises(grpc.RpcError) as raised:
            for answer in answers:
                seen.append(answer.infer_response.id)
                assert not answer.error_message
        assert seen == ["good"]
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a request" in raised.value.details()


def test_a_stream_whose_client_stops_reading_holds_back_no_other(tmp_path: Path) -> None:
    """With SLUICEWAY_MAX_REQUESTS=2: one client floods a stream and stops reading after its
    first answer (a 64 KB receive window, no growth); another client's stream is answered
    all the same, and so is a stream after an abandoned one."""
    root, weights = repository(tmp_path / "models")
    port = free_port()
    env = {
        "SLUICEWAY_MODEL_REPOSITORY": str(root),
        "SLUICEWAY_GRPC_PORT": str(port),
        "SLUICEWAY_MAX_REQUESTS": "2",
    }
    with live_server(env):
        address = f"127.0.0.1:{port}"
        slow = grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
        flood = slow.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda message: message,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        unread = flood(iter([_request(f"s{i}", i).SerializeToString() for i in range(3000)]))
        try:
            next(unread)
            time.sleep(2)  # its answers pile up until flow control stops them
            channel, call = _raw_stream(address)
            with channel:
                # Abandoned: the client cancels after the first answer.
                abandoned = call(
                    iter([_request(f"a{i}", i).SerializeToString() for i in range(10)]),
                    timeout=20,
                )
                next(abandoned)
                abandoned.cancel()
                requests = {f"r{i}": float(i) for i in range(40)}
                messages = [
                    _request(key, value).SerializeToString() for key, value in requests.items()
                ]
                got = {
                    answer.infer_response.id: answer for answer in call(iter(messages), timeout=20)
                }
        finally:
            unread.cancel()
            slow.close()
        assert set(got) == set(requests)
        for key, answer in got.items():
            assert not answer.error_message
            y = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32)
            expected = linear(weights, np.full((1, 4), requests[key], dtype=np.float32))
            np.testing.assert_allclose(y, expected.ravel(), rtol=1e-5)


async def test_a_stream_holds_the_running_places_only_while_its_requests_run() -> None:
    """Streams cancelled at any moment (even as a request is read) give back every running
    place: a stream afterwards runs at most SLUICEWAY_MAX_REQUESTS requests at once and gets
    every answer."""
    service = InferenceService(SimpleNamespace(settings=SimpleNamespace(max_requests=3)))
    running, most = 0, 0

    async def answer(request: int, context: object) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.01)
            return request
        finally:
            running -= 1

    service._stream_answer = answer

    async def consume(count: int, cancel_at: int | None) -> list[int]:
        consumer = asyncio.current_task()
        assert consumer is not None

        async def requests() -> AsyncIterator[int]:
            for i in range(count):
                if i == cancel_at:
                    consumer.cancel()  # the client goes away as this request arrives
                yield i
                await asyncio.sleep(0.002)

        return [item async for item in service.ModelStreamInfer(requests(), None)]

    for cancel_at in (0, 1, 2, 5):
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.create_task(consume(10, cancel_at))
    most = 0
    answered = await asyncio.wait_for(consume(30, None), 10)
    assert sorted(answered) == list(range(30))
    assert most == 3


def test_what_is_not_served_says_so(client: triton.InferenceServerClient, server: Served) -> None:
    # A CUDA region is refused as Triton without GPU support refuses it: INVALID_ARGUMENT.
    with pytest.raises(InferenceServerException, match=r"'gpu' cannot be .* CPU") as raised:
        client.register_cuda_shared_memory("gpu", b"aGFuZGxl", 0, 64)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="trace") as raised:
        client.get_trace_settings()
    assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'route="grpc:CudaSharedMemoryRegister",status="400"' in metrics
    assert 'route="grpc:TraceSetting",status="501"' in metrics


def test_cleaning_up_cuda_shared_memory_is_no_error(client: triton.InferenceServerClient) -> None:
    """Triton's clients unregister CUDA regions before they start, on machines without a GPU
    too: with none ever registered here, there is nothing to unregister and none to list."""
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("gpu")
    assert not client.get_cuda_shared_memory_status().regions
    with pytest.raises(InferenceServerException, match="'gpu' is registered") as raised:
        client.get_cuda_shared_memory_status("gpu")
    assert raised.value.status() == "StatusCode.NOT_FOUND"


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    """What ``InferenceService`` asks of a unary call's context."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


async def test_a_unary_call_finding_no_running_place_is_refused_and_counted() -> None:
    metrics = Metrics()
    settings = SimpleNamespace(max_requests=1)
    service = InferenceService(SimpleNamespace(settings=settings, metrics=metrics))
    release = asyncio.Event()

    async def infer(request: object, context: object) -> str:
        await release.wait()
        return "answered"

    service._infer = infer
    first = asyncio.create_task(service.ModelInfer(None, _Context()))
    await asyncio.sleep(0)
    with pytest.raises(_Aborted, match="SLUICEWAY_MAX_REQUESTS") as refused:
        await asyncio.wait_for(service.ModelInfer(None, _Context()), 5)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    release.set()
    assert await first == "answered"
    assert await service.ModelInfer(None, _Context()) == "answered"  # the place came back
    labels = {"route": "grpc:ModelInfer", "method": "POST", "status": "503"}
    assert metrics.registry.get_sample_value("sluiceway_requests_total", labels) == 1


def test_compressed_requests_and_the_limit_after_inflating(
    client: triton.InferenceServerClient, server: Served
) -> None:
    """gzip-compressed messages (tritonclient's compression_algorithm) are inflated by gRPC,
    and the body limit holds for what they inflate to: a small bomb is refused."""
    x = np.random.default_rng(5).normal(size=(2, 4)).astype(np.float32)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("linear", [x_input(x)], compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("y"), linear(server.weights, x), rtol=1e-5)
    zeros = np.zeros((MAX_BODY // 16 + 1, 4), dtype=np.float32)  # inflates past MAX_BODY
    with pytest.raises(InferenceServerException) as raised:
        client.infer("linear", [x_input(zeros)], compression_algorithm="gzip")
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()
