"""Named tensors as a model declares them, and requests made of them.

Datatypes use the Open Inference Protocol's names (``FP32``, ``INT64``, ``BYTES``...), which are
also what Triton's ``config.pbtxt`` and KServe speak; shapes use ``-1`` for a variable dimension.
A ``TensorModel`` takes one request per job (a mapping of input name to array, the first axis
being the request's own batch) and answers a mapping of output name to array.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sluiceway.errors import BadInput

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
    model_shape: tuple[int, ...] | None = None
    """The shape the model file itself has, where it differs (Triton's ``reshape``): requests
    and answers have ``shape``, and the model call the other (the batch dimension first for a
    model that batches, as ``shape``)."""
    format: str | None = None
    """An image input's layout, ``"NCHW"`` or ``"NHWC"`` (Triton's ``format``), where the config
    gives one: said in the model's config, from which Triton's image clients learn how to lay
    out pixels (they refuse a model whose input has none)."""

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(f"{self.name}: unknown datatype {self.datatype!r}")

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def check(self, array: np.ndarray) -> np.ndarray:
        """``array`` as this tensor takes it; ``BadInput`` naming what does not fit."""
        # Every input of every request is checked here, twice (the protocol, then the model):
        # each attribute read once, and dimensions compared by index.
        shape = self.shape
        got = array.shape
        if len(got) != len(shape):
            raise BadInput(
                f"input {self.name!r} has {array.ndim} dimensions; the model takes "
                f"{len(shape)} (shape {list(shape)})"
            )
        for axis, want in enumerate(shape):
            if want != -1 and got[axis] != want:
                raise BadInput(
                    f"input {self.name!r} has {got[axis]} in dimension {axis}; the model takes "
                    f"{want} (shape {list(shape)})"
                )
        dtype = DATATYPES[self.datatype]
        given = array.dtype
        if given == dtype:
            return array
        if (given.kind in "iub" and dtype.kind in "iubf") or (
            given.kind == "f" and dtype.kind == "f"
        ):
            return array.astype(dtype)
        raise BadInput(f"input {self.name!r} is {array.dtype}; the model takes {self.datatype}")


def reshaped(array: np.ndarray, shape: tuple[int, ...], batched: bool) -> np.ndarray:
    """``array`` (a request's or a model's tensor) as ``shape`` (its batch dimension kept, for a
    model that batches): a view, the same elements in the same order."""
    return array.reshape((array.shape[0], *shape[1:]) if batched else shape)


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


def tensor_from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> np.ndarray:
    """A JSON tensor (``data`` nested or flat, row-major) as an array of ``shape``.

    ``BYTES`` elements are strings (kept as their UTF-8 bytes); ``BadInput`` names what does
    not fit: a value the datatype cannot hold, or a count of elements that is not the shape's.
    """
    dtype = _dtype_of(name, datatype)
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=np.object_).ravel()
            array = np.array([_as_bytes(name, item) for item in flat], dtype=np.object_)
        elif datatype == "BOOL":
            # numpy's own dtype is bool only where every value is one, and it reads nested
            # lists without recursing in Python: lists deeper than it holds are a ValueError.
            array = np.asarray(data).ravel()
            if array.dtype != dtype and array.size:
                raise BadInput(f"input {name!r} is BOOL: its data must be true or false")
            array = array.astype(dtype, copy=False)
        elif dtype.kind == "f":
            array = np.asarray(data, dtype=dtype).ravel()
            # JSON has no NaN: one here was a null (or the string "nan") that numpy read as a
            # float.
            if np.isnan(array).any():
                raise BadInput(f"input {name!r} is {datatype}: its data must be numbers, not null")
        else:
            array = _whole_numbers(name, datatype, dtype, data)
    except (ValueError, TypeError, OverflowError) as error:
        raise BadInput(f"input {name!r}: the data are not {datatype} values ({error})") from None
    return _shaped(name, array, shape)


_BOUNDS = {
    name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for name, dtype in DATATYPES.items()
    if dtype.kind in "iu"
}
"""The values each integer datatype holds."""


def _whole_numbers(name: str, datatype: str, dtype: np.dtype[Any], data: Any) -> np.ndarray:
    """JSON data of an integer datatype, flat. numpy's own dtype for the data says whether
    they are integers: read straight as ``dtype`` it would truncate 1.7 and parse "7"."""
    array = np.asarray(data)
    kind = array.dtype.kind
    if kind in "iu":
        if array.dtype != dtype and array.size:  # INT64 data, the usual, are read as they are
            low, high = _BOUNDS[datatype]
            if array.min() < low or array.max() > high:
                raise BadInput(
                    f"input {name!r}: the data are not {datatype} values ({low} to {high})"
                )
        return array.astype(dtype, copy=False).ravel()
    if kind == "b":
        return array.astype(dtype).ravel()
    if kind == "f":
        # Floats, or integers numpy holds only as floats (values only UINT64 holds beside
        # negative ones or small ones, or no value at all): numpy's exact reading as ``dtype``
        # (which refuses values past it) equals them only where every one is a whole number.
        exact = np.asarray(data, dtype=dtype)
        if np.array_equal(exact, array):
            return exact.ravel()
    raise BadInput(f"input {name!r} is {datatype}: its data must be whole numbers")


_LENGTH = struct.Struct("<I").unpack_from
"""A BYTES element's length: 4 bytes, little-endian, before it."""


