"""A Triton model repository as it is: ``config.pbtxt`` read as Triton reads it, a folder
without a config completed from its ONNX file, and what cannot be served refused with why."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from sluiceway.app import create_app
from sluiceway.models.tensors import TensorSpec
from sluiceway.repository import BrokenModel, read_model, scan
from tests.conftest import app_client, fast_settings
from tests.fixtures.model_repository import linear
from tests.fixtures.onnx_models import echo_model, linear_model


def _triton_messages() -> bool:
    """Whether Triton's ModelConfig message can be imported (the grpc extra)."""
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except (ImportError, RuntimeError):  # tritonclient without grpcio raises the latter
        return False
    return True


pbtxt = pytest.mark.skipif(
    not _triton_messages(),
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
    # As Triton's auto-complete: the tensors from the file, a batch of 4 when it batches, and
    # Triton's two instances of an ONNX Runtime model on the CPU.
    record = read_model(triton_folder(tmp_path, None))
    assert not isinstance(record, BrokenModel), record
    assert record.version == "3" and record.policy.max_batch == 4 and record.batched
    assert record.policy.slots == 2
    assert record.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    empty = tmp_path / "empty"
    (empty / "1").mkdir(parents=True)
    refused = read_model(empty)
    assert isinstance(refused, BrokenModel)
    assert "no config.toml or config.pbtxt, and no model.onnx" in refused.reason


@pbtxt
def test_auto_complete_batches_unless_every_tensor_is_given(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    linear_model(fixed / "1" / "model.onnx", batch=1)
    (fixed / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    unbatched = read_model(fixed)
    assert not isinstance(unbatched, BrokenModel), unbatched
    assert not unbatched.batched and unbatched.inputs == (TensorSpec("x", "FP32", (1, 4)),)
    # Only the input given, no batch size: Triton still completes a batch of 4, and the
    # declared dims gain the batch dimension.
    partial = read_model(
        triton_folder(tmp_path, 'input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]')
    )
    assert not isinstance(partial, BrokenModel), partial
    assert partial.policy.max_batch == 4
    assert partial.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert partial.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    # Every tensor given and no batch size: unbatched, the dims as written.
    whole = read_model(
        triton_folder(
            tmp_path,
            'input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 4 ] } ]\n'
            'output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 3 ] } ]',
            name="whole",
        )
    )
    assert not isinstance(whole, BrokenModel), whole
    assert not whole.batched and whole.inputs == (TensorSpec("x", "FP32", (-1, 4)),)


@pbtxt
def test_instances_default_as_tritons_for_onnx_runtime_on_the_cpu(tmp_path: Path) -> None:
    cases = {
        "none": ("", 2),
        "uncounted": ("instance_group [ { kind: KIND_CPU } ]", 2),
        "counted": ("instance_group [ { count: 3, kind: KIND_CPU } ]", 3),
        # KIND_AUTO is the CPU on a machine without a GPU, whatever gpus it lists.
        "mixed": ("instance_group [ { count: 1 }, { kind: KIND_AUTO, gpus: [ 0 ] } ]", 3),
    }
    for name, (config, slots) in cases.items():
        record = read_model(
            triton_folder(tmp_path, f'platform: "onnxruntime_onnx"\n{config}', name)
        )
        assert not isinstance(record, BrokenModel), (name, record)
        assert record.policy.slots == slots, name


@pbtxt
def test_tritons_types_queue_and_threads_as_sluiceways(tmp_path: Path) -> None:
    from sluiceway.triton_config import read_pbtxt

    keys = read_pbtxt(
        'input [ { name: "s", data_type: TYPE_STRING, dims: [ 1 ] },'
        ' { name: "h", data_type: TYPE_FP16, dims: [ 2 ] } ]',
        "m",
    ).keys
    assert [t["datatype"] for t in keys["inputs"]] == ["BYTES", "FP16"]
    unbounded = read_model(
        triton_folder(
            tmp_path,
            "dynamic_batching { default_queue_policy { max_queue_size: 0 } }\n"
            'parameters { key: "intra_op_thread_count" value: { string_value: "0" } }',
        )
    )
    assert not isinstance(unbounded, BrokenModel), unbounded
    # Triton's unbounded queue keeps Sluiceway's bound; 0 threads is ONNX Runtime's choice.
    assert unbounded.policy.max_queue == 1024 and unbounded.threads == 1


@pbtxt
def test_several_versions_asked_serve_the_highest_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = read_model(
        triton_folder(tmp_path, "version_policy: { specific: { versions: [ 1, 2, 7 ] } }")
    )
    assert not isinstance(record, BrokenModel) and record.version == "2"
    assert "asks Triton to serve versions [1, 2, 7]" in caplog.text
    latest = read_model(
        triton_folder(tmp_path, "version_policy: { latest: { num_versions: 2 } }", "latest")
    )
    assert not isinstance(latest, BrokenModel) and latest.version == "3"
    assert "the latest 2 versions" in caplog.text


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        # The batch dimension written into dims as well.
        ('max_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 4 ] } ]',
         "input 'x' has dims [-1, 4] in the config, [4] in the file after its batch dimension"),
        ('input [ { name: "x", data_type: TYPE_FP32, dims: [ 5 ] } ]', "dims [5] in the config"),
        ('input [ { name: "z", data_type: TYPE_FP32, dims: [ 4 ] } ]',
         "the config declares input 'z'; the file's inputs are ['x']"),
        ('output [ { name: "y", data_type: TYPE_FP32, dims: [ 3, 1 ] } ]', "output 'y' has dims"),
    ],
)  # fmt: skip
@pbtxt
def test_tensors_that_do_not_fit_the_file_are_refused(
    tmp_path: Path, config: str, reason: str
) -> None:
    record = read_model(triton_folder(tmp_path, config))
    assert isinstance(record, BrokenModel) and reason in record.reason, record


@pbtxt
def test_a_fixed_batch_file_or_a_partial_declaration_is_refused(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    linear_model(fixed / "1" / "model.onnx", batch=1)
    (fixed / "config.pbtxt").write_text(
        'max_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]'
    )
    refused = read_model(fixed)
    assert isinstance(refused, BrokenModel)
    assert "input 'x' of the file has shape [1, 4], no variable first" in refused.reason
    echo = tmp_path / "echo"
    echo_model(echo / "model.onnx")
    (echo / "config.pbtxt").write_text(
        'max_batch_size: 4\ninput [ { name: "in_FP32", data_type: TYPE_FP32, dims: [ 2 ] } ]'
    )
    partial = read_model(echo)
    assert isinstance(partial, BrokenModel)
    assert "leaves out the file's inputs ['in_BOOL'" in partial.reason


def test_a_config_that_is_not_utf8_is_refused_and_the_rest_served(tmp_path: Path) -> None:
    triton_folder(tmp_path, None, name="good")
    bad = triton_folder(tmp_path, None, name="latin")
    (bad / "config.pbtxt").write_bytes("# modèle\nmax_batch_size: 4\n".encode("latin-1"))
    entries = {entry.name: entry for entry in scan(tmp_path)}
    assert isinstance(entries["latin"], BrokenModel)
    assert "config.pbtxt is not UTF-8 text (byte 5)" in entries["latin"].reason
    assert not isinstance(entries["good"], BrokenModel)


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
        ('platform: "pytorch_libtorch"\nbackend: "onnxruntime"', "platform 'pytorch_libtorch'"),
        ('platform: "onnxruntime_onnx"\nbackend: "pytorch"', "backend 'pytorch' is not served"),
        ("sequence_batching { }", "sequence batching"),
        ("ensemble_scheduling { }", "ensembles"),
        ('max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] '
         'reshape: { shape: [ 5 ] } } ]', "'x' has dims [2, 2] and a reshape to [5]"),
        ('max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] '
         'reshape: { shape: [ 4, 1 ] } } ]', "a reshape to [4, 1] in the config, [4]"),
        ('max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] '
         'reshape: { shape: [ -1 ] } } ]', "a reshape may leave one dimension variable"),
        ('input [ { name: "x" dims: [ 4 ] } ]', "input 'x' has no data_type"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] optional: true } ]', "optional"),
        ("instance_group [ { count: 1 kind: KIND_GPU } ]", "KIND_GPU: Sluiceway runs models on"),
        ("instance_group [ { kind: KIND_MODEL } ]", "KIND_MODEL: Sluiceway runs models on"),
        ('input [ { name: "x" data_type: TYPE_INT64 dims: [ 1 ] is_shape_tensor: true } ]',
         "input 'x' is a shape tensor"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] allow_ragged_batch: true } ]',
         "allows a ragged batch"),
        ('batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 } ]',
         "batch_input or batch_output"),
        ("model_transaction_policy { decoupled: true }", "decoupled model"),
        ("dynamic_batching { max_queue_delay_microseconds: 20000000 }",
         "dynamic_batching.max_queue_delay_microseconds: Input should be less than or equal"),
        ("max_batch_sise: 8", "not Triton's model configuration: 1:1"),
        ('max_batch_size: "eight"', "not Triton's model configuration"),
        ('output [ { name: "y" data_type: TYPE_FP32 dims: [3] label_filename: "a.txt" }, '
         '{ name: "z" data_type: TYPE_FP32 dims: [3] label_filename: "b.txt" } ]',
         "more than one label_filename"),
        ('parameters { key: "intra_op_thread_count" value: { string_value: "many" } }',
         "intra_op_thread_count is 'many'"),
        ('default_model_filename: "model.plan"', "no model.plan in"),
        ("version_policy: { specific: { versions: [ 7 ] } }", "none of the versions its config"),
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


