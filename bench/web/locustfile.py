"""The seed's upload-page load: people open ``/``, classify with ``/predict``, report mistakes.

Run by ``python -m bench.web.run``; alone:
``locust -f bench/web/locustfile.py -H http://127.0.0.1:8000 -u 16 -r 4 -t 30s --headless``.
Each simulated person uploads once through ``/uploads`` at start, so their reports name a photo
the server really stored. Every answer is checked, not only its status.
"""

from __future__ import annotations

import io
import os
import random
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def photos() -> list[bytes]:
    """A few JPEG variants of the scikit-image cat (or the shared bird photo), as phones send."""
    try:
        import skimage

        source = Path(skimage.__file__).parent / "data" / "chelsea.png"
    except ImportError:
        source = REPO.parent / "shared" / "models" / "birds_v1" / "bird.jpg"
    base = Image.open(source).convert("RGB")
    variants = []
    for quality in (80, 85, 90, 95):
        out = io.BytesIO()
        base.save(out, format="JPEG", quality=quality)
        variants.append(out.getvalue())
    return variants


PHOTOS = photos()
ACKNOWLEDGED: list[str] = []
"""Ids of the reports the server answered 200 to; ``run.py`` looks for each in the CSV."""


@events.test_stop.add_listener  # type: ignore[untyped-decorator]  # locust leaves it unannotated
def save_acknowledged(**_: Any) -> None:
    """Write the acknowledged report ids to ``$WEB_ACK_FILE`` when the run ends."""
    path = os.environ.get("WEB_ACK_FILE")
    if path:
        Path(path).write_text("".join(f"{report}\n" for report in ACKNOWLEDGED))


class Person(HttpUser):
    """Someone using the upload page: mostly classifying, sometimes reloading, rarely reporting."""

    wait_time = between(0.1, 0.3)

    def on_start(self) -> None:
        self.image = ""
        response = self.client.post(
            "/uploads", files={"file": ("cat.jpg", random.choice(PHOTOS), "image/jpeg")}
        )
        if response.status_code == 200:
            self.image = response.json()["image"]

    @task(1)
    def index(self) -> None:
        with self.client.get("/", catch_response=True) as response:
            if response.status_code != 200 or 'name="file"' not in response.text:
                response.failure(f"status {response.status_code} or no upload form")

    @task(4)
    def predict(self) -> None:
        files = {"file": ("cat.jpg", random.choice(PHOTOS), "image/jpeg")}
        with self.client.post("/predict", files=files, catch_response=True) as response:
            body = response.json() if response.status_code == 200 else {}
            if not body.get("success") or not body.get("prediction"):
                response.failure(f"status {response.status_code}: {response.text[:80]}")

    @task(1)
    def feedback(self) -> None:
        if not self.image:
            return
        report = f"load test {uuid.uuid4().hex}"
        form = {
            "image": self.image,
            "prediction": "Egyptian cat",
            "score": f"{random.random():.4f}",
            "correct_label": report,
        }
        with self.client.post(
            "/feedback", data=form, headers={"Accept": "application/json"}, catch_response=True
        ) as response:
            if response.status_code != 200 or response.json() != {"saved": True}:
                response.failure(f"status {response.status_code}: {response.text[:80]}")
            else:
                ACKNOWLEDGED.append(report)