def tensor_from_bytes(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview
) -> np.ndarray:
    """A tensor sent as raw bytes (Triton's binary extension): little-endian, row-major;
    ``BYTES`` elements each prefixed with their length as a 4-byte little-endian integer."""
    dtype = _dtype_of(name, datatype)
    if datatype != "BYTES":
        wire = dtype.newbyteorder("<")
        if len(raw) % wire.itemsize:
            raise BadInput(
                f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} values"
            )
        array = np.frombuffer(raw, dtype=wire).astype(dtype, copy=False)
        return _shaped(name, array, shape)
    # Bytes, not a memoryview: slicing a view and unpacking with int.from_bytes cost 3.6 times
    # as much per element, and a body of millions of empty elements held the event loop for
    # seconds. (An HTTP tail is a view of the body: copied once here; each element is copied
    # out either way.)
    data = raw if isinstance(raw, bytes) else bytes(raw)
    items: list[bytes] = []
    append = items.append
    offset, end = 0, len(data)
    while offset < end:
        if offset + 4 > end:
            raise BadInput(f"input {name!r}: a BYTES element's 4-byte length is cut short")
        (size,) = _LENGTH(data, offset)
        offset += 4
        stop = offset + size
        if stop > end:
            raise BadInput(f"input {name!r}: a BYTES element runs past the end of its data")
        append(data[offset:stop])
        offset = stop
    return _shaped(name, np.array(items, dtype=np.object_), shape)


def tensor_to_bytes(array: np.ndarray, datatype: str) -> bytes:
    """An output tensor as raw bytes, the inverse of ``tensor_from_bytes``."""
    if datatype != "BYTES":
        wire = DATATYPES[datatype].newbyteorder("<")
        return np.ascontiguousarray(array, dtype=wire).tobytes()
    parts: list[bytes] = []
    for item in np.asarray(array, dtype=np.object_).ravel():
        value = _encoded(item)
        parts.append(len(value).to_bytes(4, "little"))
        parts.append(value)
    return b"".join(parts)


def tensor_to_json(array: np.ndarray, datatype: str) -> list[Any]:
    """An output tensor's ``data``: flat, row-major; ``BYTES`` as text (undecodable bytes
    replaced, which is why a client wanting exact bytes asks for binary outputs)."""
    if datatype == "BYTES":
        return [
            _encoded(item).decode("utf-8", "replace")
            for item in np.asarray(array, dtype=np.object_).ravel()
        ]
    flat: list[Any] = np.asarray(array, dtype=DATATYPES[datatype]).ravel().tolist()
    return flat


def _dtype_of(name: str, datatype: str) -> np.dtype[Any]:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise BadInput(
            f"input {name!r}: unknown datatype {datatype!r}; the protocol's are {sorted(DATATYPES)}"
        )
    return dtype


def _shaped(name: str, flat: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    expected = math.prod(shape)  # numpy's prod costs more than the rest of a small tensor
    if flat.size != expected:
        raise BadInput(
            f"input {name!r} has {flat.size} elements; its shape {list(shape)} needs {expected}"
        )
    try:
        return flat.reshape(tuple(shape))
    except ValueError as error:  # no elements in dimensions past numpy's size, or over 64 of them
        raise BadInput(f"input {name!r}: shape {list(shape)} cannot be held ({error})") from None


def _as_bytes(name: str, item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes):
        return item
    raise BadInput(f"input {name!r} is BYTES: its data must be strings, got {item!r}")


def _encoded(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    return str(item).encode()
