"""The ONNX Runtime classifier with the packaged ImageNet MobileNetV2: known answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import skimage

from sluiceway.inputs.pixels import prepare_image
from sluiceway.models.base import BatchPolicy
from sluiceway.models.classifier import Pixels
from sluiceway.models.onnx_classifier import IMAGENET_INPUT, OnnxClassifier, imagenet_kind, softmax

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


def test_a_batch_matches_singles(imagenet: OnnxClassifier) -> None:
    images = [photo("chelsea.png"), photo("coffee.png"), photo("astronaut.png")]
    batch = imagenet.predict_batch(images)
    for image, ranked in zip(images, batch, strict=True):
        (single,) = imagenet.predict_batch([image])
        assert [p.label for p in ranked] == [p.label for p in single]
        assert [p.score for p in ranked] == pytest.approx([p.score for p in single], abs=1e-5)


def test_preprocessing_is_torchvision_eval_transform() -> None:
    array = photo("chelsea.png").array  # 451×300: shorter side → 256, centre crop 224
    assert array.shape == (3, 224, 224)
    assert array.dtype == np.float32
    assert -2.2 < float(array.min()) < float(array.max()) < 2.7


def test_softmax_rows_sum_to_one() -> None:
    probabilities = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]], dtype=np.float32))
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert probabilities[0, 0] == pytest.approx(1.0)
