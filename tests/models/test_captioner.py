"""The GIT caption kind (models/captioner.py) on a tiny GIT model built offline."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sluiceway.errors import BadInput, ModelUnavailable
from sluiceway.models.base import BatchPolicy
from sluiceway.models.captioner import DEFAULT_MODEL, Captioner, CaptionInput, GitCaptioning
from tests.fixtures.tiny_git import swatches

POLICY = BatchPolicy(slots=1, max_batch=8)


def arrays(count: int) -> list[np.ndarray]:
    return [CaptionInput().prepare(image) for image in swatches(count)]


async def load(source: str | Path, **options: object) -> Captioner:
    return await GitCaptioning(POLICY, source=str(source), **options).load(None)  # type: ignore[arg-type]


async def test_a_batch_gets_the_captions_each_picture_gets_alone(tiny_git: Path) -> None:
    captioner = await load(tiny_git)
    pictures = arrays(8)
    batched = captioner.predict_batch(pictures)
    alone = [captioner.predict_batch([picture])[0] for picture in pictures]
    assert batched == alone
    assert all(isinstance(title, str) for title in batched)
    assert len(set(batched)) >= 4, "the tiny model should title different pictures differently"


async def test_captions_are_deterministic_across_loads(tiny_git: Path) -> None:
    pictures = arrays(4)
    first = (await load(tiny_git)).predict_batch(pictures)
    second = (await load(tiny_git)).predict_batch(pictures)
    assert first == second


async def test_new_tokens_are_bounded(tiny_git: Path) -> None:
    # Each token of the tiny vocabulary is a whole word.
    pictures = arrays(6)
    long = (await load(tiny_git, max_new_tokens=20)).predict_batch(pictures)
    short = (await load(tiny_git, max_new_tokens=3)).predict_batch(pictures)
    assert max(len(title.split()) for title in long) > 3
    assert all(len(title.split()) <= 3 for title in short)
    # Greedy decoding: the first tokens do not depend on how many follow.
    assert all(t.startswith(s) for s, t in zip(short, long, strict=True))


async def test_a_malformed_payload_fails_alone(tiny_git: Path) -> None:
    captioner = await load(tiny_git)
    good = arrays(2)
    bad: list[object] = [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), "text"]
    results = captioner.predict_batch([good[0], *bad, good[1]])
    assert results[0] == captioner.predict_batch([good[0]])[0]
    assert results[-1] == captioner.predict_batch([good[1]])[0]
    assert all(isinstance(result, BadInput) for result in results[1:-1])


async def test_odd_shapes_are_captioned(tiny_git: Path) -> None:
    captioner = await load(tiny_git)
    shape = CaptionInput()
    odd = [Image.new("RGB", size, (200, 30, 30)) for size in [(1, 1), (3, 50), (50, 3)]]
    titles = captioner.predict_batch([shape.prepare(image) for image in odd])
    assert all(isinstance(title, str) for title in titles)


def test_edge_bounds_the_shorter_side_and_the_aspect_ratio() -> None:
    shape = CaptionInput(max_side=448, max_aspect=4.0)
    assert shape.prepare(Image.new("RGB", (300, 200))).shape == (200, 300, 3)
    assert shape.prepare(Image.new("RGB", (1600, 1200))).shape == (448, 597, 3)
    assert shape.prepare(Image.new("RGB", (100, 1000))).shape == (400, 100, 3)
    panorama = shape.prepare(Image.new("RGB", (40_000, 1000)))
    assert panorama.shape == (448, 1792, 3) and panorama.dtype == np.uint8


def test_the_edge_keeps_the_centre() -> None:
    picture = Image.new("RGB", (1000, 100), (0, 0, 255))
    picture.paste((255, 0, 0), (450, 0, 550, 100))  # a red centre square
    kept = CaptionInput(max_side=448, max_aspect=1.0).prepare(picture)
    assert kept.shape == (100, 100, 3)
    assert (kept[..., 0] == 255).all()


async def test_a_missing_folder_is_unavailable() -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        await load("/nonexistent/git-model")


async def test_a_folder_without_a_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="cannot load caption model"):
        await load(tmp_path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_the_hub_id_fails_fast_when_the_hub_is_out_of_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match=r"unreachable.*SLUICEWAY_CAPTION_MODEL"):
        await load(DEFAULT_MODEL, hub_timeout_s=2.0)
    assert time.monotonic() - started < 15


async def test_the_hub_id_with_hf_hub_offline_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        await load(DEFAULT_MODEL)


def test_importing_the_app_does_not_import_torch() -> None:
    code = (
        "import sys, sluiceway.app\n"
        "sluiceway.app.create_app()\n"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
