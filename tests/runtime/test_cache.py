"""The model cache: single flight per key and LRU eviction within the budget."""

from __future__ import annotations

import asyncio

import pytest

from sluiceway.runtime.cache import ModelCache
from sluiceway.runtime.metrics import Metrics


class Blob:
    def __init__(self, name: str, nbytes: int) -> None:
        self.name = name
        self.nbytes = nbytes


def loader(name: str, nbytes: int, calls: list[str], delay: float = 0.0):  # type: ignore[no-untyped-def]
    async def load() -> Blob:
        calls.append(name)
        await asyncio.sleep(delay)
        return Blob(name, nbytes)

    return load


async def test_concurrent_callers_share_one_load() -> None:
    metrics = Metrics()
    cache: ModelCache[Blob] = ModelCache(1000, metrics)
    calls: list[str] = []
    blobs = await asyncio.gather(
        *(cache.get_or_load("m", "k", loader("k", 10, calls, delay=0.05)) for _ in range(50))
    )
    assert calls == ["k"]
    assert all(blob is blobs[0] for blob in blobs)
    assert metrics.model_loads.labels("m")._value.get() == 1


async def test_a_caller_giving_up_does_not_cancel_the_shared_load() -> None:
    cache: ModelCache[Blob] = ModelCache(1000, Metrics())
    calls: list[str] = []
    impatient = asyncio.ensure_future(cache.get_or_load("m", "k", loader("k", 1, calls, 0.05)))
    patient = asyncio.ensure_future(cache.get_or_load("m", "k", loader("k", 1, calls, 0.05)))
    await asyncio.sleep(0.01)
    impatient.cancel()
    assert (await patient).name == "k"
    assert calls == ["k"]


async def test_least_recently_used_is_evicted_first() -> None:
    metrics = Metrics()
    cache: ModelCache[Blob] = ModelCache(250, metrics)
    calls: list[str] = []
    for name in ["a", "b"]:
        await cache.get_or_load("m", name, loader(name, 100, calls))
    await cache.get_or_load("m", "a", loader("a", 100, calls))  # touch a: b is now oldest
    await cache.get_or_load("m", "c", loader("c", 100, calls))
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.nbytes == 200
    await cache.get_or_load("m", "b", loader("b", 100, calls))
    assert calls == ["a", "b", "c", "b"], "an evicted model is loaded again when needed"
    assert metrics.model_evictions.labels("m")._value.get() == 2


async def test_failed_load_is_not_cached() -> None:
    cache: ModelCache[Blob] = ModelCache(1000, Metrics())

    async def broken() -> Blob:
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        await cache.get_or_load("m", "k", broken)
    assert "k" not in cache
    calls: list[str] = []
    assert (await cache.get_or_load("m", "k", loader("k", 1, calls))).name == "k"
