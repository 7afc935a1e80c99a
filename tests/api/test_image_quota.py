"""A per-client admission quota on the image classifiers: a client that floods gets ``429`` with
``Retry-After`` for what it sends beyond its quota, while another client is still served."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import skimage
from PIL import Image

from sluiceway.api.predict import UPLOAD_MODEL
from sluiceway.app import create_app
from sluiceway.kinds import build_kinds
from sluiceway.models.base import Model, ModelKind
from sluiceway.models.costs import CallCost
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.runtime.metrics import Metrics
from tests.conftest import app_client, fast_settings
from tests.fixtures.images import encoded
from tests.fixtures.waiting import eventually


class _Gate:
    """Shut, it holds every model call until opened (the app's start-up warm-up runs before)."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.opened.set()
        self.calls = 0
        """Model calls started since the gate was shut."""

    def shut(self) -> None:
        self.opened.clear()
        self.calls = 0


class _GatedModel(Model):
    """The real model, each call held while the test's gate is shut (a busy compute slot)."""

    def __init__(self, model: Model, gate: _Gate) -> None:
        self._model = model
        self._gate = gate

    @property
    def nbytes(self) -> int:
        return self._model.nbytes

    async def infer(self, inputs: Sequence[Any]) -> list[Any]:
        self._gate.calls += 1
        await self._gate.opened.wait()
        return await self._model.infer(inputs)


class _GatedKind(ModelKind):
    def __init__(self, kind: ModelKind, gate: _Gate) -> None:
        self.name = kind.name
        self.policy = kind.policy
        self._kind = kind
        self._gate = gate

    def call_cost(self) -> CallCost:
        return self._kind.call_cost()

    async def load(self, spec: Any) -> Model:
        return _GatedModel(await self._kind.load(spec), self._gate)


def _photos(count: int) -> list[bytes]:
    """Distinct JPEG crops of scikit-image's cat: no two requests send the same image."""
    cat = Image.fromarray(skimage.data.chelsea())
    return [encoded(cat.crop((i, i, 300 + i, 250 + i)), "JPEG") for i in range(count)]


async def test_a_client_over_its_image_quota_gets_429_while_another_is_served() -> None:
    settings = fast_settings(
        imagenet_slots=1, imagenet_max_batch=1, image_client_quota=2, retry_after_s=3
    )
    gate = _Gate()
    kinds = [
        _GatedKind(kind, gate) if kind.name == UPLOAD_MODEL else kind
        for kind in build_kinds(settings)
    ]
    metrics = Metrics()
    app = create_app(settings, LocalDispatcher(kinds, 1 << 30, metrics))
    photos = _photos(10)
    async with app_client(app):
        gate.shut()
        flooder = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("192.0.2.10", 5000)),
            base_url="http://sluiceway.test",
            timeout=30,
        )
        calm = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("198.51.100.7", 5000)),
            base_url="http://sluiceway.test",
            timeout=30,
        )

        def upload(client: httpx.AsyncClient, photo: bytes) -> Any:
            return client.post("/predict", files={"file": ("cat.jpg", photo, "image/jpeg")})

        try:
            flood = [asyncio.ensure_future(upload(flooder, photo)) for photo in photos[:6]]
            model = {"model": UPLOAD_MODEL}

            def queued_now() -> float:
                # The dispatcher's own metrics (the app's /metrics has a registry of its own).
                value = metrics.registry.get_sample_value("sluiceway_queue_depth", model)
                return float("nan") if value is None else value

            # Every flood image ends up refused (answered at once, the gate being shut), waiting in
            # the queue, or in the one call that holds the only slot.
            await eventually(
                lambda: (
                    gate.calls == 1
                    and sum(f.done() for f in flood) + queued_now() == len(flood) - 1
                ),
                timeout_s=30,
            )
            refused_early = [f for f in flood if f.done()]
            # The quota counts images queued or in a call: one in the call, one queued.
            assert len(refused_early) >= 4, "at most one running and one queued"
            assert all(f.result().status_code == 429 for f in refused_early)
            # Top the flooder up to exactly its quota (the one in the call and one queued)...
            spare = iter(photos[6:])
            while queued_now() < 1:
                before = queued_now()
                flood.append(asyncio.ensure_future(upload(flooder, next(spare))))
                await eventually(lambda b=before: queued_now() > b, timeout_s=30)
            # ...so its next image is refused at once.
            over = await upload(flooder, next(spare))
            assert over.status_code == 429
            # The other client is not counted against the flooder's quota: it is admitted...
            before = queued_now()
            served = asyncio.ensure_future(upload(calm, next(spare)))
            await eventually(lambda: queued_now() == before + 1 or served.done(), timeout_s=30)
            assert queued_now() == before + 1 and not served.done()
        finally:
            gate.opened.set()  # a failed check must not leave calls held
        # ...and answered, as are the flooder's admitted images.
        assert (await served).status_code == 200
        statuses = [(await f).status_code for f in flood] + [over.status_code]
        assert statuses.count(200) == 2, "one ran, one waited"
        assert statuses.count(429) == len(statuses) - 2
        refused = next(f.result() for f in flood if f.result().status_code == 429)
        assert refused.headers["retry-after"] == "3"
        assert "quota" in refused.json()["detail"]
        rejected = metrics.registry.get_sample_value("sluiceway_quota_rejected_total", model)
        assert rejected == statuses.count(429)
        await flooder.aclose()
        await calm.aclose()
