"""Compute slots go to the largest claim, loads first, earliest among equals."""

from __future__ import annotations

import asyncio

import pytest

from sluiceway.runtime.slots import ComputeSlots
from tests.fixtures.waiting import eventually


async def test_free_slots_are_taken_at_once_then_callers_wait() -> None:
    slots = ComputeSlots(2)
    await slots.acquire()
    await slots.acquire()
    assert slots.free == 0
    waiter = asyncio.ensure_future(slots.acquire())
    await eventually(lambda: slots.waiting == 1)
    assert not waiter.done()
    slots.release()
    await asyncio.wait_for(waiter, 1)
    assert slots.free == 0


async def test_a_freed_slot_goes_to_the_largest_waiting_batch() -> None:
    slots = ComputeSlots(1)
    await slots.acquire()
    order: list[str] = []
    sizes = {"small": 1.0, "large": 40.0, "medium": 7.0}

    async def ask(name: str) -> None:
        await slots.acquire(lambda: (0.0, 0.0, sizes[name]))
        order.append(name)
        slots.release()

    asking = [asyncio.ensure_future(ask(name)) for name in ["small", "large", "medium"]]
    await eventually(lambda: slots.waiting == 3)
    slots.release()
    await asyncio.gather(*asking)
    assert order == ["large", "medium", "small"]
    assert slots.free == 1


async def test_earliest_asker_wins_a_tie_and_loads_come_first() -> None:
    slots = ComputeSlots(1)
    await slots.acquire()
    order: list[str] = []

    async def ask(name: str, size: float | None) -> None:
        if size is None:
            await slots.acquire()  # a load
        else:
            await slots.acquire(lambda: (0.0, 0.0, size))
        order.append(name)
        slots.release()

    asking = [
        asyncio.ensure_future(ask(name, size))
        for name, size in [("first", 3.0), ("second", 3.0), ("load", None)]
    ]
    await eventually(lambda: slots.waiting == 3)
    slots.release()
    await asyncio.gather(*asking)
    assert order == ["load", "first", "second"]


async def test_a_cancelled_waiter_never_loses_a_slot() -> None:
    slots = ComputeSlots(1)
    await slots.acquire()
    gone = asyncio.ensure_future(slots.acquire(lambda: (0.0, 0.0, 100.0)))
    stays = asyncio.ensure_future(slots.acquire(lambda: (0.0, 0.0, 1.0)))
    await eventually(lambda: slots.waiting == 2)
    slots.release()  # handed to "gone", which is cancelled before it runs
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.wait_for(stays, 1)
    slots.release()
    assert slots.free == 1


async def test_take_free_takes_only_slots_nobody_waits_for() -> None:
    slots = ComputeSlots(4)
    await slots.acquire()
    assert slots.take_free(10) == 3, "at most the free ones"
    assert slots.free == 0
    waiter = asyncio.ensure_future(slots.acquire())
    await eventually(lambda: slots.waiting == 1)
    slots.release()  # handed straight to the waiter, never left free
    await asyncio.wait_for(waiter, 1)
    assert slots.take_free(1) == 0
    for _ in range(4):
        slots.release()
    assert slots.free == 4


async def test_an_opened_deck_grants_its_slots_to_waiters_and_a_closed_one_drains() -> None:
    slots = ComputeSlots(1, deck=1)
    await slots.acquire()
    waiter = asyncio.ensure_future(slots.acquire())
    await eventually(lambda: slots.waiting == 1)
    slots.open_deck(True)  # the deck's slot goes to the waiter at once
    await asyncio.wait_for(waiter, 1)
    assert slots.capacity == 2 and slots.free == 0
    slots.open_deck(False)  # both holders finish; none is taken back
    late = asyncio.ensure_future(slots.acquire())
    await eventually(lambda: slots.waiting == 1)
    slots.release()  # still one held: at the count, so the waiter waits on
    await asyncio.sleep(0)
    assert not late.done()
    slots.release()
    await asyncio.wait_for(late, 1)
    assert slots.free == 0
