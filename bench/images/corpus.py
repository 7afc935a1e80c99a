"""Varied test photos made from the two shipped bird photos, so no two requests send the same bytes.

Each variant is a random crop of one photo, scaled to a random size and re-encoded as JPEG at a
random quality (a few as PNG), which is what a stream of real uploads looks like to a decoder.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from bench.loadtest import REPO

BIRDS_DIR = REPO.parent / "shared" / "models" / "birds_v1"
PHOTOS = ("bird.jpg", "PurpleGallinule.jpg")
MODEL_FILE = "lite-model_aiy_vision_classifier_birds_V1_3.tflite"
MODEL_SHA256 = "95f59df4cff9053355abcd0b6e5e7e740f6eae19ed8cded32e2c3e8068195093"


def make_variants(folder: Path, count: int, seed: int = 7) -> list[str]:
    """Write ``count`` variant images into ``folder``; return their file names."""
    rng = random.Random(seed)
    sources = [Image.open(BIRDS_DIR / name).convert("RGB") for name in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        source = sources[index % len(sources)]
        width, height = source.size
        keep = rng.uniform(0.7, 1.0)
        w, h = int(width * keep), int(height * keep)
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        side = rng.choice((480, 640, 800, 1024, 1280, 1600))
        scale = side / max(w, h)
        image = source.crop((left, top, left + w, top + h)).resize(
            (max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BILINEAR
        )
        out = io.BytesIO()
        if index % 10 == 9:
            image.save(out, format="PNG", compress_level=3)
            name = f"v{index:05d}.png"
        else:
            image.save(out, format="JPEG", quality=rng.randint(70, 95))
            name = f"v{index:05d}.jpg"
        (folder / name).write_bytes(out.getvalue())
        names.append(name)
    return names
