"""Clients' shared memory regions (``sluiceway.shared_memory``), on files in a temporary folder
standing in for ``/dev/shm``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sluiceway.errors import BadInput
from sluiceway.shared_memory import SharedMemoryRegions


def _object(root: Path, name: str, data: bytes) -> str:
    (root / name).write_bytes(data)
    return f"/{name}"


def test_reads_are_views_of_the_object_and_writes_land_in_it(tmp_path: Path) -> None:
    regions = SharedMemoryRegions(tmp_path)
    values = np.arange(8, dtype=np.float32)
    key = _object(tmp_path, "t", b"\0" * 16 + values.tobytes())
    regions.register("t", key, 16, values.nbytes)
    view = regions.read("t", 8, 16, "input 'x'")
    np.testing.assert_array_equal(np.frombuffer(view, np.float32), values[2:6])
    # The client changes its object: the view sees it (no copy was made).
    with open(tmp_path / "t", "r+b") as file:
        file.seek(16 + 8)
        file.write(np.float32(-1).tobytes())
    assert np.frombuffer(view, np.float32)[0] == -1
    regions.write("t", 0, 8, b"abcdefgh", "output 'y'")
    assert (tmp_path / "t").read_bytes()[16:24] == b"abcdefgh"
    with pytest.raises(BadInput, match="more than the 4 bytes"):
        regions.write("t", 0, 4, b"abcdefgh", "output 'y'")


def test_unregistering_a_region_a_request_still_reads(tmp_path: Path) -> None:
    regions = SharedMemoryRegions(tmp_path)
    regions.register("r", _object(tmp_path, "r", bytes(range(64))), 0, 64)
    tensor = np.frombuffer(regions.read("r", 0, 64, "input"), np.uint8)
    regions.unregister("r")  # the mapping stays while the tensor lives
    assert tensor.sum() == sum(range(64))
    assert regions.status() == []
    with pytest.raises(BadInput, match="no shared memory region 'r'"):
        regions.read("r", 0, 1, "input")


def test_a_shrunk_object_is_refused(tmp_path: Path) -> None:
    regions = SharedMemoryRegions(tmp_path)
    regions.register("s", _object(tmp_path, "s", b"\1" * 8192), 0, 8192)
    os.truncate(tmp_path / "s", 100)
    with pytest.raises(BadInput, match="shrank"):
        regions.read("s", 4096, 16, "input")
    with pytest.raises(BadInput, match="shrank"):
        regions.write("s", 4096, 16, b"x", "output")
    assert bytes(regions.read("s", 0, 100, "input")) == b"\1" * 100


def test_keys_stay_in_the_folder_and_regions_are_bounded(tmp_path: Path) -> None:
    regions = SharedMemoryRegions(tmp_path / "shm", max_regions=2)
    (tmp_path / "shm").mkdir()
    (tmp_path / "secret").write_bytes(b"x" * 64)
    for key in ("/../secret", "../secret", "/", "/a/b"):
        with pytest.raises(BadInput, match="must name a POSIX shared-memory object"):
            regions.register("r", key, 0, 8)
    key = _object(tmp_path / "shm", "k", b"\0" * 64)
    regions.register("one", key, 0, 8)
    regions.register("two", key.lstrip("/"), 8, 8)  # shm_open's names need no slash either
    with pytest.raises(BadInput, match="2 shared memory regions are registered"):
        regions.register("three", key, 0, 8)
    assert [region["name"] for region in regions.status()] == ["one", "two"]
    regions.close()
    assert regions.status() == []
