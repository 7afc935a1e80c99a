"""The generic ONNX kind: named tensors in and out, requests batched into one call."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sluiceway.errors import BadInput, ModelUnavailable
from sluiceway.models.base import BatchPolicy
from sluiceway.models.onnx_model import WIDE_SESSION_PER_FILE_BYTE, OnnxModel, OnnxModelKind
from sluiceway.models.tensors import TensorSpec, shape_key
from tests.fixtures.onnx_models import linear_model

POLICY = BatchPolicy(slots=1, max_batch=8)


@pytest.fixture
def weights_and_path(tmp_path: Path) -> tuple[np.ndarray, Path]:
    path = tmp_path / "model.onnx"
    return linear_model(path), path


async def load(path: Path, **options: object) -> OnnxModel:
    return await OnnxModelKind("linear", POLICY, path=path, **options).load(None)  # type: ignore[arg-type]


async def test_requests_share_one_call_and_get_their_own_rows(
    weights_and_path: tuple[np.ndarray, Path],
) -> None:
    weights, path = weights_and_path
    model = await load(path)
    rng = np.random.default_rng(1)
    requests = [{"x": rng.normal(size=(n, 4)).astype(np.float32)} for n in (1, 3, 2)]
    results = await model.infer(requests)
    for request, result in zip(requests, results, strict=True):
        expected = request["x"] @ weights[:4] + weights[4]
        assert result["y"].shape == expected.shape
        np.testing.assert_allclose(result["y"], expected, rtol=1e-5)


async def test_a_malformed_request_fails_alone(weights_and_path: tuple[np.ndarray, Path]) -> None:
    _, path = weights_and_path
    model = await load(path)
    good = {"x": np.ones((2, 4), np.float32)}
    results = await model.infer([good, {"x": np.ones((2, 5), np.float32)}, {"z": 1}, good])
    assert isinstance(results[1], BadInput) and "dimension 1" in str(results[1])
    assert isinstance(results[2], BadInput) and "missing ['x']" in str(results[2])
    assert results[0]["y"].shape == (2, 3) and results[3]["y"].shape == (2, 3)


async def test_integers_are_taken_as_the_declared_floats(
    weights_and_path: tuple[np.ndarray, Path],
) -> None:
    _, path = weights_and_path
    model = await load(path)
    (result,) = await model.infer([{"x": np.arange(8).reshape(2, 4)}])
    assert result["y"].dtype == np.float32


async def test_tensors_are_read_from_the_file_when_not_declared(
    weights_and_path: tuple[np.ndarray, Path],
) -> None:
    _, path = weights_and_path
    model = await load(path)
    assert model.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert model.outputs == (TensorSpec("y", "FP32", (-1, 3)),)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ((TensorSpec("input", "FP32", (-1, 4)),), "declares input 'input'; the file has ['x']"),
        ((TensorSpec("x", "INT64", (-1, 4)),), "'x' is FP32 in the file, INT64 in the config"),
    ],
)
async def test_a_config_that_does_not_match_the_file_is_refused(
    weights_and_path: tuple[np.ndarray, Path], inputs: tuple[TensorSpec, ...], message: str
) -> None:
    _, path = weights_and_path
    with pytest.raises(ModelUnavailable, match=re.escape(message)):
        await load(path, inputs=inputs)


async def test_a_file_that_is_not_onnx_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match=r"model\.onnx cannot be loaded"):
        await load(path)


def test_requests_of_other_shapes_are_batched_apart() -> None:
    a = shape_key({"x": np.zeros((1, 4))})
    assert a == shape_key({"x": np.zeros((7, 4))})
    assert a != shape_key({"x": np.zeros((1, 5))})


async def test_one_intra_op_thread_computes_on_the_calling_thread(
    weights_and_path: tuple[np.ndarray, Path],
) -> None:
    _, path = weights_and_path
    assert (await load(path)).computes_on_caller
    assert not (await load(path, threads=2)).computes_on_caller


async def test_a_wide_call_gives_the_same_rows_on_a_session_with_a_thread_per_core(
    weights_and_path: tuple[np.ndarray, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = weights_and_path
    monkeypatch.setattr("sluiceway.models.cores.usable_cores", lambda: 2)
    model = await load(path)
    assert model.runs_wide and model.computes_on_caller  # the narrow session is still one thread
    rng = np.random.default_rng(2)
    requests = [{"x": rng.normal(size=(n, 4)).astype(np.float32)} for n in (1, 3)]
    narrow = model.predict_batch(requests)
    wide = model.infer_wide(requests)
    for one, other in zip(narrow, wide, strict=True):
        np.testing.assert_allclose(one["y"], other["y"], rtol=1e-6)
    assert model._wide_session is not None
    assert model._wide_session.get_session_options().intra_op_num_threads == 2


async def test_no_wide_session_when_turned_off_or_a_call_has_every_core_already(
    weights_and_path: tuple[np.ndarray, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = weights_and_path
    monkeypatch.setattr("sluiceway.models.cores.usable_cores", lambda: 2)
    wide = await load(path)
    for model in (await load(path, wide=False), await load(path, threads=2)):
        assert not model.runs_wide
        with pytest.raises(NotImplementedError, match="no wide session"):
            model.infer_wide([{"x": np.ones((1, 4), np.float32)}])
    # The wide session holds the weights a second time, and the cache budget counts it.
    extra = int(path.stat().st_size * WIDE_SESSION_PER_FILE_BYTE)
    assert wide.nbytes == (await load(path, wide=False)).nbytes + extra
    # The wide session is built while the first is held: the cache makes room for both.
    kind = OnnxModelKind("linear", POLICY, path=path)
    one_core = OnnxModelKind("linear", POLICY, path=path, wide=False)
    assert kind.load_peak_nbytes() == 2 * one_core.load_peak_nbytes() > 0
    monkeypatch.setattr("sluiceway.models.cores.usable_cores", lambda: 1)
    assert not (await load(path)).runs_wide
    assert kind.load_peak_nbytes() == one_core.load_peak_nbytes()
