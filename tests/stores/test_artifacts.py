"""The model artifact cache: download once, verify, never keep a bad or partial file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sluiceway.stores.artifacts import ArtifactError, ArtifactStore
from tests.fixtures.fileserver import FileServer

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer({"model.bin": PAYLOAD}) as server:
        yield server


def test_downloads_once_then_reuses(server: FileServer, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first = store.fetch(server.url("files/model.bin"), SHA)
    second = ArtifactStore(tmp_path).fetch(server.url("files/model.bin"), SHA)
    assert first == second == tmp_path / SHA / "model.bin"
    assert first.read_bytes() == PAYLOAD
    assert server.hits["/files/model.bin"] == 1


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(
    server: FileServer, tmp_path: Path
) -> None:
    wrong = "0" * 64
    with pytest.raises(ArtifactError, match=f"expected {wrong}; refusing it"):
        ArtifactStore(tmp_path).fetch(server.url("files/model.bin"), wrong)
    assert [p.name for p in (tmp_path / wrong).iterdir()] == [".lock"]


def test_a_corrupted_cached_file_is_downloaded_again(server: FileServer, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    path = store.fetch(server.url("files/model.bin"), SHA)
    path.write_bytes(b"bit rot")
    assert store.fetch(server.url("files/model.bin"), SHA).read_bytes() == PAYLOAD
    assert server.hits["/files/model.bin"] == 2


def test_http_errors_name_the_status(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="HTTP 404"):
        ArtifactStore(tmp_path).fetch(server.url("files/missing.bin"), SHA)


def test_an_unreachable_server_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot download"):
        ArtifactStore(tmp_path).fetch("http://127.0.0.1:9/model.bin", SHA, timeout_s=2)


def test_concurrent_callers_share_one_download(server: FileServer, tmp_path: Path) -> None:
    url = server.url("files/model.bin")
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: ArtifactStore(tmp_path).fetch(url, SHA), range(8)))
    assert len(set(paths)) == 1
    assert paths[0].read_bytes() == PAYLOAD
    assert server.hits["/files/model.bin"] == 1


def test_progress_bar_goes_to_stderr(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ArtifactStore(tmp_path).fetch(server.url("files/model.bin"), SHA, progress=True)
    captured = capsys.readouterr()
    assert "model.bin" in captured.err
    assert captured.out == ""
