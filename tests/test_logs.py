"""Repeated identical warnings: the first is said, the rest counted, once per interval."""

from __future__ import annotations

from sluiceway.logs import Repeats


def test_identical_messages_are_said_once_per_interval_with_a_count() -> None:
    now = [0.0]
    repeats = Repeats(interval_s=10.0, clock=lambda: now[0])
    assert repeats.admit("redis down") == 0
    assert [repeats.admit("redis down") for _ in range(500)] == [None] * 500
    assert repeats.admit("another problem") == 0, "a different message is its own"
    now[0] = 10.0
    held = repeats.admit("redis down")
    assert held == 500
    assert repeats.note(held) == " (500 more like it in the last 10 s)"
    assert repeats.admit("redis down") is None
    now[0] = 25.0
    assert repeats.admit("redis down") == 1
    assert repeats.note(0) == ""


def test_many_distinct_messages_do_not_grow_without_bound() -> None:
    now = [0.0]
    repeats = Repeats(interval_s=1.0, clock=lambda: now[0])
    for i in range(5000):
        now[0] = i * 0.01
        assert repeats.admit(f"job {i} failed") == 0
    assert len(repeats._seen) <= 1024
