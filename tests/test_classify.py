"""``sluiceway classify URL...``: the standalone bird run, through the real command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluiceway.cli import main
from tests.fixtures.fileserver import FileServer
from tests.fixtures.images import BIRDS_MODEL_FILE, BIRDS_SHA256


@pytest.fixture(autouse=True)
def environment(
    monkeypatch: pytest.MonkeyPatch, birds_server: FileServer, model_cache: Path
) -> None:
    monkeypatch.setenv("SLUICEWAY_BIRDS_MODEL_URL", birds_server.url(f"files/{BIRDS_MODEL_FILE}"))
    monkeypatch.setenv("SLUICEWAY_BIRDS_MODEL_SHA256", BIRDS_SHA256)
    monkeypatch.setenv("SLUICEWAY_MODEL_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("SLUICEWAY_FETCH_ALLOW_HOSTS", "127.0.0.1:*")
    monkeypatch.setenv("SLUICEWAY_FETCH_TIMEOUT_S", "1")


def test_prints_top_three_per_image_and_the_time(
    birds_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    duck, gallinule = (
        birds_server.url("files/bird.jpg"),
        birds_server.url("files/PurpleGallinule.jpg"),
    )
    assert main(["classify", duck, gallinule]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == duck
    assert lines[1].startswith("  1. Aix galericulata: 0.")
    assert [line[:5] for line in lines[2:4]] == ["  2. ", "  3. "]
    assert lines[4] == gallinule
    assert lines[5].startswith("  1. Porphyrio martinicus: 0.")
    assert lines[8].startswith("total time: ") and lines[8].endswith(" s")
    assert len(lines) == 9


def test_k_and_failures(birds_server: FileServer, capsys: pytest.CaptureFixture[str]) -> None:
    urls = [birds_server.url("files/bird.jpg"), birds_server.url("status/404")] * 3
    assert main(["classify", "--k", "1", *urls]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("  1. Aix galericulata") == 3
    assert captured.out.count("  failed: server answered HTTP 404") == 3
    assert "classifying 6 image(s)" in captured.err  # INFO log
    assert "images" in captured.err  # the progress bar for many URLs


def test_verbose_logs_details(birds_server: FileServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "-v", birds_server.url("files/bird.jpg")]) == 0
    assert "classified in" in capsys.readouterr().err


def test_an_unavailable_model_exits_2(
    monkeypatch: pytest.MonkeyPatch,
    birds_server: FileServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SLUICEWAY_MODEL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SLUICEWAY_BIRDS_MODEL_URL", birds_server.url("status/404"))
    assert main(["classify", birds_server.url("files/bird.jpg")]) == 2
    assert "birds model is unavailable" in capsys.readouterr().err
