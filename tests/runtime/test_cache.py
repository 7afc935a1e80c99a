"""The model cache: single flight per key and LRU eviction within the budget."""

from __future__ import annotations

import asyncio

import pytest

from sluiceway.runtime.cache import ModelCache
from sluiceway.runtime.metrics import Metrics
from tests.fixtures.waiting import eventually


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
    assert metrics.registry.get_sample_value("sluiceway_model_loads_total", {"model": "m"}) == 1


async def test_a_caller_giving_up_does_not_cancel_the_shared_load() -> None:
    cache: ModelCache[Blob] = ModelCache(1000, Metrics())
    calls: list[str] = []
    impatient = asyncio.ensure_future(cache.get_or_load("m", "k", loader("k", 1, calls, 0.05)))
    patient = asyncio.ensure_future(cache.get_or_load("m", "k", loader("k", 1, calls, 0.05)))
    await eventually(lambda: calls == ["k"])  # one load under way, both callers waiting on it
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
    evictions = {"model": "m"}
    assert metrics.registry.get_sample_value("sluiceway_model_evictions_total", evictions) == 2


async def test_failed_load_is_not_cached() -> None:
    cache: ModelCache[Blob] = ModelCache(1000, Metrics())

    async def broken() -> Blob:
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        await cache.get_or_load("m", "k", broken)
    assert "k" not in cache
    calls: list[str] = []
    assert (await cache.get_or_load("m", "k", loader("k", 1, calls))).name == "k"


class CountedBlob:
    """A model that counts how often its size is asked: the cache's work per load."""

    reads = 0

    def __init__(self, nbytes: int) -> None:
        self._nbytes = nbytes

    @property
    def nbytes(self) -> int:
        CountedBlob.reads += 1
        return self._nbytes


async def test_each_load_reads_one_size_however_many_models_are_cached() -> None:
    # Eviction keeps a running total: a load reads the new model's size once and never walks
    # the cached entries, so its cost does not grow with the cache (it used to be a full scan).
    cache: ModelCache[CountedBlob] = ModelCache(100 * 5000, Metrics())

    async def counted(size: int) -> CountedBlob:
        return CountedBlob(size)

    for i in range(5000):
        await cache.get_or_load("m", f"k{i}", lambda: counted(100))
    assert len(cache) == 5000
    CountedBlob.reads = 0
    for i in range(5000, 6000):  # each of these evicts the oldest
        await cache.get_or_load("m", f"k{i}", lambda: counted(100))
    assert CountedBlob.reads == 1000
    assert len(cache) == 5000
    assert cache.keys()[:2] == ["k1000", "k1001"], "the oldest were evicted, in order"


async def test_the_budget_holds_across_many_loads_of_mixed_sizes() -> None:
    metrics = Metrics()
    cache: ModelCache[Blob] = ModelCache(10_000, metrics)
    calls: list[str] = []
    sizes = [((i * 7919) % 1500) + 1 for i in range(3000)]
    for i, size in enumerate(sizes):
        await cache.get_or_load("m", f"k{i}", loader(f"k{i}", size, calls))
        if i % 3 == 0 and f"k{i // 2}" in cache:  # some older models stay in use
            await cache.get_or_load("m", f"k{i // 2}", loader("never", 1, calls))
        assert cache.nbytes <= cache.budget
    kept = cache.keys()
    assert cache.nbytes == sum(sizes[int(key[1:])] for key in kept)
    assert "never" not in calls
    evicted = metrics.registry.get_sample_value("sluiceway_model_evictions_total", {"model": "m"})
    assert evicted == len(sizes) - len(kept)


async def test_recently_used_models_move_to_the_new_end() -> None:
    cache: ModelCache[Blob] = ModelCache(1000, Metrics())
    calls: list[str] = []
    for name in "abcd":
        await cache.get_or_load("m", name, loader(name, 1, calls))
    await cache.get_or_load("m", "b", loader("b", 1, calls))
    await cache.get_or_load("m", "a", loader("a", 1, calls))
    assert cache.keys() == ["c", "d", "b", "a"]


async def test_discarded_models_leave_the_running_total() -> None:
    cache: ModelCache[Blob] = ModelCache(1000, Metrics())
    calls: list[str] = []
    for name in ("m#1:a", "m#1:b", "n#1:c"):
        await cache.get_or_load(name[0], name, loader(name, 100, calls))
    cache.discard_prefix("m#1:")
    assert cache.keys() == ["n#1:c"] and cache.nbytes == 100
    cache.discard("n#1:c")
    assert len(cache) == 0 and cache.nbytes == 0


async def test_a_load_that_says_its_peak_gets_room_before_it_runs() -> None:
    cache: ModelCache[Blob] = ModelCache(100, Metrics())
    calls: list[str] = []
    for name in "abc":
        await cache.get_or_load("m", name, loader(name, 30, calls))
    seen: list[list[str]] = []

    async def load() -> Blob:
        seen.append(cache.keys())  # what is still held while the new model loads
        return Blob("d", 30)

    await cache.get_or_load("m", "d", load, load_peak=lambda: 50)
    assert seen == [["c"]], "30 + 50 fits in 100; 60 + 50 would not"
    assert cache.keys() == ["c", "d"] and cache.nbytes == 60


async def test_a_load_peak_over_the_budget_empties_the_cache_and_still_loads() -> None:
    cache: ModelCache[Blob] = ModelCache(100, Metrics())
    await cache.get_or_load("m", "a", loader("a", 30, []))
    blob = await cache.get_or_load("m", "b", loader("b", 40, []), load_peak=lambda: 500)
    assert blob.name == "b" and cache.keys() == ["b"]
