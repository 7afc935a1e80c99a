"""An input's layout (Triton's ``format``) in a model's config, and the config enums a text
config may give as any number: what is served, and what is refused saying why (never raised
out of a repository scan, a start-up or a load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")

from sluiceway.app import create_app
from sluiceway.repository import BrokenModel, read_model, scan
from tests.conftest import app_client, fast_settings
from tests.fixtures.onnx_models import linear_model, tiny_classifier

TOKEN = "review-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PBTXT_BAD_ENUM = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "image", data_type: TYPE_FP32, format: 7, dims: [ 3, 8, 8 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""


def _classifier_folder(root: Path, name: str, config_file: str, config: str) -> Path:
    folder = root / name
    tiny_classifier(folder / "1" / "model.onnx", size=8)
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    (folder / config_file).write_text(config)
    return folder


def test_pbtxt_format_number_unknown_is_a_broken_model_not_an_exception(tmp_path: Path) -> None:
    """proto3 enums are open: ``format: 7`` parses; the folder must come back broken, saying
    why, and the repository scan must not raise."""
    _classifier_folder(tmp_path, "odd", "config.pbtxt", PBTXT_BAD_ENUM)
    found = read_model(tmp_path / "odd")  # raises ValueError on 6a0de42
    assert isinstance(found, BrokenModel) and "format" in found.reason


def test_scan_survives_a_bad_format_number(tmp_path: Path) -> None:
    _classifier_folder(tmp_path, "odd", "config.pbtxt", PBTXT_BAD_ENUM)
    _classifier_folder(tmp_path, "fine", "config.pbtxt", PBTXT_BAD_ENUM.replace("format: 7, ", ""))
    names = {entry.name for entry in scan(tmp_path)}
    assert names == {"odd", "fine"}


async def test_a_load_config_with_an_unknown_format_number_is_a_400(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _classifier_folder(root, "img", "config.pbtxt", PBTXT_BAD_ENUM.replace("format: 7, ", ""))
    app = create_app(fast_settings(model_repository=str(root), admin_token=TOKEN))
    async with app_client(app) as http:
        config = {
            "backend": "onnxruntime",
            "max_batch_size": 4,
            "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, 8, 8], "format": 7}],
            "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [3]}],
        }
        body = {"parameters": {"config": json.dumps(config)}}
        answer = await http.post("/v2/repository/models/img/load", json=body, headers=AUTH)
        assert answer.status_code == 400, (answer.status_code, answer.text)


@pytest.mark.parametrize(
    ("file_name", "config"),
    [
        (
            "config.toml",
            'platform = "onnx"\nmax_batch_size = 4\n'
            '[[inputs]]\nname = "x"\ndatatype = "FP32"\ndims = [4]\nformat = "NCHW"\n'
            '[[outputs]]\nname = "y"\ndatatype = "FP32"\ndims = [3]\n',
        ),
        (
            "config.pbtxt",
            'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
            'input [ { name: "x", data_type: TYPE_FP32, format: FORMAT_NHWC, dims: [ 4 ] } ]\n'
            'output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]\n',
        ),
    ],
)
def test_format_on_a_tensor_of_other_than_three_dims_is_refused(
    tmp_path: Path, file_name: str, config: str
) -> None:
    """Triton refuses it at load ("model input NHWC/NCHW require 3 dims")."""
    folder = tmp_path / "flat"
    linear_model(folder / "1" / "model.onnx")
    (folder / file_name).write_text(config)
    found = read_model(folder)
    assert isinstance(found, BrokenModel), "a 1-D tensor declared with a layout is served"


def test_a_wrong_toml_format_names_the_key(tmp_path: Path) -> None:
    folder = _classifier_folder(
        tmp_path,
        "lower",
        "config.toml",
        'platform = "onnx"\nmax_batch_size = 4\n[[inputs]]\nname = "image"\ndatatype = "FP32"\n'
        'dims = [3, 8, 8]\nformat = "nchw"\n[[outputs]]\nname = "logits"\ndatatype = "FP32"\n'
        "dims = [3]\n",
    )
    found = read_model(folder)
    assert isinstance(found, BrokenModel)
    assert "format" in found.reason


def test_classifier_input_format_and_layout_disagree(tmp_path: Path) -> None:
    """An image classifier whose [[inputs]] says NHWC and [image] layout NCHW is refused, not
    served with one of the two silently ignored."""
    folder = _classifier_folder(
        tmp_path,
        "both",
        "config.toml",
        'platform = "onnx"\nlabels = "labels.txt"\n'
        '[[inputs]]\nname = "image"\ndatatype = "FP32"\ndims = [3, 8, 8]\nformat = "NHWC"\n'
        "[image]\nsize = 8\n",
    )
    found = read_model(folder)
    assert isinstance(found, BrokenModel), f"served: inputs {getattr(found, 'inputs', None)}"


async def test_model_analyzer_round_trip_keeps_format(tmp_path: Path) -> None:
    """The config read back (format included) and sent with a load is served the same."""
    root = tmp_path / "models"
    _classifier_folder(
        root,
        "img",
        "config.pbtxt",
        PBTXT_BAD_ENUM.replace("format: 7", "format: FORMAT_NCHW"),
    )
    app = create_app(fast_settings(model_repository=str(root), admin_token=TOKEN))
    async with app_client(app) as http:
        config = (await http.get("/v2/models/img/config")).json()
        assert config["input"][0]["format"] == "FORMAT_NCHW"
        config["max_batch_size"] = 2
        body = {"parameters": {"config": json.dumps(config)}}
        answer = await http.post("/v2/repository/models/img/load", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        again = (await http.get("/v2/models/img/config")).json()
        assert again["max_batch_size"] == 2 and again["input"][0]["format"] == "FORMAT_NCHW"


async def test_cuda_and_trace_routes(tmp_path: Path) -> None:
    app = create_app(fast_settings())
    async with app_client(app) as http:
        for path in ("/v2/cudasharedmemory/unregister", "/v2/cudasharedmemory/region/a/unregister"):
            answer = await http.post(path)
            assert answer.status_code == 200
        answer = await http.get("/v2/cudasharedmemory/status")
        assert answer.json() == []
        answer = await http.get("/v2/cudasharedmemory/region/a/status")
        assert answer.status_code == 404
        answer = await http.post("/v2/cudasharedmemory/region/a/register", content=b"{}")
        assert answer.status_code == 400
        for path in ("/v2/trace/setting", "/v2/models/nope/trace/setting"):
            for method in ("GET", "POST"):
                answer = await http.request(method, path, content=b"{}")
                assert answer.status_code == 501


async def test_start_up_survives_one_folder_with_a_bad_format_number(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _classifier_folder(root, "odd", "config.pbtxt", PBTXT_BAD_ENUM)
    _classifier_folder(root, "fine", "config.pbtxt", PBTXT_BAD_ENUM.replace("format: 7, ", ""))
    async with app_client(create_app(fast_settings(model_repository=str(root)))) as http:
        assert (await http.get("/v2/models/fine/ready")).status_code == 200
