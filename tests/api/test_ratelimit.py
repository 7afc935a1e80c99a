"""The per-client rate limit (api/ratelimit.py): token buckets, and 429 through HTTP."""

from __future__ import annotations

import pytest

from sluiceway.api.ratelimit import RateLimiter
from sluiceway.app import create_app
from tests.conftest import app_client, fast_settings

PATH = "/api/v1/predictions"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 60  # refills to the burst, never beyond
    assert [limiter.take("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_clients_are_counted_apart() -> None:
    limiter = RateLimiter(1.0, 1, clock=Clock())
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_memory_is_bounded_and_the_least_recent_are_forgotten() -> None:
    limiter = RateLimiter(1.0, 1, max_clients=3, clock=Clock())
    for client in ("a", "b", "c"):
        limiter.take(client)
    limiter.take("a")  # a is now the most recent
    limiter.take("d")
    assert len(limiter) == 3
    assert limiter.take("a") > 0  # still remembered: spent
    assert limiter.take("b") == 0.0  # forgotten: a fresh bucket


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0.0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1.0, 0)


async def test_over_the_limit_is_429_with_retry_after() -> None:
    settings = fast_settings(caption_rate_per_s=0.5, caption_rate_burst=2)
    async with app_client(create_app(settings)) as http:
        # Empty bodies: 400 without touching the model, but they count against the limit.
        statuses = [(await http.post(PATH, content=b"")).status_code for _ in range(3)]
        refused = await http.post(PATH, content=b"")
    assert statuses == [400, 400, 429]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert "rate limit" in refused.json()["detail"]


async def test_off_by_default() -> None:
    async with app_client(create_app(fast_settings())) as http:
        statuses = {(await http.post(PATH, content=b"")).status_code for _ in range(50)}
    assert statuses == {400}
