"""Any ONNX model as named tensors in, named tensors out, batched across requests.

Requests batched together are concatenated on the first axis of every input and the outputs are
split back by each request's row count, so a model exported with a dynamic batch axis serves
many callers in one ``run``. A model without one (``batched=False``) runs one request per call.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sluiceway.errors import BadInput, ModelUnavailable
from sluiceway.models import cores
from sluiceway.models.base import BatchPolicy, ModelKind, ThreadedModel
from sluiceway.models.tensors import ONNX_TYPES, TensorSpec, reshaped, rows_of, split_rows

logger = logging.getLogger(__name__)


# Building a session reads the file, parses it and optimises the graph beside the result:
# measured 2.6 times the file at its peak on MobileNetV2 (bench/repository).
BUILD_PEAK_PER_FILE_BYTE = 2.7


def model_file_bytes(path: Path) -> int:
    """The bytes of a model file, with its external data when it is kept as a folder of the
    same name (Triton's layout for a model over protobuf's 2 GB: ``1/model.onnx/model.onnx``
    beside its weight files)."""
    if path.parent.name != path.name or not path.parent.parent.name.isdigit():
        return path.stat().st_size  # a plain file (the folder form is counted in a version)
    return sum(item.stat().st_size for item in path.parent.rglob("*") if item.is_file())


def build_peak_nbytes(path: Path, *, wide: bool = False) -> int:
    """Memory building a session from ``path`` takes at its peak (0 if the file is gone).

    With ``wide``, a wide session is built next while the first is held: counted as twice a
    build's peak, a bound, since the first session holds less than its build took.
    """
    try:
        return int(model_file_bytes(path) * BUILD_PEAK_PER_FILE_BYTE) * (2 if wide else 1)
    except OSError:
        return 0


def open_session(
    path: Path, threads: int, memory_arena: bool, owner: str, *, spinning: bool = False
) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU for ``path`` with ``session_options``; a file it
    cannot load is ``ModelUnavailable``, naming ``owner``."""
    try:
        return ort.InferenceSession(
            str(path),
            session_options(threads, memory_arena=memory_arena, spinning=spinning),
            providers=["CPUExecutionProvider"],
        )
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelUnavailable(f"{owner} cannot be loaded: {error}") from error


def session_options(
    threads: int, *, memory_arena: bool = True, spinning: bool = False
) -> ort.SessionOptions:
    """One intra-op thread per slot by default, no spinning: slots run side by side.

    Without ``memory_arena`` a call's activations are allocated and freed per call, so a
    session holds little more than its weights (``ModelRecord.memory_arena``).
    """
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning threads burn the core the other slot or the request decoder needs; only a
    # wide session, which runs while nothing else computes, spins (``open_wide_session``).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


WIDE_SESSION_PER_FILE_BYTE = 1.2
"""Memory a wide session adds once open, beside the first session of the same file: its own
prepacked weights and buffers. Measured as RSS on MobileNetV2 (14 MB file, 2026-12-01): 17 MB
with the arena, 14 MB without; a first session costs more (``onnx_classifier.py``), since it
also sets up ONNX Runtime's process-wide state."""


def open_wide_session(
    path: Path, threads: int, memory_arena: bool, owner: str
) -> ort.InferenceSession | None:
    """A second session on ``path`` with an intra-op thread per core, for calls made while no
    other model call computes (``Model.runs_wide``); ``None`` if a call already has every core.

    Its threads spin between operators: measured on MobileNetV2 (2 cores, one caller, a ready
    tensor, 2026-12-01), two spinning threads ran 122-131 images/s against 71-74 on one thread,
    at 15-16 ms of CPU per image against 13.5-14; two threads without spinning ran 77-84, no
    faster than one, since each operator then waits for a sleeping thread to wake.
    """
    if not cores.opens_wide(True, threads):
        return None
    return open_session(path, cores.usable_cores(), memory_arena, owner, spinning=True)


def read_signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs ``path`` declares itself, as Triton's auto-complete reads them.

    The session skips graph optimisation (it only lists the graph's inputs and outputs, which
    optimisation never changes) and is dropped at once. A file ONNX Runtime cannot read is
    ``ModelUnavailable`` saying why.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelUnavailable(f"{path.name} cannot be read: {error}") from error
    inputs = tuple(_spec_of(node) for node in session.get_inputs())
    outputs = tuple(_spec_of(node) for node in session.get_outputs())
    return inputs, outputs