@pbtxt
async def test_a_reshape_serves_the_config_dims_and_feeds_the_files_shape(tmp_path: Path) -> None:
    """As Triton's quickstart densenet_onnx: the file takes [1, 4] and gives [1, 3]; requests
    send [4] and get [3]. And a batched model whose rows are [2, 2] to clients, [4] to the file."""
    root = tmp_path / "models"
    flat = root / "flat"
    weights = linear_model(flat / "1" / "model.onnx", batch=1, seed=5)
    (flat / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ], reshape: { shape: [ 1, 4 ] } } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ], reshape: { shape: [ 1, 3 ] },'
        ' label_filename: "labels.txt" } ]'
    )
    (flat / "labels.txt").write_text("a\nb\nc\n")
    squares = root / "squares"
    batched_weights = linear_model(squares / "1" / "model.onnx", seed=6)
    (squares / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 2, 2 ], reshape: { shape: [ 4 ] } } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]'
    )
    async with app_client(create_app(fast_settings(model_repository=str(root)))) as http:
        metadata = (await http.get("/v2/models/flat")).json()
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [4]}]
        config = (await http.get("/v2/models/flat/config")).json()
        assert config["input"][0]["reshape"] == {"shape": [1, 4]}
        x = np.random.default_rng(7).normal(size=4).astype(np.float32)
        body = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": x.tolist()}]}
        answer = await http.post("/v2/models/flat/infer", json=body)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert output["shape"] == [3]
        np.testing.assert_allclose(output["data"], linear(weights, x[None])[0], rtol=1e-5)
        # As Triton's quickstart client asks it (-c 2): the whole 1-D output ranked.
        ranked = {**body, "outputs": [{"name": "y", "parameters": {"classification": 2}}]}
        answer = await http.post("/v2/models/flat/infer", json=ranked)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        best = np.argsort(-linear(weights, x[None])[0])[:2]
        assert output["shape"] == [2]
        assert [int(item.split(":")[1]) for item in output["data"]] == best.tolist()
        assert output["data"][0].endswith(":" + "abc"[best[0]])
        rows = np.random.default_rng(8).normal(size=(3, 2, 2)).astype(np.float32)
        body = {"inputs": [{"name": "x", "shape": [3, 2, 2], "datatype": "FP32",
                            "data": rows.ravel().tolist()}]}  # fmt: skip
        answer = await http.post("/v2/models/squares/infer", json=body)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert output["shape"] == [3, 3]
        expected = linear(batched_weights, rows.reshape(3, 4))
        np.testing.assert_allclose(np.reshape(output["data"], (3, 3)), expected, rtol=1e-5)


