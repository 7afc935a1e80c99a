"""A Triton model repository as it is: ``config.pbtxt`` read as Triton reads it, a folder
without a config completed from its ONNX file, and what cannot be served refused with why."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from sluiceway.app import create_app
from sluiceway.models.tensors import TensorSpec
from sluiceway.repository import BrokenModel, read_model
from tests.conftest import app_client, fast_settings
from tests.fixtures.model_repository import linear
from tests.fixtures.onnx_models import linear_model

pbtxt = pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None
    or importlib.util.find_spec("tritonclient.grpc") is None,
    reason="config.pbtxt is read with the grpc extra (pip install 'sluiceway[grpc]')",
)

TRITON_CONFIG = """
name: "linear"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x", data_type: TYPE_FP32, format: FORMAT_NONE, dims: [ 4 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ], label_filename: "labels.txt" } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2500
  default_queue_policy { max_queue_size: 100 }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
version_policy: { specific: { versions: [ 1, 2 ] } }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
optimization { graph: { level: 1 } }
model_warmup [ { name: "zeros", batch_size: 1, inputs { key: "x" value: {
  data_type: TYPE_FP32, dims: [ 4 ], zero_data: true } } } ]
"""


def triton_folder(root: Path, config: str | None, name: str = "linear") -> Path:
    """A model folder as Triton keeps it: versions 1 to 3, labels, and ``config`` (if any)."""
    folder = root / name
    for version in (1, 2, 3):
        linear_model(folder / str(version) / "model.onnx", seed=version)
    (folder / "labels.txt").write_text("a\nb\nc\n")
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    return folder


@pbtxt
def test_a_triton_config_is_served_as_it_says(tmp_path: Path) -> None:
    record = read_model(triton_folder(tmp_path, TRITON_CONFIG))
    assert not isinstance(record, BrokenModel), record
    assert record.kind == "onnx" and record.version == "2"  # the highest version named
    assert record.batched and record.policy.max_batch == 16
    assert record.policy.slots == 2 and record.policy.max_queue == 100
    assert record.policy.max_delay_s == 0.0025
    assert record.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert record.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    assert record.labels == ("a", "b", "c") and record.threads == 2
    assert record.warmup is not None
    np.testing.assert_array_equal(record.warmup["x"], np.zeros((1, 4), np.float32))


def test_a_folder_without_a_config_is_completed_from_its_file(tmp_path: Path) -> None:
    # As Triton's auto-complete: the tensors from the file, and a batch of 4 when it batches.
    record = read_model(triton_folder(tmp_path, None))
    assert not isinstance(record, BrokenModel), record
    assert record.version == "3" and record.policy.max_batch == 4 and record.batched
    assert record.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    fixed = tmp_path / "fixed"
    linear_model(fixed / "1" / "model.onnx", batch=1)
    (fixed / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    unbatched = read_model(fixed)
    assert not isinstance(unbatched, BrokenModel), unbatched
    assert not unbatched.batched and unbatched.inputs == (TensorSpec("x", "FP32", (1, 4)),)


@pbtxt
def test_config_toml_wins_and_the_model_file_may_be_named(tmp_path: Path) -> None:
    folder = triton_folder(tmp_path, 'platform: "tensorflow_savedmodel"\n')
    (folder / "config.toml").write_text('platform = "onnx"\nmax_batch_size = 2\n')
    record = read_model(folder)
    assert not isinstance(record, BrokenModel) and record.policy.max_batch == 2
    named = tmp_path / "named"
    linear_model(named / "1" / "weights.onnx")
    (named / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\ndefault_model_filename: "weights.onnx"\n'
    )
    found = read_model(named)
    assert not isinstance(found, BrokenModel), found
    assert Path(found.source.location).name == "weights.onnx"


@pbtxt
@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ('name: "other"', "names the model 'other', but its folder is 'linear'"),
        ('platform: "tensorflow_savedmodel"', "platform 'tensorflow_savedmodel' is not served"),
        ('backend: "python"', "backend 'python' is not served"),
        ('platform: "pytorch_libtorch"\nbackend: "onnxruntime"', "is not ONNX Runtime's"),
        ("sequence_batching { }", "sequence batching"),
        ("ensemble_scheduling { }", "ensembles"),
        ("max_batch_size: 8\ninput [ { name: \"x\" data_type: TYPE_FP32 dims: [ 2, 2 ] "
         "reshape: { shape: [ 4 ] } } ]", "input 'x' has a reshape"),
        ('input [ { name: "x" dims: [ 4 ] } ]', "input 'x' has no data_type"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] optional: true } ]', "optional"),
        ("instance_group [ { count: 1 kind: KIND_GPU } ]", "KIND_GPU: Sluiceway runs models on"),
        ("max_batch_sise: 8", "not Triton's model configuration: 1:1"),
        ('max_batch_size: "eight"', "not Triton's model configuration"),
        ('output [ { name: "y" data_type: TYPE_FP32 dims: [3] label_filename: "a.txt" }, '
         '{ name: "z" data_type: TYPE_FP32 dims: [3] label_filename: "b.txt" } ]',
         "more than one label_filename"),
        ('parameters { key: "intra_op_thread_count" value: { string_value: "many" } }',
         "intra_op_thread_count is 'many'"),
        ('default_model_filename: "model.plan"', "no model.plan in"),
        ("version_policy: { specific: { versions: [ 7 ] } }", "version 7 has no folder"),
        ("max_batch_size: 5000", "config.pbtxt: max_batch_size"),
    ],
)  # fmt: skip
def test_what_cannot_be_served_is_refused_with_why(
    tmp_path: Path, config: str, reason: str
) -> None:
    record = read_model(triton_folder(tmp_path, config))
    assert isinstance(record, BrokenModel) and reason in record.reason, record


def test_without_the_grpc_extra_a_pbtxt_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if not installed
    record = read_model(triton_folder(tmp_path, TRITON_CONFIG))
    assert isinstance(record, BrokenModel) and "sluiceway[grpc]" in record.reason


@pbtxt
async def test_a_triton_repository_answers_the_protocol_as_configured(tmp_path: Path) -> None:
    root = tmp_path / "models"
    triton_folder(root, TRITON_CONFIG)
    weights = linear_model(root / "auto" / "model.onnx", seed=9)
    async with app_client(create_app(fast_settings(model_repository=str(root)))) as http:
        config = (await http.get("/v2/models/linear/config")).json()
        assert config["max_batch_size"] == 16
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2500
        assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
        assert (await http.get("/v2/models/linear")).json()["versions"] == ["2"]
        x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
        body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.tolist()}]}
        answer = await http.post("/v2/models/auto/infer", json=body)
        assert answer.status_code == 200, answer.text
        got = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(3, 3)
        np.testing.assert_allclose(got, linear(weights, x), rtol=1e-5)
        assert (await http.get("/v2/models/auto/config")).json()["max_batch_size"] == 4
        missing = await http.get("/v2/models/linear/versions/3")
        assert missing.status_code == 404 and "serves version 2" in missing.json()["error"]
        assert isinstance(http, httpx.AsyncClient)
