"""Named tensors as a model declares them, and requests made of them.

Datatypes use the Open Inference Protocol's names (``FP32``, ``INT64``, ``BYTES``...), which are
also what Triton's ``config.pbtxt`` and KServe speak; shapes use ``-1`` for a variable dimension.
A ``TensorModel`` takes one request per job (a mapping of input name to array, the first axis
being the request's own batch) and answers a mapping of output name to array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sluiceway.runtime.errors import BadInput

DATATYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
"""Protocol datatype names and the numpy dtype each is held in."""

ONNX_TYPES: Mapping[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
"""ONNX Runtime's type strings as protocol datatype names."""

TensorRequest = Mapping[str, np.ndarray]
"""One job's inputs by name; the first axis of each is the request's own batch."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output: datatype and shape (``-1`` for a variable dimension).

    For a model that batches, the shape includes the batch dimension first (always ``-1``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(f"{self.name}: unknown datatype {self.datatype!r}")

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def check(self, array: np.ndarray) -> np.ndarray:
        """``array`` as this tensor takes it; ``BadInput`` naming what does not fit."""
        if array.ndim != len(self.shape):
            raise BadInput(
                f"input {self.name!r} has {array.ndim} dimensions; the model takes "
                f"{len(self.shape)} (shape {list(self.shape)})"
            )
        for axis, (got, want) in enumerate(zip(array.shape, self.shape, strict=True)):
            if want != -1 and got != want:
                raise BadInput(
                    f"input {self.name!r} has {got} in dimension {axis}; the model takes "
                    f"{want} (shape {list(self.shape)})"
                )
        if array.dtype == self.dtype:
            return array
        if (array.dtype.kind in "iub" and self.dtype.kind in "iubf") or (
            array.dtype.kind == "f" and self.dtype.kind == "f"
        ):
            return array.astype(self.dtype)
        raise BadInput(f"input {self.name!r} is {array.dtype}; the model takes {self.datatype}")


def shape_key(request: TensorRequest) -> str:
    """A batching key: requests whose tensors differ beyond the batch axis never share a call."""
    return ";".join(
        f"{name}:{'x'.join(str(d) for d in array.shape[1:])}"
        for name, array in sorted(request.items())
    )


def rows_of(request: TensorRequest) -> int:
    """How many rows a request brings (the length of its first input's batch axis)."""
    first = next(iter(request.values()))
    return int(first.shape[0]) if first.ndim else 1


def split_rows(
    outputs: Mapping[str, np.ndarray], rows: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Each request's share of a batched call's outputs, in request order."""
    bounds = np.cumsum([0, *rows])
    return [
        {name: array[bounds[i] : bounds[i + 1]] for name, array in outputs.items()}
        for i in range(len(rows))
    ]
