"""The LiteRT classifier with the real AIY birds model, downloaded from a local server."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sluiceway.errors import BadInput, ModelUnavailable
from sluiceway.inputs.pixels import prepare_image
from sluiceway.models.base import BatchPolicy
from sluiceway.models.classifier import Pixels, Prediction, ranked
from sluiceway.models.tflite_classifier import (
    BIRDS_INPUT,
    TfliteClassifier,
    TfliteClassifierKind,
    embedded_labels,
    tflite_nbytes,
)
from sluiceway.split.wire import pack, unpack
from sluiceway.stores.artifacts import ArtifactStore
from tests.fixtures.external import BIRDS_FILES, BIRDS_MODEL, require
from tests.fixtures.fileserver import FileServer
from tests.fixtures.images import BIRDS_MODEL_FILE, BIRDS_SHA256

# How far a reduced-scale decode may move a top score: measured 0.012 (bird.jpg, 3/8) and 0.039
# (PurpleGallinule.jpg, 1/2, as with Pillow's draft before).
SCORE_MOVE = 0.05


def birds_kind(
    server: FileServer, cache: Path, path: str = f"files/{BIRDS_MODEL_FILE}", wide: bool = True
) -> TfliteClassifierKind:
    return TfliteClassifierKind(
        "birds",
        BatchPolicy(slots=2, max_batch=8),
        url=server.url(path),
        sha256=BIRDS_SHA256,
        store=ArtifactStore(cache),
        wide=wide,
    )


@pytest.fixture
async def birds(birds_server: FileServer, model_cache: Path) -> TfliteClassifier:
    return await birds_kind(birds_server, model_cache).load(None)


def photo(name: str, k: int = 3, draft: bool = False) -> Pixels:
    [file] = [file for file in BIRDS_FILES if file.name == name]
    data = require(file).read_bytes()
    return Pixels(prepare_image(data, BIRDS_INPUT, 40_000_000, draft=draft), k)


def test_embedded_labels_name_the_background_class() -> None:
    labels = embedded_labels(require(BIRDS_MODEL).read_bytes(), "probability-labels-en.txt")
    assert len(labels) == 965
    assert labels[964] == "background"
    assert labels[918] == "Phalacrocorax varius varius"


def test_known_birds_match_the_reference_scores(birds: TfliteClassifier) -> None:
    duck, gallinule = birds.predict_batch([photo("bird.jpg"), photo("PurpleGallinule.jpg")])
    # Reference (SOURCES.md): plain bilinear resize, no draft decode: q=192 and q=226 of 256.
    assert duck[0] == Prediction("Aix galericulata", 192 / 256)
    assert gallinule[0] == Prediction("Porphyrio martinicus", 226 / 256)
    assert [p.label for p in duck[1:]] == [
        "Coccothraustes coccothraustes",
        "Gallus gallus domesticus",
    ]


def test_draft_decoding_keeps_the_top_class(birds: TfliteClassifier) -> None:
    # bird.jpg (1024×768) decodes at 3/8 scale, PurpleGallinule.jpg (634×482) at 1/2: the
    # top class stays and its score stays near the reference's (q=192 and q=226 of 256).
    duck, gallinule = birds.predict_batch(
        [photo("bird.jpg", draft=True), photo("PurpleGallinule.jpg", draft=True)]
    )
    assert duck[0].label == "Aix galericulata"
    assert gallinule[0].label == "Porphyrio martinicus"
    assert duck[0].score == pytest.approx(192 / 256, abs=SCORE_MOVE)
    assert gallinule[0].score == pytest.approx(226 / 256, abs=SCORE_MOVE)


def test_a_batch_equals_the_same_images_one_by_one(birds: TfliteClassifier) -> None:
    images = [photo("bird.jpg", k=10), photo("PurpleGallinule.jpg", k=10)]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    images.append(Pixels(noise, 10))
    batch = birds.predict_batch(images * 2)
    singles = [birds.predict_batch([image])[0] for image in images * 2]
    assert batch == singles


def test_k_is_per_item_and_a_bad_payload_fails_alone(birds: TfliteClassifier) -> None:
    small = Image.new("RGB", (10, 10))
    results = birds.predict_batch(
        [photo("bird.jpg", k=1), Pixels(np.asarray(small), 3), photo("bird.jpg", k=0)]
    )
    assert len(results[0]) == 1
    assert isinstance(results[1], BadInput)
    assert results[2] == []


async def test_a_failed_download_is_model_unavailable(
    photos_server: FileServer, tmp_path: Path
) -> None:
    with pytest.raises(ModelUnavailable, match="HTTP 404"):
        await birds_kind(photos_server, tmp_path, "files/missing.tflite").load(None)


def test_payloads_and_results_cross_the_split_mode_wire(birds: TfliteClassifier) -> None:
    payload = photo("PurpleGallinule.jpg", k=2)
    (result,) = birds.predict_batch([unpack(pack(payload))])
    assert ranked(unpack(pack(result))) == birds.predict_batch([payload])[0]
    assert ranked(unpack(pack(result)))[0].label == "Porphyrio martinicus"


async def test_a_wide_call_ranks_as_a_call_on_one_core(
    birds_server: FileServer, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sluiceway.models.cores.usable_cores", lambda: 2)
    wide = await birds_kind(birds_server, model_cache).load(None)
    assert wide.runs_wide
    noise = np.random.default_rng(1).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    images = [photo("bird.jpg", k=5), Pixels(noise, 5), Pixels(np.zeros(3), 5)]
    narrow_ranks, wide_ranks = wide.predict_batch(images), wide.infer_wide(images)
    assert wide_ranks[:2] == narrow_ranks[:2]  # XNNPACK's threads split work, not arithmetic
    assert isinstance(wide_ranks[2], BadInput)  # a malformed payload fails alone here too
    assert wide.infer_wide(images[:1]) == wide.predict_batch(images[:1])
    # The wide interpreter is counted as one more interpreter.
    one_core = await birds_kind(birds_server, model_cache, wide=False).load(None)
    assert not one_core.runs_wide
    file_bytes = require(BIRDS_MODEL).stat().st_size
    assert one_core.nbytes == tflite_nbytes(file_bytes, 224, 2, 8)
    assert wide.nbytes == tflite_nbytes(file_bytes, 224, 3, 8) > one_core.nbytes


async def test_no_wide_interpreter_on_one_core(
    birds_server: FileServer, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sluiceway.models.cores.usable_cores", lambda: 1)
    birds = await birds_kind(birds_server, model_cache).load(None)
    assert not birds.runs_wide
    with pytest.raises(NotImplementedError):
        birds.infer_wide([photo("bird.jpg")])


def test_wide_calls_that_meet_take_a_slots_interpreter(
    birds: TfliteClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two calls that both found the process idle: the second does not wait for the wide
    interpreter (it runs one call at once) but takes a slot's."""
    if not birds.runs_wide:
        pytest.skip("one core: no wide interpreter")
    images = [photo("bird.jpg", k=3), photo("PurpleGallinule.jpg", k=3)]
    expected = birds.predict_batch(images)
    gate = threading.Event()
    release = threading.Event()
    wide_runner = birds._wide
    assert wide_runner is not None
    plain_run = wide_runner.run

    def held_run(batch: np.ndarray) -> np.ndarray:
        gate.set()
        release.wait(10)
        return plain_run(batch)

    monkeypatch.setattr(wide_runner, "run", held_run)
    first: list[object] = []
    holder = threading.Thread(target=lambda: first.append(birds.infer_wide(images)))
    holder.start()
    assert gate.wait(10)
    try:
        assert birds.infer_wide(images) == expected  # while the first holds the wide one
    finally:
        release.set()
        holder.join(10)
    assert first == [expected]
