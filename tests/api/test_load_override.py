"""Triton's load parameters: a load's ``config`` (and ``file:`` model files) used as Triton uses
them, driven by tritonclient's own ``load_model(config=..., files=...)`` over HTTP and gRPC
against a real server, and what cannot be used refused with a 400 naming it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("grpc", reason="the grpc extra is not installed (pip install -e '.[grpc]')")
pytest.importorskip(
    "tritonclient.grpc", reason="load configs are Triton's ModelConfig: the grpc extra"
)
pytest.importorskip("tritonclient.http", reason="tritonclient[http] drives these tests")

import grpc
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from sluiceway.app import create_app
from sluiceway.load_parameters import LoadOverride
from tests.conftest import app_client, fast_settings
from tests.fixtures.live_server import live_server
from tests.fixtures.model_repository import LINEAR_CONFIG, linear
from tests.fixtures.onnx_models import linear_model, tiny_classifier
from tests.redis_server import free_port

TOKEN = "load-override-token"
MAX_BODY = 64 * 1024
NAMES = ("tuned", "tuned_grpc", "kept", "kept_grpc", "replaced", "fromfiles")
"""A linear model per test that changes one, so that tests on the shared server stay apart."""


class Served:
    def __init__(self, url: str, grpc_url: str, temp: Path, weights: np.ndarray) -> None:
        self.url = url
        self.grpc_url = grpc_url
        self.temp = temp
        self.weights = weights

    def private_folders(self) -> list[Path]:
        """The folders the server wrote a load's files to (its TMPDIR holds nothing else)."""
        return sorted(self.temp.glob("sluiceway-load-*"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("load-override")
    root, temp = base / "models", base / "tmp"
    temp.mkdir()
    for name in NAMES:
        weights = linear_model(root / name / "1" / "model.onnx", seed=1)
        (root / name / "config.toml").write_text(LINEAR_CONFIG)
    tiny_classifier(root / "colours" / "model.onnx")
    (root / "colours" / "labels.txt").write_text("red\ngreen\nblue\n")
    (root / "colours" / "config.toml").write_text(
        'platform = "onnx"\nlabels = "labels.txt"\n[image]\nsize = 16\nfit = "stretch"\n'
    )
    # A model beside the repository, which no load may reach.
    linear_model(base / "outside" / "evil" / "model.onnx", seed=3)
    (base / "outside" / "evil" / "config.toml").write_text(LINEAR_CONFIG)
    port = free_port()
    env = {
        "SLUICEWAY_MODEL_REPOSITORY": str(root),
        "SLUICEWAY_GRPC_PORT": str(port),
        "SLUICEWAY_MAX_BODY_BYTES": str(MAX_BODY),
        "SLUICEWAY_ADMIN_TOKEN": TOKEN,
        "TMPDIR": str(temp),
    }
    with live_server(env) as url:
        yield Served(url, f"127.0.0.1:{port}", temp, weights)
    # Stopped: the private folders of models loaded from files are gone with the server.
    assert not sorted(temp.glob("sluiceway-load-*"))


@pytest.fixture
def http(server: Served) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def rpc(server: Served) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


HTTP_AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}

LINEAR_JSON = {
    "backend": "onnxruntime",
    "max_batch_size": 8,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
}


def infer(client: Any, module: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``name``'s answer to three rows of ``x``, and the ``x`` sent."""
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    item = module.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    y = client.infer(name, [item]).as_numpy("y")
    assert y is not None
    return y, x


def test_a_config_override_serves_until_a_plain_load_reads_the_folder_again(
    http: triton_http.InferenceServerClient, server: Served
) -> None:
    """As Model Analyzer does: the served config, changed, sent back with a load."""
    config = http.get_model_config("tuned")
    assert config["max_batch_size"] == 16 and config["instance_group"][0]["count"] == 2
    config["max_batch_size"] = 4
    config["instance_group"] = [{"count": 3, "kind": "KIND_CPU"}]
    http.load_model("tuned", headers=HTTP_AUTH, config=json.dumps(config))
    served = http.get_model_config("tuned")
    assert served["max_batch_size"] == 4
    assert served["instance_group"] == [{"count": 3, "kind": "KIND_CPU"}]
    y, x = infer(http, triton_http, "tuned")
    np.testing.assert_allclose(y, linear(server.weights, x), rtol=1e-5)
    # As Triton: the override was that load's; a load without one reads the folder again.
    http.load_model("tuned", headers=HTTP_AUTH)
    again = http.get_model_config("tuned")
    assert again["max_batch_size"] == 16 and again["instance_group"][0]["count"] == 2


def test_a_config_override_over_grpc(
    rpc: triton_grpc.InferenceServerClient, server: Served
) -> None:
    config = {**LINEAR_JSON, "instance_group": [{"count": 4, "kind": "KIND_CPU"}]}
    rpc.load_model("tuned_grpc", headers=GRPC_AUTH, config=json.dumps(config))
    served = rpc.get_model_config("tuned_grpc", as_json=True)["config"]
    assert served["max_batch_size"] == 8
    assert served["instance_group"][0]["count"] == 4
    y, x = infer(rpc, triton_grpc, "tuned_grpc")
    np.testing.assert_allclose(y, linear(server.weights, x), rtol=1e-5)
    rpc.load_model("tuned_grpc", headers=GRPC_AUTH)
    assert rpc.get_model_config("tuned_grpc", as_json=True)["config"]["max_batch_size"] == 16


@pytest.mark.parametrize("over", ["http", "grpc"])
def test_files_and_config_load_a_model_no_folder_holds(
    over: str,
    http: triton_http.InferenceServerClient,
    rpc: triton_grpc.InferenceServerClient,
    server: Served,
    tmp_path: Path,
) -> None:
    client, module, auth = (
        (http, triton_http, HTTP_AUTH) if over == "http" else (rpc, triton_grpc, GRPC_AUTH)
    )
    name = f"given_{over}"
    weights = linear_model(tmp_path / "model.onnx", seed=11)
    files = {"file:3/model.onnx": (tmp_path / "model.onnx").read_bytes()}
    before = server.private_folders()
    client.load_model(name, headers=auth, config=json.dumps(LINEAR_JSON), files=files)
    assert client.is_model_ready(name, "3")
    y, x = infer(client, module, name)
    np.testing.assert_allclose(y, linear(weights, x), rtol=1e-5)
    (written,) = set(server.private_folders()) - set(before)
    assert (written / "3" / "model.onnx").read_bytes() == files["file:3/model.onnx"]
    assert written.stat().st_mode & 0o077 == 0  # this user's alone
    client.unload_model(name, headers=auth)
    assert not written.exists()
    # No folder of that name in the repository: a plain load has nothing to read, and fails
    # saying so in the words every failed load opens with.
    with pytest.raises(InferenceServerException) as raised:
        client.load_model(name, headers=auth)
    assert raised.value.message().startswith(f"failed to load '{name}': no folder")


def test_files_replace_the_folder_and_a_reload_removes_the_last_ones(
    http: triton_http.InferenceServerClient, server: Served, tmp_path: Path
) -> None:
    before = set(server.private_folders())
    files = []
    for seed in (21, 22):
        weights = linear_model(tmp_path / f"{seed}.onnx", seed=seed)
        given = {"file:2/model.onnx": (tmp_path / f"{seed}.onnx").read_bytes()}
        http.load_model("replaced", headers=HTTP_AUTH, config=json.dumps(LINEAR_JSON), files=given)
        assert http.get_model_metadata("replaced")["versions"] == ["2"]
        y, x = infer(http, triton_http, "replaced")
        np.testing.assert_allclose(y, linear(weights, x), rtol=1e-5)
        files.append(set(server.private_folders()) - before)
        assert len(files[-1]) == 1  # the version replaced took its folder with it
    assert files[0] != files[1]
    http.load_model("replaced", headers=HTTP_AUTH)  # the repository's folder again
    assert http.get_model_metadata("replaced")["versions"] == ["1"]
    y, x = infer(http, triton_http, "replaced")
    np.testing.assert_allclose(y, linear(server.weights, x), rtol=1e-5)
    assert set(server.private_folders()) == before


def _refusal(call: Any) -> str:
    with pytest.raises(InferenceServerException) as raised:
        call()
    status = str(raised.value.status())
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (status, raised.value.message())
    return str(raised.value.message())


@pytest.mark.parametrize("over", ["http", "grpc"])
@pytest.mark.parametrize(
    ("config", "files", "message"),
    [
        (None, {"file:1/model.onnx": b"onnx"}, "file parameters need a config parameter too"),
        ('{"max_batch": 8}', None, 'no field named "max_batch"'),
        ('{"max_batch_size": 8', None, "the load's config is not Triton's model configuration"),
        ('{"max_batch_size": "eight"}', None, "max_batch_size"),
        ('{"name": "other"}', None, "names the model 'other', but the model loaded is 'kept"),
        ('{"instance_group": [{"kind": "KIND_GPU"}]}', None, "KIND_GPU: Sluiceway runs models"),
        ('{"backend": "python"}', None, "backend 'python' is not served"),
        ('{"max_batch_size": 5000}', None, "the load's config: max_batch_size"),
        ('{"version_policy": {"specific": {"versions": [7]}}}', None, "none of the versions"),
        (json.dumps(LINEAR_JSON), {"file:1/model.onnx": b"not onnx"}, "kept"),
        (json.dumps(LINEAR_JSON), {"file:../model.onnx": b"x"}, "inside the model's folder"),
        (json.dumps(LINEAR_JSON), {"file:1/../../x.onnx": b"x"}, "without '..'"),
        (json.dumps(LINEAR_JSON), {"file:/tmp/x.onnx": b"x"}, "inside the model's folder"),
        (json.dumps(LINEAR_JSON), {"file:1//model.onnx": b"x"}, "inside the model's folder"),
    ],
)
def test_what_cannot_be_used_is_400_and_the_serving_version_keeps_serving(
    over: str,
    config: str | None,
    files: dict[str, bytes] | None,
    message: str,
    http: triton_http.InferenceServerClient,
    rpc: triton_grpc.InferenceServerClient,
    server: Served,
) -> None:
    client, module, auth = (
        (http, triton_http, HTTP_AUTH) if over == "http" else (rpc, triton_grpc, GRPC_AUTH)
    )
    name = "kept" if over == "http" else "kept_grpc"
    before = server.private_folders()
    said = _refusal(lambda: client.load_model(name, headers=auth, config=config, files=files))
    assert message in said, said
    if (config is not None and files is None) or "not onnx" in repr(files):
        assert "version 1 still serves" in said, said
    assert client.is_model_ready(name, "1")
    y, x = infer(client, module, name)
    np.testing.assert_allclose(y, linear(server.weights, x), rtol=1e-5)
    assert http.get_model_config(name)["max_batch_size"] == 16
    assert server.private_folders() == before  # nothing written, or removed again
    assert not (server.temp / "x.onnx").exists()  # where file:1/../../x.onnx would land


def test_unknown_parameters_are_refused_naming_them(server: Served) -> None:
    """As Triton: a parameter it does not define is an error, never ignored in silence."""
    url = f"{server.url}/v2/repository/models/kept/load"
    answer = httpx.post(url, headers=HTTP_AUTH, json={"parameters": {"unload_dependents": True}})
    assert answer.status_code == 400
    assert "unrecognized load parameter 'unload_dependents'" in answer.json()["error"]
    for body, message in [
        (b"{", "the body is not JSON"),
        (b"[]", "a JSON object"),
        (b'{"parameters": {"config": 7}}', "'config' must be a string"),
        (b'{"parameters": {"config": null}}', "'config' must be a string"),
        (b'{"parameters": []}', '"parameters" must be a JSON object'),
        (b'{"parameters": {"config": "[]"}}', "must be a JSON object"),
        (b'{"parameters": {"config": "{}", "file:1/model.onnx": "%%%"}}', "not base64"),
    ]:
        answer = httpx.post(url, headers=HTTP_AUTH, content=body)
        assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for key, value in [
            ("priority", service_pb2.ModelRepositoryParameter(int64_param=1)),
            ("config", service_pb2.ModelRepositoryParameter(bytes_param=b"{}")),
            ("file:1/model.onnx", service_pb2.ModelRepositoryParameter(string_param="x")),
        ]:
            request = service_pb2.RepositoryModelLoadRequest(
                model_name="kept", parameters={key: value}
            )
            with pytest.raises(grpc.RpcError) as raised:
                stub.RepositoryModelLoad(request, metadata=tuple(GRPC_AUTH.items()))
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert repr(key) in (raised.value.details() or ""), raised.value.details()


def test_files_over_the_body_limit_are_refused_before_anything_is_written(
    http: triton_http.InferenceServerClient,
    rpc: triton_grpc.InferenceServerClient,
    server: Served,
) -> None:
    files = {"file:1/model.onnx": os.urandom(MAX_BODY)}
    config = json.dumps(LINEAR_JSON)
    before = server.private_folders()
    with pytest.raises(InferenceServerException) as over_http:
        http.load_model("kept", headers=HTTP_AUTH, config=config, files=files)
    assert str(over_http.value.status()) == "413"
    with pytest.raises(InferenceServerException) as over_grpc:
        rpc.load_model("kept_grpc", headers=GRPC_AUTH, config=config, files=files)
    assert str(over_grpc.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
    assert server.private_folders() == before
    assert http.is_model_ready("kept") and rpc.is_model_ready("kept_grpc")


def test_parameters_need_the_admin_token_like_any_load(server: Served) -> None:
    body = {"parameters": {"config": json.dumps(LINEAR_JSON)}}
    answer = httpx.post(f"{server.url}/v2/repository/models/kept/load", json=body)
    assert answer.status_code == 401


async def test_shutdown_removes_the_private_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, temp = tmp_path / "models", tmp_path / "tmp"
    temp.mkdir()
    linear_model(root / "linear" / "model.onnx")
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    model = tmp_path / "given.onnx"
    linear_model(model, seed=3)
    body = {
        "parameters": {
            "config": json.dumps(LINEAR_JSON),
            "file:1/model.onnx": base64.b64encode(model.read_bytes()).decode(),
        }
    }
    settings = fast_settings(model_repository=str(root), admin_token=TOKEN)
    async with app_client(create_app(settings)) as client:
        answer = await client.post("/v2/repository/models/given/load", headers=HTTP_AUTH, json=body)
        assert answer.status_code == 200 and answer.json()["state"] == "READY", answer.text
        assert len(list(temp.iterdir())) == 1
    assert not list(temp.iterdir())


async def test_without_the_grpc_extra_a_config_is_refused_saying_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    linear_model(root / "linear" / "model.onnx")
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if not installed
    settings = fast_settings(model_repository=str(root), admin_token=TOKEN)
    async with app_client(create_app(settings)) as client:
        body = {"parameters": {"config": json.dumps(LINEAR_JSON)}}
        url = "/v2/repository/models/linear/load"
        answer = await client.post(url, headers=HTTP_AUTH, json=body)
        assert answer.status_code == 400
        assert "sluiceway[grpc]" in answer.json()["error"], answer.text
        assert "config.toml" not in answer.json()["error"]
        assert (await client.get("/v2/models/linear/ready")).status_code == 200


@pytest.mark.parametrize("plain_last", [True, False])
async def test_a_load_with_parameters_neither_joins_nor_is_joined_by_a_plain_one(
    tmp_path: Path, plain_last: bool
) -> None:
    """Loads of one name run one at a time; a plain load answers with a running plain load's
    result, but a load with parameters is another load: it runs after, and so does a plain
    load arriving while it runs. The last one asked is what serves."""
    root = tmp_path / "models"
    linear_model(root / "linear" / "1" / "model.onnx", seed=1)
    (root / "linear" / "config.toml").write_text(LINEAR_CONFIG)
    app = create_app(fast_settings(model_repository=str(root), admin_token=TOKEN))
    override = LoadOverride(json.dumps(LINEAR_JSON))
    async with app_client(app) as client:
        registry = app.state.services.registry
        first = registry.load("linear") if plain_last else registry.load("linear", override)
        running = asyncio.create_task(first)
        await asyncio.sleep(0)  # the first load has started
        if plain_last:
            await registry.load("linear", override)
            wanted = 8
        else:
            await registry.load("linear")
            wanted = 16
        await running
        config = (await client.get("/v2/models/linear/config")).json()
        assert config["max_batch_size"] == wanted


async def test_a_config_for_a_model_without_a_folder_or_files_is_404(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    settings = fast_settings(model_repository=str(root), admin_token=TOKEN)
    async with app_client(create_app(settings)) as client:
        body = {"parameters": {"config": json.dumps(LINEAR_JSON)}}
        url = "/v2/repository/models/nosuch/load"
        answer = await client.post(url, headers=HTTP_AUTH, json=body)
        assert answer.status_code == 404
        assert "give its files with the load" in answer.json()["error"]


def test_a_name_that_could_reach_outside_the_repository_is_refused(server: Served) -> None:
    """gRPC names may hold '/': a load of '../outside/evil' must not read that folder."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name in ("../outside/evil", "", "a b"):
            for call, request in (
                (stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name=name)),
                (
                    stub.RepositoryModelUnload,
                    service_pb2.RepositoryModelUnloadRequest(model_name=name),
                ),
            ):
                with pytest.raises(grpc.RpcError) as raised:
                    call(request, metadata=tuple(GRPC_AUTH.items()))
                assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
                assert "is not a model name" in (raised.value.details() or "")
        index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest())
    names = {model.name for model in index.models}
    assert not names & {"../outside/evil", "", "a b", "evil"}, names


def test_an_image_classifiers_config_cannot_be_overridden(
    http: triton_http.InferenceServerClient,
) -> None:
    """Its [image] table has no Triton form: an override would serve it as a tensor model."""
    config = json.dumps({"backend": "onnxruntime", "instance_group": [{"count": 3}]})
    said = _refusal(lambda: http.load_model("colours", headers=HTTP_AUTH, config=config))
    assert "image classifier" in said and "version 1 still serves" in said, said
    assert http.get_model_config("colours")["instance_group"][0]["count"] == 1


def test_labels_that_are_not_text_and_too_many_files_are_400(
    http: triton_http.InferenceServerClient, server: Served
) -> None:
    config = json.dumps({**LINEAR_JSON, "output": [{**LINEAR_JSON["output"][0],
                                                     "label_filename": "labels.txt"}]})  # fmt: skip
    model = (server.temp.parent / "models" / "kept" / "1" / "model.onnx").read_bytes()
    files = {"file:1/model.onnx": model, "file:labels.txt": b"\xff\xfe not text"}
    said = _refusal(lambda: http.load_model("kept", headers=HTTP_AUTH, config=config, files=files))
    assert "labels file 'labels.txt' is not UTF-8 text" in said, said
    many = {f"file:1/f{i}": b"" for i in range(1001)}
    said = _refusal(
        lambda: http.load_model(
            "kept", headers=HTTP_AUTH, config=json.dumps(LINEAR_JSON), files=many
        )
    )
    assert "at most 1000 files" in said, said
    assert http.is_model_ready("kept", "1")


def test_a_failed_override_keeps_the_serving_versions_own_files(
    http: triton_http.InferenceServerClient, server: Served
) -> None:
    """A model loaded from files, then a load that fails: the version serving keeps its folder
    (the model cache reloads an evicted model from it)."""
    weights = linear_model(server.temp.parent / "given" / "model.onnx", seed=8)
    given = {"file:1/model.onnx": (server.temp.parent / "given" / "model.onnx").read_bytes()}
    before = set(server.private_folders())
    http.load_model("fromfiles", headers=HTTP_AUTH, config=json.dumps(LINEAR_JSON), files=given)
    (serving,) = set(server.private_folders()) - before
    bad = json.dumps({**LINEAR_JSON, "max_batch_size": -1})
    said = _refusal(lambda: http.load_model("fromfiles", headers=HTTP_AUTH, config=bad))
    assert "still serves" in said, said
    broken = {"file:1/model.onnx": b"not onnx"}
    said = _refusal(
        lambda: http.load_model(
            "fromfiles", headers=HTTP_AUTH, config=json.dumps(LINEAR_JSON), files=broken
        )
    )
    assert "still serves" in said, said
    assert (serving / "1" / "model.onnx").is_file()
    y, x = infer(http, triton_http, "fromfiles")
    np.testing.assert_allclose(y, linear(weights, x), rtol=1e-5)