async def test_an_onnx_model_with_external_data_in_tritons_folder_layout(tmp_path: Path) -> None:
    """Triton keeps a model over protobuf's 2 GB as a folder: ``1/model.onnx/model.onnx`` beside
    its weight files. Served from there (no config: completed from the file), and its memory
    counted with the weights."""
    import onnx

    from sluiceway.models.onnx_model import model_file_bytes

    root = tmp_path / "models"
    plain = tmp_path / "plain.onnx"
    weights = linear_model(plain, seed=11)
    folder = root / "big" / "1" / "model.onnx"
    folder.mkdir(parents=True)
    onnx.save_model(
        onnx.load(str(plain)),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (folder / "weights.bin").stat().st_size >= weights.nbytes
    record = read_model(root / "big")
    assert not isinstance(record, BrokenModel), record
    assert Path(record.source.location) == folder / "model.onnx"
    assert model_file_bytes(folder / "model.onnx") == sum(
        item.stat().st_size for item in folder.iterdir()
    )
    async with app_client(create_app(fast_settings(model_repository=str(root)))) as http:
        x = np.random.default_rng(12).normal(size=(2, 4)).astype(np.float32)
        body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.tolist()}]}
        answer = await http.post("/v2/models/big/infer", json=body)
        assert answer.status_code == 200, answer.text
        got = np.reshape(answer.json()["outputs"][0]["data"], (2, 3))
        np.testing.assert_allclose(got, linear(weights, x), rtol=1e-5)


