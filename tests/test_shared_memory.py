"""Clients' shared memory regions (``sluiceway.shared_memory``), on files in a temporary folder
standing in for ``/dev/shm``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from sluiceway.config import Settings
from sluiceway.errors import BadInput, UnknownRegion
from sluiceway.shared_memory import SharedMemoryRegions


def _object(root: Path, name: str, data: bytes) -> str:
    (root / name).write_bytes(data)
    return f"/{name}"


def test_reads_copy_the_region_and_writes_land_in_it(tmp_path: Path) -> None:
    regions = SharedMemoryRegions(1 << 20, tmp_path)
    values = np.arange(8, dtype=np.float32)
    key = _object(tmp_path, "t", b"\0" * 16 + values.tobytes())
    regions.register("t", key, 16, values.nbytes)
    data = regions.read("t", 8, 16, "input 'x'")
    np.testing.assert_array_equal(np.frombuffer(data, np.float32), values[2:6])
    # A copy: the client writing its object afterwards changes nothing already read (a model
    # thread reads the tensor later, and must never read the client's memory).
    with open(tmp_path / "t", "r+b") as file:
        file.seek(16 + 8)
        file.write(np.float32(-1).tobytes())
    assert np.frombuffer(data, np.float32)[0] == 2
    region = regions.region("t")
    region.write(0, b"abcdefgh", "output 'y'")
    assert (tmp_path / "t").read_bytes()[16:24] == b"abcdefgh"
    with pytest.raises(BadInput, match="do not fit shared memory region 't'"):
        region.write(28, b"abcdefgh", "output 'y'")


def test_a_shrunk_object_is_refused(tmp_path: Path) -> None:
    regions = SharedMemoryRegions(1 << 20, tmp_path)
    regions.register("s", _object(tmp_path, "s", b"\1" * 8192), 0, 8192)
    os.truncate(tmp_path / "s", 100)
    with pytest.raises(BadInput, match="shrank"):
        regions.read("s", 4096, 16, "input")
    with pytest.raises(BadInput, match="shrank"):
        regions.region("s").write(4096, b"x", "output")
    assert os.path.getsize(tmp_path / "s") == 100  # not grown back by the refused write
    assert regions.read("s", 0, 100, "input") == b"\1" * 100


def test_reads_are_bounded_by_the_request_limit(tmp_path: Path) -> None:
    regions = SharedMemoryRegions(1000, tmp_path)
    regions.register("big", _object(tmp_path, "big", bytes(4096)), 0, 4096)
    with pytest.raises(BadInput, match="over the server's 1000-byte limit"):
        regions.read("big", 0, 1001, "input 'x'")
    assert len(regions.read("big", 0, 1000, "input 'x'")) == 1000


def test_unregistered_regions_are_unknown(tmp_path: Path) -> None:
    regions = SharedMemoryRegions(1 << 20, tmp_path)
    regions.register("r", _object(tmp_path, "r", bytes(64)), 0, 64)
    regions.unregister("r")
    regions.unregister("r")  # not registered: no error
    assert regions.status() == []
    with pytest.raises(UnknownRegion, match="no shared memory region 'r'"):
        regions.read("r", 0, 1, "input")


def test_keys_name_regular_files_in_the_folder_only(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    regions = SharedMemoryRegions(1 << 20, shm, max_regions=2)
    (tmp_path / "secret").write_bytes(b"x" * 64)
    for key in ("/../secret", "../secret", "/", "/a/b", "/a\0b"):
        with pytest.raises(BadInput, match="must name a POSIX shared-memory object"):
            regions.register("r", key, 0, 8)
    (shm / "link").symlink_to(tmp_path / "secret")  # a local user may plant one in /dev/shm
    with pytest.raises(BadInput, match="cannot open the shared-memory object '/link'"):
        regions.register("r", "/link", 0, 8)
    os.mkfifo(shm / "fifo")
    with pytest.raises(BadInput, match="'/fifo' is not a shared-memory object"):
        regions.register("r", "/fifo", 0, 8)
    key = _object(shm, "k", b"\0" * 64)
    regions.register("one", key, 0, 8)
    regions.register("two", key.lstrip("/"), 8, 8)  # shm_open's names need no slash either
    with pytest.raises(BadInput, match="2 shared memory regions are registered"):
        regions.register("three", key, 0, 8)
    assert [region["name"] for region in regions.status()] == ["one", "two"]
    regions.close()
    assert regions.status() == []


def test_shared_memory_needs_a_single_process() -> None:
    with pytest.raises(ValidationError, match="needs SLUICEWAY_WORKERS=1"):
        Settings(allow_client_shm=True, workers=2)
    assert Settings(allow_client_shm=True).allow_client_shm
