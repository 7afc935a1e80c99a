"""Image captions with a GIT model (``GitForCausalLM`` + ``AutoProcessor``), batched generation.

The architecture of ``microsoft/git-base-textcaps``, loaded from a folder written by
``save_pretrained`` or, when the machine is online, from a hub id. torch and transformers come
with the ``captions`` extra and are imported only when the model loads, so the other clients
never pay for them.

A job's payload is a ``uint8`` RGB array (height × width × 3) that the edge has already decoded
and shrunk (``CaptionInput.prepare``); the processor's image part (resize, crop, normalise) runs
here, inside the compute call. Measured on git-base: about 5 ms per picture against about a
second of generation per picture, so moving it to the edge would save under 1 % of the compute
slot while tying the edge (and split mode's API nodes) to torch and the model's files.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from sluiceway.errors import BadInput, ModelUnavailable
from sluiceway.models.base import BatchPolicy, ModelKind, ThreadedModel

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "microsoft/git-base-textcaps"
EXTRA_HINT = "install the captions extra: pip install 'sluiceway[captions]'"


@dataclass(frozen=True, slots=True)
class CaptionInput:
    """How the edge bounds a picture before it is queued: shorter side and aspect ratio.

    GIT's processor resizes the shorter side to its input size (224 for git-base) and crops the
    centre square, so a shorter side of twice that keeps all the detail it will use, and cropping
    the longer side to ``max_aspect`` times the shorter one removes only what it would crop.
    Both keep the payload small (a few hundred KB) whatever the upload was.
    """

    max_side: int = 448
    max_aspect: float = 4.0

    @property
    def draft(self) -> tuple[int, int]:
        """The least size a JPEG may be decoded at (DCT scaling) without losing what is kept."""
        return (self.max_side, self.max_side)

    def prepare(self, image: Image.Image) -> np.ndarray:
        """An RGB picture as a bounded ``uint8`` array (height × width × 3)."""
        width, height = image.size
        short = min(width, height)
        longest = max(short, int(short * self.max_aspect))
        if width > longest or height > longest:
            left = max(0, (width - longest) // 2)
            top = max(0, (height - longest) // 2)
            image = image.crop((left, top, left + min(width, longest), top + min(height, longest)))
            width, height = image.size
        if short > self.max_side:
            scale = self.max_side / short
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            # reducing_gap: box-reduce by an integer factor first, then a bicubic pass; several
            # times faster than bicubic on a full-size photo, with the same result to the eye.
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


_ACTIVATIONS_PER_PICTURE = 0.04  # of the weights' bytes; see Captioner


class Captioner(ThreadedModel):
    """A loaded GIT model and its processor: one greedy ``generate`` call per batch."""

    def __init__(
        self, model: Any, processor: Any, *, max_new_tokens: int, threads: int, max_batch: int = 8
    ) -> None:
        self._model = model
        self._processor = processor
        self._max_new_tokens = max_new_tokens
        self._threads = threads
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        # Measured as process RSS on a git-base-sized model (706 MB of weights), two runs:
        # 680-711 MB after a one-picture call, 815-956 MB after an 8-picture one, which
        # torch's allocator keeps: about 4 % of the weights per picture of the largest batch.
        self._nbytes = int(weights * (1 + _ACTIVATIONS_PER_PICTURE * max_batch))

    @property
    def nbytes(self) -> int:
        return int(self._nbytes)

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        """Caption each picture; a malformed payload fails alone, not the batch."""
        import torch

        # Set here, in the compute thread: torch's intra-op pool size is read per thread.
        torch.set_num_threads(self._threads)
        results: list[Any] = [None] * len(inputs)
        good: list[int] = []
        images: list[Image.Image] = []
        for index, item in enumerate(inputs):
            if (
                isinstance(item, np.ndarray)
                and item.dtype == np.uint8
                and item.ndim == 3
                and item.shape[2] == 3
                and item.shape[0] > 0
                and item.shape[1] > 0
            ):
                good.append(index)
                # PIL images, not arrays: the processor would guess a 3-pixel-tall array's
                # channel axis wrong.
                images.append(Image.fromarray(item, "RGB"))
            else:
                results[index] = BadInput("caption input must be an RGB uint8 array")
        if images:
            pixels = self._processor(images=images, return_tensors="pt").pixel_values
            with torch.inference_mode():
                tokens = self._model.generate(
                    pixel_values=pixels,
                    max_new_tokens=self._max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                )
            texts = self._processor.batch_decode(tokens, skip_special_tokens=True)
            for index, text in zip(good, texts, strict=True):
                results[index] = text.strip()
        return results


class GitCaptioning(ModelKind):
    """The ``caption`` model kind: a GIT model from a folder or (online) a hub id."""

    name = "caption"

    def __init__(
        self,
        policy: BatchPolicy,
        *,
        source: str = DEFAULT_MODEL,
        max_new_tokens: int = 20,
        threads: int = 1,
        hub_timeout_s: float = 5.0,
    ) -> None:
        self.policy = policy
        self.source = source
        self.max_new_tokens = max_new_tokens
        self.threads = threads
        self.hub_timeout_s = hub_timeout_s

    async def load(self, spec: Any) -> Captioner:
        """Load the model in a thread (seconds for git-base); every failure is ModelUnavailable."""
        return await asyncio.to_thread(self._load)

    def _load(self) -> Captioner:
        try:
            import torch
            from transformers import AutoProcessor, GitForCausalLM
            from transformers.utils import logging as transformers_logging
        except ImportError as error:
            raise ModelUnavailable(f"captions need torch and transformers: {EXTRA_HINT}") from error
        # A server's log is no terminal: no "Loading weights" progress bars in it.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        torch.set_num_threads(self.threads)
        folder = Path(self.source).expanduser()
        if folder.is_dir():
            return self._from(AutoProcessor, GitForCausalLM, str(folder), local_files_only=True)
        if _looks_like_path(self.source):
            raise ModelUnavailable(f"caption model folder {self.source} does not exist")
        try:  # a hub id already in the local hub cache needs no network
            return self._from(AutoProcessor, GitForCausalLM, self.source, local_files_only=True)
        except ModelUnavailable:
            pass
        self._check_hub()
        logger.info("fetching caption model %s from the hub", self.source)
        return self._from(AutoProcessor, GitForCausalLM, self.source, local_files_only=False)

    def _from(
        self, processors: Any, models: Any, source: str, *, local_files_only: bool
    ) -> Captioner:
        try:
            processor = processors.from_pretrained(source, local_files_only=local_files_only)
            model = models.from_pretrained(source, local_files_only=local_files_only)
        except Exception as error:  # transformers raises OSError, ValueError, KeyError, ...
            raise ModelUnavailable(f"cannot load caption model {source}: {error}") from error
        model.eval()
        logger.info("caption model %s loaded", source)
        return Captioner(
            model,
            processor,
            max_new_tokens=self.max_new_tokens,
            threads=self.threads,
            max_batch=self.policy.max_batch,
        )

    def _check_hub(self) -> None:
        """Fail in seconds when the hub is out of reach.

        Left to itself, huggingface_hub retries each file with back-off for minutes.
        """
        import huggingface_hub.constants as hub

        advice = f"set SLUICEWAY_CAPTION_MODEL to a model folder, or {self.source!r} needs the hub"
        if hub.HF_HUB_OFFLINE:
            raise ModelUnavailable(
                f"{self.source} is not in the local cache and HF_HUB_OFFLINE is set; {advice}"
            )
        endpoint = urlsplit(hub.ENDPOINT)
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        try:
            with socket.create_connection((endpoint.hostname or "", port), self.hub_timeout_s):
                pass
        except OSError as error:
            raise ModelUnavailable(
                f"{self.source} is not in the local cache and {hub.ENDPOINT} is unreachable "
                f"({error}); {advice}"
            ) from None


def _looks_like_path(source: str) -> bool:
    """A folder path rather than a hub id (``name`` or ``owner/name``)."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source
