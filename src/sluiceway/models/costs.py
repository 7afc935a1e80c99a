"""What one model call of n items costs, in seconds: declared by a kind or learned online.

The scheduler (``runtime/planning.py``) weighs compute slots against these costs. A cost is
affine, ``per_call + per_item * n``: the shape of the kiosk's simulated GPU (0.15 + 0.05·n),
of a GPU batch (nearly flat) and of a CPU batch (nearly proportional) alike.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class CallCost(Protocol):
    """Seconds a call of ``n`` items takes; ``observe`` feeds it a measured call."""

    per_call_s: float
    per_item_s: float

    def seconds(self, n: int) -> float:
        """Expected duration of one call over ``n`` items."""

    def observe(self, n: int, seconds: float) -> None:
        """A call of ``n`` items took ``seconds``."""


NO_GAIN = 0.95
"""A model whose cost per item at its max batch is above this share of its cost at batch 1
gains (almost) nothing from batching: the scheduler runs its jobs one per call."""


def per_item_ratio(cost: CallCost, n: int) -> float | None:
    """The cost of one item in a call of ``n`` over its cost alone (below 1: batching pays);
    ``None`` while the cost has not been seen at more than one batch size."""
    if not getattr(cost, "known", True):
        return None
    alone = cost.seconds(1)
    if alone <= 0:
        return None
    return cost.seconds(n) / n / alone


class DeclaredCost:
    """A cost the kind knows exactly (the kiosk's simulated sleeps); observations are ignored."""

    def __init__(self, per_call_s: float, per_item_s: float) -> None:
        self.per_call_s = max(per_call_s, 0.0)
        self.per_item_s = max(per_item_s, 0.0)

    def seconds(self, n: int) -> float:
        return self.per_call_s + self.per_item_s * n

    def observe(self, n: int, seconds: float) -> None:
        """Nothing to learn."""


class LearnedCost:
    """A least-squares fit of ``per_call + per_item * n`` over the last ``window`` calls.

    BentoML's adaptive dispatcher fits the same line. Until calls of two different sizes have
    been seen the line has no slope to fit, so the cost is taken as proportional to n (the
    shape of a CPU batch here); both coefficients are kept non-negative.
    """

    def __init__(self, window: int = 64, per_item_s: float = 0.01) -> None:
        self._calls: deque[tuple[int, float]] = deque(maxlen=window)
        self.per_call_s = 0.0
        self.per_item_s = per_item_s

    @property
    def known(self) -> bool:
        """Whether the window holds calls of two sizes or more (a fitted line, not a guess)."""
        sizes = {size for size, _ in self._calls}
        return len(sizes) > 1

    def seconds(self, n: int) -> float:
        return self.per_call_s + self.per_item_s * n

    def observe(self, n: int, seconds: float) -> None:
        if n <= 0:
            return
        self._calls.append((n, seconds))
        count = len(self._calls)
        mean_n = sum(size for size, _ in self._calls) / count
        mean_t = sum(took for _, took in self._calls) / count
        spread = sum((size - mean_n) ** 2 for size, _ in self._calls)
        if spread == 0:
            self.per_call_s, self.per_item_s = 0.0, mean_t / mean_n
            return
        slope = sum((size - mean_n) * (took - mean_t) for size, took in self._calls) / spread
        slope = max(slope, 0.0)
        intercept = mean_t - slope * mean_n
        if intercept < 0:  # noise: keep the line through the mean, flat part zero
            intercept, slope = 0.0, mean_t / mean_n
        self.per_call_s, self.per_item_s = intercept, slope