class OnnxModel(ThreadedModel):
    """A loaded ONNX session and the tensors it was declared with."""

    def __init__(
        self,
        session: ort.InferenceSession,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        batched: bool,
        nbytes: int,
        wide_session: ort.InferenceSession | None = None,
    ) -> None:
        self._session = session
        self._wide_session = wide_session
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.batched = batched
        # Tensors whose file shape differs from what requests send (Triton's reshape).
        self._reshaped_inputs = tuple(spec for spec in self.inputs if spec.model_shape is not None)
        self._reshaped_outputs = tuple(
            spec for spec in self.outputs if spec.model_shape is not None
        )
        # Asked of every request (``_checked``, ``_run``): worked out once.
        self._input_names = frozenset(spec.name for spec in self.inputs)
        self._text_inputs = tuple(spec.name for spec in self.inputs if spec.datatype == "BYTES")
        self._output_names = [spec.name for spec in self.outputs]
        self._nbytes = nbytes
        self._on_caller = bool(session.get_session_options().intra_op_num_threads == 1)

    @property
    def computes_on_caller(self) -> bool:
        """One intra-op thread: ONNX Runtime computes on the calling thread alone."""
        return self._on_caller

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def runs_wide(self) -> bool:
        """Whether it holds a wide session (``open_wide_session``)."""
        return self._wide_session is not None

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        """Run every well-formed request in one call; a malformed one fails alone."""
        return self._predict(inputs, self._session)

    def infer_wide(self, inputs: Sequence[Any]) -> list[Any]:
        """``predict_batch`` on the wide session: the same results, on every core."""
        session = self._wide_session
        if session is None:
            raise NotImplementedError(f"{type(self).__name__} has no wide session")
        return self._predict(inputs, session)

    def _predict(self, inputs: Sequence[Any], session: ort.InferenceSession) -> list[Any]:
        results: list[Any] = [None] * len(inputs)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(inputs):
            try:
                good.append((index, self._checked(request)))
            except BadInput as error:
                results[index] = error
        if not good:
            return results
        if not self.batched or len(good) == 1:  # nothing to join: no copy of the inputs
            for index, feed in good:
                results[index] = self._run(feed, session)
            return results
        rows = [rows_of(feed) for _, feed in good]
        feed = {
            spec.name: np.concatenate([request[spec.name] for _, request in good])
            for spec in self.inputs
        }
        outputs = self._run(feed, session)
        for (index, _), share in zip(good, split_rows(outputs, rows), strict=True):
            results[index] = share
        return results

    def _checked(self, request: Any) -> dict[str, np.ndarray]:
        if not isinstance(request, dict):
            raise BadInput("a request is a mapping of input names to arrays")
        if request.keys() != self._input_names:
            missing = [spec.name for spec in self.inputs if spec.name not in request]
            extra = sorted(set(request) - self._input_names)
            raise BadInput(
                f"the model takes inputs {[spec.name for spec in self.inputs]}; "
                + (f"missing {missing}" if missing else f"unknown {extra}")
            )
        feed = {spec.name: spec.check(np.asarray(request[spec.name])) for spec in self.inputs}
        for name in self._text_inputs:
            feed[name] = _as_text(name, feed[name])
        if self.batched and len(feed) > 1 and len({array.shape[0] for array in feed.values()}) > 1:
            raise BadInput("every input of a request needs the same batch size (first dimension)")
        for spec in self._reshaped_inputs:
            assert spec.model_shape is not None
            _check_fits(spec.name, feed[spec.name], spec.model_shape, self.batched)
        return feed

    def _run(
        self, feed: dict[str, np.ndarray], session: ort.InferenceSession
    ) -> dict[str, np.ndarray]:
        for spec in self._reshaped_inputs:
            assert spec.model_shape is not None
            feed[spec.name] = reshaped(feed[spec.name], spec.model_shape, self.batched)
        names = self._output_names
        arrays = session.run(names, feed)
        outputs = {name: np.asarray(array) for name, array in zip(names, arrays, strict=True)}
        for spec in self._reshaped_outputs:
            outputs[spec.name] = reshaped(outputs[spec.name], spec.shape, self.batched)
        return outputs


