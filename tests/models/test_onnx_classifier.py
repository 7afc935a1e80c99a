"""The ONNX Runtime classifier with the packaged ImageNet MobileNetV2: known answers."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from sluiceway.errors import BadInput
from sluiceway.inputs.images import decode_image
from sluiceway.inputs.pixels import prepare_image
from sluiceway.models.base import BatchPolicy
from sluiceway.models.classifier import Pixels
from sluiceway.models.onnx_classifier import (
    IMAGENET_INPUT,
    OnnxClassifier,
    imagenet_kind,
    imagenet_labels,
    imagenet_model_path,
    keras_name,
    onnx_nbytes,
    softmax,
)

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="module")
def imagenet() -> OnnxClassifier:
    return asyncio.run(imagenet_kind(BatchPolicy(slots=1, max_batch=8)).load(None))


def photo(name: str, k: int = 5) -> Pixels:
    data = (SKIMAGE_DATA / name).read_bytes()
    return Pixels(prepare_image(data, IMAGENET_INPUT, 40_000_000), k)


def test_known_photos(imagenet: OnnxClassifier) -> None:
    cat, coffee = imagenet.predict_batch([photo("chelsea.png"), photo("coffee.png")])
    assert cat[0].label == "Egyptian cat"
    assert cat[0].score == pytest.approx(0.714, abs=0.01)
    assert coffee[0].label == "espresso"
    assert coffee[0].score == pytest.approx(0.992, abs=0.01)


@pytest.mark.parametrize(
    ("name", "label"), [("chelsea.png", "Egyptian cat"), ("coffee.png", "espresso")]
)
def test_a_large_jpeg_decoded_at_an_eighth_scale_scores_as_at_full_scale(
    imagenet: OnnxClassifier, name: str, label: str
) -> None:
    # Enlarged 2.5x, the photo decodes at 3/8 scale (Pillow's draft would take 1/2) before the
    # shorter side is resized to 256: the model's answer is the full-size decode's.
    picture = Image.open(SKIMAGE_DATA / name).convert("RGB")
    big = picture.resize((picture.width * 5 // 2, picture.height * 5 // 2))
    out = io.BytesIO()
    big.save(out, format="JPEG", quality=90)
    scaled, full = (
        Pixels(prepare_image(out.getvalue(), IMAGENET_INPUT, 40_000_000, draft=draft), 1)
        for draft in (True, False)
    )
    decoded = decode_image(out.getvalue(), draft=IMAGENET_INPUT.draft).image
    assert decoded.height == -(-big.height * 3 // 8)  # 3/8, rounded up as libjpeg does
    scaled_best, full_best = (ranked[0] for ranked in imagenet.predict_batch([scaled, full]))
    assert scaled_best.label == full_best.label == label
    assert scaled_best.score == pytest.approx(full_best.score, abs=0.03)


def test_a_batch_matches_singles(imagenet: OnnxClassifier) -> None:
    images = [photo("chelsea.png"), photo("coffee.png"), photo("astronaut.png")]
    batch = imagenet.predict_batch(images)
    for image, ranked in zip(images, batch, strict=True):
        (single,) = imagenet.predict_batch([image])
        assert [p.label for p in ranked] == [p.label for p in single]
        assert [p.score for p in ranked] == pytest.approx([p.score for p in single], abs=1e-5)


def test_a_wide_call_ranks_as_a_call_on_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sluiceway.models.cores.usable_cores", lambda: 2)
    policy = BatchPolicy(slots=2, max_batch=8)
    wide = asyncio.run(imagenet_kind(policy).load(None))
    assert wide.runs_wide
    images = [photo("chelsea.png"), photo("coffee.png"), Pixels(np.zeros(3), 5)]
    narrow_ranks, wide_ranks = wide.predict_batch(images), wide.infer_wide(images)
    for one, other in zip(narrow_ranks[:2], wide_ranks[:2], strict=True):
        assert [p.label for p in one] == [p.label for p in other]
        assert [p.score for p in one] == pytest.approx([p.score for p in other], abs=1e-5)
    assert isinstance(wide_ranks[2], BadInput)  # a malformed payload fails alone here too
    # The wide session is counted: a second session and one more image's arena.
    one_core = asyncio.run(imagenet_kind(policy, wide=False).load(None))
    assert not one_core.runs_wide
    file_bytes = imagenet_model_path().stat().st_size
    side = IMAGENET_INPUT.size
    assert one_core.nbytes == onnx_nbytes(file_bytes, side, policy)
    assert wide.nbytes == onnx_nbytes(file_bytes, side, policy, wide=True) > one_core.nbytes


def test_images_run_one_at_a_time_give_the_stacked_batch_probabilities(
    imagenet: OnnxClassifier,
) -> None:
    images = [photo(name).array for name in ("chelsea.png", "coffee.png", "astronaut.png")]
    one_at_a_time = imagenet.probabilities_of(images)
    stacked = imagenet.probabilities(np.stack(images))
    assert one_at_a_time.shape == (3, 1000)
    assert one_at_a_time.dtype == np.float32
    np.testing.assert_allclose(one_at_a_time, stacked, rtol=0, atol=1e-6)


def test_preprocessing_is_torchvision_eval_transform() -> None:
    array = photo("chelsea.png").array  # 451×300: shorter side → 256, centre crop 224
    assert array.shape == (3, 224, 224)
    assert array.dtype == np.float32
    assert -2.2 < float(array.min()) < float(array.max()) < 2.7


def test_softmax_rows_sum_to_one() -> None:
    probabilities = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]], dtype=np.float32))
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert probabilities[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("class_id", "name"),
    [
        (0, "tench"),
        (1, "goldfish"),
        (2, "great_white_shark"),
        (134, "crane"),
        (248, "Eskimo_dog"),
        (285, "Egyptian_cat"),
        (517, "crane"),
        (837, "sunglasses"),
        (999, "toilet_tissue"),
    ],
)
def test_names_as_keras_decode_predictions_spells_them(class_id: int, name: str) -> None:
    assert keras_name(imagenet_labels()[class_id]) == name


def test_every_keras_name_is_a_single_token() -> None:
    names = [keras_name(label) for label in imagenet_labels()]
    assert len(names) == 1000
    assert all(name and " " not in name and "," not in name for name in names)
