"""Reading a model repository folder: layouts, versions, and every way an entry can be broken."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from sluiceway.config import Settings
from sluiceway.kinds import kind_of
from sluiceway.models.cores import usable_cores
from sluiceway.models.onnx_model import OnnxModel
from sluiceway.models.records import SourceKind
from sluiceway.models.tensors import TensorSpec
from sluiceway.models.tflite_classifier import TfliteClassifier, embedded_labels
from sluiceway.repository import BrokenModel, read_model, scan
from tests.fixtures.external import BIRDS_MODEL, require
from tests.fixtures.model_repository import LINEAR_CONFIG
from tests.fixtures.onnx_models import linear_model, tiny_classifier


def add_model(root: Path, name: str, config: str, versions: tuple[int, ...] = ()) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(config)
    if versions:
        for version in versions:
            linear_model(folder / str(version) / "model.onnx")
    else:
        linear_model(folder / "model.onnx")
    return folder


def test_a_model_with_its_config(tmp_path: Path) -> None:
    add_model(tmp_path, "linear", LINEAR_CONFIG)
    [record] = scan(tmp_path)
    assert not isinstance(record, BrokenModel)
    assert record.name == "linear" and record.kind == "onnx" and record.version == "1"
    assert record.source.kind is SourceKind.FOLDER
    assert Path(record.source.location) == tmp_path / "linear" / "model.onnx"
    assert record.policy.slots == 2 and record.policy.max_batch == 16
    assert record.policy.max_delay_s == 0.0025 and record.policy.max_queue == 100
    assert record.inputs == (TensorSpec("x", "FP32", (-1, 4)),)  # the batch dimension added
    assert record.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    assert record.batched and record.warmup is None


def test_the_highest_version_is_served_unless_one_is_named(tmp_path: Path) -> None:
    add_model(tmp_path, "latest", LINEAR_CONFIG, versions=(1, 3, 2))
    add_model(tmp_path, "pinned", "version = 2\n" + LINEAR_CONFIG, versions=(1, 2, 3))
    latest, pinned = scan(tmp_path)
    assert not isinstance(latest, BrokenModel) and latest.version == "3"
    assert not isinstance(pinned, BrokenModel) and pinned.version == "2"
    assert Path(pinned.source.location).parent.name == "2"


def test_an_image_classifier_with_labels_and_preprocessing(tmp_path: Path) -> None:
    folder = tmp_path / "colours"
    tiny_classifier(folder / "1" / "model.onnx")
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    (folder / "config.toml").write_text(
        'platform = "onnxruntime_onnx"\nlabels = "labels.txt"\n'
        '[image]\nsize = 16\nfit = "stretch"\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n'
    )
    record = read_model(folder)
    assert not isinstance(record, BrokenModel)
    assert record.kind == "onnx-classifier" and record.labels == ("red", "green", "blue")
    assert record.image is not None and record.image.shape == (3, 16, 16)


def test_warmup_defaults_to_zeros_of_the_declared_inputs(tmp_path: Path) -> None:
    folder = add_model(tmp_path, "warm", LINEAR_CONFIG + "\n[warmup]\n")
    record = read_model(folder)
    assert not isinstance(record, BrokenModel) and record.warmup is not None
    np.testing.assert_array_equal(record.warmup["x"], np.zeros((1, 4), np.float32))


def test_tensors_the_config_leaves_out_are_read_from_the_file(tmp_path: Path) -> None:
    # Triton's auto-complete: the platform alone is a valid config for an ONNX tensor model.
    folder = add_model(tmp_path, "bare", 'platform = "onnx"\n[warmup]\n')
    record = read_model(folder)
    assert not isinstance(record, BrokenModel)
    assert record.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert record.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    assert record.warmup is not None
    np.testing.assert_array_equal(record.warmup["x"], np.zeros((1, 4), np.float32))
    declared_in = 'platform = "onnx"\n[[inputs]]\nname = "x"\ndatatype = "FP64"\ndims = [4]\n'
    half = read_model(add_model(tmp_path, "half", declared_in))
    assert not isinstance(half, BrokenModel)
    assert half.inputs == (TensorSpec("x", "FP64", (-1, 4)),)  # as declared; loading checks it
    assert half.outputs == (TensorSpec("y", "FP32", (-1, 3)),)


def test_a_file_without_a_batch_dimension_is_served_unbatched_or_refused(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    linear_model(fixed / "model.onnx", batch=1)
    (fixed / "config.toml").write_text('platform = "onnx"\n')
    refused = read_model(fixed)
    assert isinstance(refused, BrokenModel)
    assert "input 'x' of the file has shape [1, 4]" in refused.reason
    assert "max_batch_size = 0" in refused.reason
    (fixed / "config.toml").write_text('platform = "onnx"\nmax_batch_size = 0\n')
    record = read_model(fixed)
    assert not isinstance(record, BrokenModel) and not record.batched
    assert record.inputs == (TensorSpec("x", "FP32", (1, 4)),)


def test_a_file_onnx_runtime_cannot_read_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "garbage"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a model")
    (folder / "config.toml").write_text('platform = "onnx"\n')
    entry = read_model(folder)
    assert isinstance(entry, BrokenModel) and "model.onnx cannot be read" in entry.reason


def test_the_memory_arena_is_off_unless_the_config_turns_it_on(tmp_path: Path) -> None:
    lean = add_model(tmp_path, "lean", LINEAR_CONFIG)
    fast = add_model(tmp_path, "fast", "memory_arena = true\n" + LINEAR_CONFIG)
    for folder, arena in ((lean, False), (fast, True)):
        record = read_model(folder)
        assert not isinstance(record, BrokenModel) and record.memory_arena is arena
        model = asyncio.run(kind_of(record, Settings()).load(None))
        assert isinstance(model, OnnxModel)
        assert model._session.get_session_options().enable_cpu_mem_arena is arena


def test_wide_calls_are_on_unless_the_config_turns_it_off(tmp_path: Path) -> None:
    on = add_model(tmp_path, "on", LINEAR_CONFIG)
    off = add_model(tmp_path, "off", "wide = false\n" + LINEAR_CONFIG)
    for folder, wide in ((on, True), (off, False)):
        record = read_model(folder)
        assert not isinstance(record, BrokenModel) and record.wide is wide
        model = asyncio.run(kind_of(record, Settings()).load(None))
        assert isinstance(model, OnnxModel)
        assert model.runs_wide is (wide and usable_cores() > 1)


def test_a_tflite_classifier_follows_the_configs_wide(tmp_path: Path) -> None:
    """``wide`` reaches a LiteRT classifier too: its wide interpreter is built or not."""
    data = require(BIRDS_MODEL).read_bytes()
    labels = "\n".join(embedded_labels(data, "probability-labels-en.txt"))
    for name, wide in (("on", True), ("off", False)):
        folder = tmp_path / name
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.tflite").write_bytes(data)
        (folder / "labels.txt").write_text(labels)
        (folder / "config.toml").write_text(
            f'platform = "tflite"\nlabels = "labels.txt"\nwide = {str(wide).lower()}\n'
            '[image]\nsize = 224\nfit = "stretch"\nlayout = "NHWC"\ndtype = "uint8"\n'
        )
        record = read_model(folder)
        assert not isinstance(record, BrokenModel) and record.wide is wide
        model = asyncio.run(kind_of(record, Settings()).load(None))
        assert isinstance(model, TfliteClassifier)
        assert model.runs_wide is (wide and usable_cores() > 1)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ("platform = onnx", "not valid TOML"),
        ('platform = "pytorch"', "platform 'pytorch' is not one of"),
        ('platform = "onnx"\nmax_batch_size = -1', "max_batch_size: Input should be greater"),
        ('platform = "onnx"\ninstances = "two"', "instances: Input should be a valid integer"),
        ('platform = "onnx"\ncolour = "red"', "colour: Extra inputs are not permitted"),
        (
            'platform = "onnx"\nmemory_arena = "sometimes"',
            "memory_arena: Input should be a valid boolean",
        ),
        ('platform = "onnx"\n[[inputs]]\nname = "x"\ndatatype = "FLOAT"\ndims = [4]', "datatype"),
        ('platform = "onnx"\nversion = 7', "version 7 has no folder"),
        ('platform = "tflite"', "no model.tflite"),
        ('platform = "onnx"\n[image]\nsize = 16', "needs its class names"),
        ('platform = "onnx"\nlabels = "missing.txt"', "labels file 'missing.txt' is missing"),
        ('platform = "onnx"\nlabels = "../../etc/passwd"', "inside the model's folder"),
        ('platform = "onnx"\nlabels = "labels.txt"', "labels file 'labels.txt' is missing"),
    ],
)
def test_a_broken_entry_says_why_and_the_rest_are_served(
    tmp_path: Path, config: str, reason: str
) -> None:
    add_model(tmp_path, "good", LINEAR_CONFIG)
    broken = tmp_path / "broken"
    broken.mkdir()
    linear_model(broken / "model.onnx")
    (broken / "config.toml").write_text(config)
    entries = {entry.name: entry for entry in scan(tmp_path)}
    assert isinstance(entries["broken"], BrokenModel)
    assert reason in entries["broken"].reason
    assert not isinstance(entries["good"], BrokenModel)


def test_folder_names_are_model_names_and_must_be_plain(tmp_path: Path) -> None:
    add_model(tmp_path, "bad name!", LINEAR_CONFIG)
    (tmp_path / ".hidden").mkdir()
    [entry] = scan(tmp_path)
    assert isinstance(entry, BrokenModel) and "letters, digits" in entry.reason


def test_a_missing_repository_is_reported(tmp_path: Path) -> None:
    [entry] = scan(tmp_path / "nowhere")
    assert isinstance(entry, BrokenModel) and "is not a folder" in entry.reason