class OnnxModelKind(ModelKind):
    """Loads one ONNX file whose inputs and outputs were declared (or are read from the file)."""

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        *,
        path: Path,
        inputs: Sequence[TensorSpec] = (),
        outputs: Sequence[TensorSpec] = (),
        batched: bool = True,
        threads: int = 1,
        memory_arena: bool = True,
        wide: bool = True,
    ) -> None:
        self.name = name
        self.policy = policy
        self.path = path
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.batched = batched
        self.threads = threads
        self.memory_arena = memory_arena
        self.wide = wide
        """Whether to open a wide session too (``open_wide_session``)."""

    def load_peak_nbytes(self) -> int:
        return build_peak_nbytes(self.path, wide=cores.opens_wide(self.wide, self.threads))

    async def load(self, spec: Any) -> OnnxModel:
        """Open the session in a thread (graph optimisation takes a moment)."""
        return await asyncio.to_thread(self._build)

    def _build(self) -> OnnxModel:
        owner = f"{self.name}: {self.path.name}"
        session = open_session(self.path, self.threads, self.memory_arena, owner)
        inputs = _declared_or_read(self.name, "input", self.inputs, session.get_inputs())
        outputs = _declared_or_read(self.name, "output", self.outputs, session.get_outputs())
        logger.info(
            "%s: %s loaded (%d inputs, %d outputs)", self.name, self.path, len(inputs), len(outputs)
        )
        wide = (
            open_wide_session(self.path, self.threads, self.memory_arena, owner)
            if self.wide
            else None
        )
        # Weights plus optimised copies, roughly; an arena keeps activations too, unknown here.
        file_bytes = model_file_bytes(self.path)
        nbytes = file_bytes * 2
        if wide is not None:
            nbytes += int(file_bytes * WIDE_SESSION_PER_FILE_BYTE)
        return OnnxModel(
            session, inputs, outputs, batched=self.batched, nbytes=nbytes, wide_session=wide
        )


def _check_fits(name: str, array: np.ndarray, model_shape: tuple[int, ...], batched: bool) -> None:
    """``BadInput`` unless ``array`` (a row's elements, for a model that batches) can take the
    model's shape (Triton's reshape): as many elements, or a multiple of the fixed dimensions'
    product where one is variable."""
    shape = model_shape[1:] if batched else model_shape
    elements = math.prod(array.shape[1:] if batched else array.shape)
    fixed = math.prod(d for d in shape if d != -1)
    fits = elements == fixed if -1 not in shape else fixed > 0 and elements % fixed == 0
    if not fits:
        per = " per row" if batched else ""
        raise BadInput(
            f"input {name!r} has {elements} elements{per}; the model takes them as "
            f"{list(shape)}: send a shape that fits"
        )


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX strings are text: ONNX Runtime would feed ``bytes`` objects as their ``repr``."""
    try:
        text: np.ndarray = np.vectorize(
            lambda item: item.decode() if isinstance(item, bytes) else str(item), otypes=[object]
        )(array)
    except UnicodeDecodeError:
        raise BadInput(f"input {name!r}: an ONNX string must be UTF-8 text") from None
    return text


def _declared_or_read(
    model: str, role: str, declared: tuple[TensorSpec, ...], found: Sequence[Any]
) -> tuple[TensorSpec, ...]:
    """The declared tensors, checked against the file's; the file's own when none are declared."""
    actual = {node.name: node for node in found}
    if not declared:
        return tuple(_spec_of(node) for node in found)
    for spec in declared:
        node = actual.get(spec.name)
        if node is None:
            raise ModelUnavailable(
                f"{model}: the config declares {role} {spec.name!r}; the file has {sorted(actual)}"
            )
        datatype = ONNX_TYPES.get(node.type)
        if datatype != spec.datatype:
            raise ModelUnavailable(
                f"{model}: {role} {spec.name!r} is {datatype} in the file, "
                f"{spec.datatype} in the config"
            )
    return declared


def _spec_of(node: Any) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, ONNX_TYPES.get(node.type, "FP32"), shape)
