"""Protocol tensors: JSON and binary encodings of every datatype, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.errors import BadInput
from sluiceway.models.tensors import (
    DATATYPES,
    tensor_from_bytes,
    tensor_from_json,
    tensor_to_bytes,
    tensor_to_json,
)

NUMERIC = [name for name in DATATYPES if name not in ("BYTES", "BOOL")]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numbers_round_trip_through_both_encodings(datatype: str) -> None:
    array = np.arange(6).reshape(2, 3).astype(DATATYPES[datatype])
    assert tensor_to_bytes(array, datatype) == array.astype(array.dtype.newbyteorder("<")).tobytes()
    back = tensor_from_bytes("x", datatype, [2, 3], tensor_to_bytes(array, datatype))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    from_json = tensor_from_json("x", datatype, [2, 3], tensor_to_json(array, datatype))
    np.testing.assert_array_equal(from_json, array)


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=8))
def test_bytes_elements_round_trip_with_their_length_prefixes(items: list[bytes]) -> None:
    array = np.array(items, dtype=np.object_)
    raw = tensor_to_bytes(array, "BYTES")
    assert len(raw) == sum(4 + len(item) for item in items)
    back = tensor_from_bytes("s", "BYTES", [len(items)], raw)
    assert back.tolist() == items


def test_nested_and_flat_json_data_give_the_same_tensor() -> None:
    nested = tensor_from_json("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    flat = tensor_from_json("x", "FP32", [2, 2], [1, 2, 3, 4])
    np.testing.assert_array_equal(nested, flat)
    assert nested.shape == (2, 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: tensor_from_json("x", "FP32", [3], [1, 2]), "has 2 elements"),
        (lambda: tensor_from_json("x", "UINT8", [1], [300]), "not UINT8 values"),
        (lambda: tensor_from_json("x", "BOOL", [1], [1]), "true or false"),
        (lambda: tensor_from_json("x", "BYTES", [1], [5]), "must be strings"),
        (lambda: tensor_from_json("x", "FP8", [1], [5]), "unknown datatype"),
        (lambda: tensor_from_bytes("x", "FP32", [1], b"\0\0\0"), "whole number"),
        (lambda: tensor_from_bytes("x", "BYTES", [1], b"\5\0\0\0ab"), "runs past the end"),
        (lambda: tensor_from_bytes("x", "BYTES", [1], b"\1\0"), "cut short"),
        (lambda: tensor_from_bytes("x", "INT32", [2], b"\0" * 4), "has 1 elements"),
    ],
)
def test_what_does_not_fit_is_bad_input_naming_it(call: object, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        call()  # type: ignore[operator]