@pbtxt
async def test_a_variable_reshape_warms_up_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    """dims [-1] reshaped to the file's [-1, 4]: a request of 8 numbers is two rows of 4; one of
    5 cannot be, and is a 400 naming the input, never a 500. The warm-up fits the reshape."""
    root = tmp_path / "models"
    weights = linear_model(root / "rows" / "1" / "model.onnx", seed=13)
    (root / "rows" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ],'
        " reshape: { shape: [ -1, 4 ] } } ]\n"
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 3 ] } ]\n'
        'model_warmup [ { name: "zeros", batch_size: 1, inputs { key: "x" value: {'
        " data_type: TYPE_FP32, dims: [ 4 ], zero_data: true } } } ]"
    )
    async with app_client(create_app(fast_settings(model_repository=str(root)))) as http:
        assert (await http.get("/v2/models/rows/ready")).status_code == 200
        x = np.random.default_rng(14).normal(size=8).astype(np.float32)
        body = {"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": x.tolist()}]}
        answer = await http.post("/v2/models/rows/infer", json=body)
        assert answer.status_code == 200, answer.text
        got = np.reshape(answer.json()["outputs"][0]["data"], (2, 3))
        np.testing.assert_allclose(got, linear(weights, x.reshape(2, 4)), rtol=1e-5)
        five = {"inputs": [{"name": "x", "shape": [5], "datatype": "FP32", "data": [1] * 5}]}
        answer = await http.post("/v2/models/rows/infer", json=five)
        assert answer.status_code == 400, answer.text
        assert "input 'x' has 5 elements; the model takes them as [-1, 4]" in answer.json()["error"]


def test_a_model_folder_without_its_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty" / "1" / "model.onnx").mkdir(parents=True)
    record = read_model(tmp_path / "empty")
    assert isinstance(record, BrokenModel)
    assert "the folder model.onnx has no model.onnx inside" in record.reason, record
