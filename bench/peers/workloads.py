"""The two workloads every server in the peer benchmark answers, and how each answer is checked.

A fast load generator (``wrk``) cannot pair a response with its request, so each workload is
built so that every correct answer is the same text, and any mix-up shows:

- Kiosk (MISSION.md §1): the seed's five restaurants (``bench/kiosk/scenario.py``), one query
  vector per request. Each restaurant's queries are grid points its own KNN labels ``1`` and as
  many other restaurants' KNNs as possible do not: a correct answer is always ``[1]``, and an
  answer from another restaurant's model is caught for the pairs ``mixup_coverage`` counts.
- Upload: ``POST /predict`` with a JPEG, ImageNet MobileNetV2. Every photo is a variant (crop,
  quality) of one cat that the model ranks first as the same class in every variant; the check
  is that class's name in the answer.
- Birds (MISSION.md §2): ``POST /`` with five image URLs and ``k=3``; the photos are variants of
  the shipped bird photo that the AIY model ranks first as the same bird; the check is that
  bird's name in the answer and no failed image.
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

from bench.kiosk.scenario import answer_key, training_sets

REPO = Path(__file__).resolve().parents[2]
EXPECTED_KIOSK_LABEL = 1
UPLOAD_BOUNDARY = "sluicewaybenchboundary"


def kiosk_bodies(per_restaurant: int = 40, seed: int = 7) -> list[bytes]:
    """Request bodies, restaurants interleaved so any 5 consecutive ones cover all five."""
    sets = training_sets()
    answers = [answer_key(training) for training in sets]
    rng = random.Random(seed)
    queries: list[list[tuple[int, int]]] = []
    for own, answer in enumerate(answers):
        others = [other for i, other in enumerate(answers) if i != own]
        # Points this restaurant labels 1, those the most other restaurants label otherwise first.
        points = sorted(
            (point for point, label in answer.items() if label == EXPECTED_KIOSK_LABEL),
            key=lambda point: -sum(other[point] != EXPECTED_KIOSK_LABEL for other in others),
        )[:per_restaurant]
        if not points:
            raise ValueError(f"restaurant {own} labels no point {EXPECTED_KIOSK_LABEL}")
        queries.append([rng.choice(points) for _ in range(per_restaurant)])
    bodies = []
    for index in range(per_restaurant):
        for restaurant, training in enumerate(sets):
            body = {
                "training_data": {"training_data": training},
                "query_input": {"query_input": list(queries[restaurant][index])},
            }
            bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return bodies


def mixup_coverage(bodies: list[bytes]) -> float:
    """The share of (request, other restaurant) pairs whose mix-up would give a wrong answer."""
    sets = training_sets()
    answers = {json.dumps(t): answer_key(t) for t in sets}
    caught = total = 0
    for body in bodies:
        request = json.loads(body)
        own = json.dumps(request["training_data"]["training_data"])
        point = tuple(request["query_input"]["query_input"])
        for key, answer in answers.items():
            if key != own:
                total += 1
                caught += answer[point] != EXPECTED_KIOSK_LABEL
    return caught / total


def cat_variants(count: int = 16, seed: int = 11) -> list[bytes]:
    """JPEG variants of scikit-image's cat: random crops of 80-100 % and qualities 75-95."""
    import skimage

    source = Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png").convert("RGB")
    rng = random.Random(seed)
    variants = []
    for _ in range(count):
        crop = random_crop(source, rng, 0.8)
        variants.append(jpeg(crop, rng.randint(75, 95)))
    return variants


def random_crop(source: Image.Image, rng: random.Random, smallest: float) -> Image.Image:
    """A crop of ``source`` at a random place, both sides scaled by one random factor from
    ``smallest`` to 1 (the variants of both photo workloads are made so)."""
    width, height = source.size
    scale = rng.uniform(smallest, 1.0)
    w, h = int(width * scale), int(height * scale)
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return source.crop((left, top, left + w, top + h))


