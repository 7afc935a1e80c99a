"""``sluiceway classify URL...``: the bird seed's standalone run, in process, no server.

Downloads the birds model on first use (with a progress bar) and the images concurrently,
classifies them through the same runtime the server uses (so images batch together), then
prints each image's top matches and the total time. INFO logs the essentials, DEBUG the rest.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sluiceway.config import Settings
from sluiceway.errors import BadInput, SluicewayError
from sluiceway.image_classifiers import ImageClassifiers
from sluiceway.inputs.fetch import ImageFetcher
from sluiceway.kinds import BIRDS, image_kinds
from sluiceway.models.classifier import Prediction
from sluiceway.runtime.dispatch import LocalDispatcher
from sluiceway.runtime.metrics import Metrics

logger = logging.getLogger(__name__)

# With at least this many URLs a progress bar shows on stderr.
PROGRESS_FROM = 5


@dataclass(frozen=True, slots=True)
class UrlOutcome:
    """One URL's matches, or why it has none."""

    url: str
    predictions: list[Prediction]
    error: str | None = None


async def classify_urls(
    urls: Sequence[str], k: int, settings: Settings, *, progress: bool = False
) -> list[UrlOutcome]:
    """Classify every URL with the birds model; a failed URL gets its error, never an exception."""
    kinds = [kind for kind in image_kinds(settings, progress=progress) if kind.name == BIRDS]
    budget = int(settings.model_cache_budget_mb * 1024 * 1024)
    dispatcher = LocalDispatcher(kinds, budget, Metrics())
    images = ImageClassifiers(dispatcher, settings)
    fetcher = ImageFetcher.from_settings(settings)
    bar = _progress_bar(len(urls)) if progress and len(urls) >= PROGRESS_FROM else None
    await dispatcher.start()
    try:

        async def one(url: str) -> UrlOutcome:
            try:
                return UrlOutcome(url, await _classify(images, fetcher, url, k))
            except BadInput as error:
                logger.debug("%s failed: %s", url, error)
                return UrlOutcome(url, [], str(error))
            finally:
                if bar is not None:
                    bar.update(1)

        return list(await asyncio.gather(*(one(url) for url in urls)))
    finally:
        if bar is not None:
            bar.close()
        await fetcher.aclose()
        await dispatcher.close()


async def _classify(
    images: ImageClassifiers, fetcher: ImageFetcher, url: str, k: int
) -> list[Prediction]:
    started = time.perf_counter()
    data = await fetcher.fetch(url)
    fetched = time.perf_counter()
    logger.debug("%s: %d bytes in %.3f s", url, len(data), fetched - started)
    predictions = await images.classify(BIRDS, data, k)
    logger.debug("%s: classified in %.3f s", url, time.perf_counter() - fetched)
    return predictions


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="images", unit="img", file=sys.stderr, leave=False)


def report(outcomes: Sequence[UrlOutcome], elapsed_s: float, out: TextIO) -> None:
    """Print each URL's matches (or its error), then the total time."""
    for outcome in outcomes:
        print(outcome.url, file=out)
        if outcome.error is not None:
            print(f"  failed: {outcome.error}", file=out)
        for rank, prediction in enumerate(outcome.predictions, start=1):
            print(f"  {rank}. {prediction.label}: {prediction.score:.4f}", file=out)
    print(f"total time: {elapsed_s:.3f} s", file=out)


def run(urls: Sequence[str], k: int, settings: Settings, out: TextIO | None = None) -> int:
    """The command: classify and print; exit 0 if every image succeeded, 1 if some failed,
    2 if the model itself is unavailable (its download failed)."""
    started = time.perf_counter()
    logger.info("classifying %d image(s), top %d", len(urls), k)
    try:
        outcomes = asyncio.run(classify_urls(urls, k, settings, progress=True))
    except SluicewayError as error:
        logger.error("%s", error)
        return 2
    elapsed = time.perf_counter() - started
    report(outcomes, elapsed, out or sys.stdout)
    failed = sum(outcome.error is not None for outcome in outcomes)
    logger.info("%d classified, %d failed in %.3f s", len(outcomes) - failed, failed, elapsed)
    return 0 if failed == 0 else 1
