"""The one path every image takes to a classifier: bytes → checked picture → job → ranked classes.

The bird API, ``/predict``, the upload page, the native classify API and ``sluiceway classify``
all call ``ImageClassifiers.classify``. It decodes and prepares the picture in a worker thread
(libjpeg-turbo, Pillow and numpy release the GIL), then submits the model-ready array as one job,
so the batcher can put images from many concurrent requests into one model call. It knows
nothing of HTTP.

The decodes run in a pool of their own, half the CPUs by default (``decode_threads``): in the
default executor they queued among the model calls and, up to six at once, crowded the model's
threads off a 2-core machine's cores. A decode costs a fifth to a third of a model call, so
half the cores keep up with the model on the other half (``bench/peers/AB.md``: 0.4-0.5 ms
less CPU per image for ``/predict``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from sluiceway.config import Settings
from sluiceway.errors import BadInput, ModelUnavailable
from sluiceway.inputs.images import sniff
from sluiceway.inputs.pixels import ImageInput, prepare_image
from sluiceway.kinds import builtin_records
from sluiceway.models.classifier import Pixels, Prediction, ranked
from sluiceway.runtime.dispatch import Dispatcher
from sluiceway.runtime.jobs import Job

_FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WebP", "bmp": "BMP"}


class ImageClassifiers:
    """The image classifiers a dispatcher serves, and the way an image reaches one.

    ``inputs`` maps each classifier's name to the input it takes; the model registry keeps it
    current as repository classifiers load and unload. Without it, the built-in classifiers.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        settings: Settings,
        inputs: Mapping[str, ImageInput] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.max_pixels = settings.max_image_pixels
        self.jpeg_draft = settings.jpeg_draft
        self.timeout_s = settings.request_timeout_s
        if inputs is None:
            inputs = {r.name: r.image for r in builtin_records(settings) if r.image is not None}
        self._inputs = inputs
        # Its threads start on first use and end with the pool (when the app is collected).
        threads = settings.decode_threads or max(1, (os.cpu_count() or 2) // 2)
        self._decoder = ThreadPoolExecutor(threads, thread_name_prefix="sluiceway-decode")

    def names(self) -> list[str]:
        """The image classifiers the dispatcher runs, in its order."""
        return [name for name in self.dispatcher.models() if name in self._inputs]

    def input_of(self, model: str) -> ImageInput:
        """What ``model`` takes; ``ModelUnavailable`` if no classifier of that name is served."""
        spec = self._inputs.get(model)
        if spec is None or model not in self.dispatcher.models():
            raise ModelUnavailable(f"no image classifier named {model!r}")
        return spec

    async def classify(
        self,
        model: str,
        data: bytes,
        k: int,
        *,
        deadline: float | None = None,
        formats: frozenset[str] | None = None,
        client: str | None = None,
    ) -> list[Prediction]:
        """The ``k`` best classes of one encoded image by ``model``, best first.

        ``formats`` (``sniff`` names such as ``png``) narrows the accepted file types;
        ``BadInput`` says why an image was refused. ``client`` (its address) is whom the
        model's admission quota counts the image against; ``QuotaExceeded`` when it is over.
        """
        spec = self.input_of(model)
        if formats is not None and sniff(data) not in formats:
            raise BadInput(f"not a {_one_of(formats)} image")
        prepare = functools.partial(prepare_image, data, spec, self.max_pixels, self.jpeg_draft)
        pixels = await asyncio.get_running_loop().run_in_executor(self._decoder, prepare)
        job = Job(
            model=model,
            payload=Pixels(pixels, k),
            deadline=deadline if deadline is not None else time.time() + self.timeout_s,
            tenant=client,
        )
        return ranked(await self.dispatcher.submit(job))


def _one_of(formats: frozenset[str]) -> str:
    known = [shown for name, shown in _FORMAT_NAMES.items() if name in formats]
    names = known + sorted(name.upper() for name in formats if name not in _FORMAT_NAMES)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