def jpeg(image: Image.Image, quality: int) -> bytes:
    """``image`` as a JPEG file's bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def expected_upload_class(variants: list[bytes]) -> str:
    """The ImageNet class (Keras spelling) the packaged model ranks first for every variant."""
    import onnxruntime as ort

    from sluiceway.inputs.pixels import prepare_image
    from sluiceway.models.onnx_classifier import (
        IMAGENET_INPUT,
        imagenet_labels,
        imagenet_model_path,
        keras_name,
    )

    session = ort.InferenceSession(str(imagenet_model_path()), providers=["CPUExecutionProvider"])
    batch = np.stack([prepare_image(data, IMAGENET_INPUT, 40_000_000) for data in variants])
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    tops = {int(row.argmax()) for row in logits}
    if len(tops) != 1:
        raise ValueError(f"the variants disagree on the top class: {sorted(tops)}")
    return keras_name(imagenet_labels()[tops.pop()])


def multipart(data: bytes, name: str = "cat.jpg") -> bytes:
    """A multipart/form-data body with ``data`` as the field ``file``."""
    return (
        (
            f"--{UPLOAD_BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{UPLOAD_BOUNDARY}--\r\n".encode()
    )


# The bird API (MISSION.md §2): ``POST /`` with image URLs and ``k``. The photos are variants of
# the shipped bird photo served by a local image server; every URL carries a counter that wrk
# fills in (``@N@``), so no two requests name the same image and nothing can be answered from a
# cache. The check: no failed image, and the name every variant ranks first.
BIRDS_PER_REQUEST = 5
BIRDS_K = 3
BIRDS_MODEL = "birds_v1/lite-model_aiy_vision_classifier_birds_V1_3.tflite"
BIRDS_MODEL_SHA256 = "95f59df4cff9053355abcd0b6e5e7e740f6eae19ed8cded32e2c3e8068195093"
BIRDS_PHOTO = "birds_v1/bird.jpg"


def shared_models() -> Path | None:
    """``../shared/models`` (or ``SLUICEWAY_TEST_MODELS``) when the bird files are there."""
    for folder in (os.environ.get("SLUICEWAY_TEST_MODELS"), REPO.parent / "shared" / "models"):
        if folder and (Path(folder) / BIRDS_MODEL).is_file():
            return Path(folder)
    return None


def bird_variants(photo: bytes, count: int = 16, seed: int = 13) -> list[bytes]:
    """JPEG variants of ``photo``: random crops of 85-100 %, sizes 480-1024 px, quality 75-95."""
    source = Image.open(io.BytesIO(photo)).convert("RGB")
    rng = random.Random(seed)
    variants = []
    for _ in range(count):
        crop = random_crop(source, rng, 0.85)
        w, h = crop.size
        side = rng.randint(480, 1024)
        crop = crop.resize((side, round(side * h / w)), Image.Resampling.BILINEAR)
        variants.append(jpeg(crop, rng.randint(75, 95)))
    return variants


def expected_bird(model: Path, variants: list[bytes]) -> str:
    """The bird name Sluiceway's labels give the class every variant ranks first, with both
    Sluiceway's preparation and the peers' (a plain resize): the two must agree."""
    from ai_edge_litert.interpreter import Interpreter

    from bench.peers.servers.common import Birds
    from sluiceway.inputs.pixels import prepare_image
    from sluiceway.models.tflite_classifier import BIRDS_INPUT

    data = model.read_bytes()
    labels = bird_labels(data)
    interpreter = Interpreter(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    tops = set()
    for variant in variants:
        for pixels in (prepare_image(variant, BIRDS_INPUT, 40_000_000), Birds.preprocess(variant)):
            interpreter.set_tensor(source["index"], pixels[None])
            interpreter.invoke()
            tops.add(int(interpreter.get_tensor(target["index"])[0].argmax()))
    if len(tops) != 1:
        raise ValueError(f"the bird variants disagree on the top class: {sorted(tops)}")
    return str(labels[tops.pop()])


def bird_labels(model: bytes) -> list[str]:
    """The class names Sluiceway gives the model (its embedded list), for the peers to use too."""
    from sluiceway.models.tflite_classifier import embedded_labels

    return embedded_labels(model, "probability-labels-en.txt")


def bird_body(base_url: str, names: list[str], first: int) -> bytes:
    """A bird API body naming ``BIRDS_PER_REQUEST`` photos from ``first`` on, each URL unique
    per request once wrk replaces ``@N@``."""
    urls = [
        f"{base_url}/{names[(first + i) % len(names)]}?r=@N@-{i}" for i in range(BIRDS_PER_REQUEST)
    ]
    return json.dumps({"images": urls, "k": BIRDS_K}, separators=(",", ":")).encode()
