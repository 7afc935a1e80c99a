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

GAIN = 0.85
"""A model running one job per call (``NO_GAIN``) batches again only once its cost per item at
its max batch is below this share. What it learns then rests on a probe, one call of two
among a window of calls of one, and is extrapolated to the max batch: a call of two measured
10 % fast by chance (another thread, the event loop, the garbage collector) reads as a gain of
10 % or more at batch 8. A false gain costs a window of batched calls, each dearer per item
than calls of one on a CPU (``runtime/gate.py`` has the measurement); a model that truly gains
(a GPU, a large batch-friendly model) clears this bar by far."""


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
        # Running sums over the window, so a call costs O(1) to learn from (it is counted on
        # the event loop after every call). Sizes are integers, so their sums are exact and
        # "one size only" is decided exactly; the float sums are recomputed once per window.
        self._sum_n = 0
        self._sum_nn = 0
        self._sum_t = 0.0
        self._sum_nt = 0.0
        self._sizes: dict[int, int] = {}
        self._since_exact = 0

    @property
    def known(self) -> bool:
        """Whether the window holds calls of two sizes or more (a fitted line, not a guess)."""
        return len(self._sizes) > 1

    def seconds(self, n: int) -> float:
        return self.per_call_s + self.per_item_s * n

    def observe(self, n: int, seconds: float) -> None:
        if n <= 0:
            return
        calls = self._calls
        if len(calls) == calls.maxlen:
            old_n, old_t = calls[0]
            self._sum_n -= old_n
            self._sum_nn -= old_n * old_n
            self._sum_t -= old_t
            self._sum_nt -= old_n * old_t
            left = self._sizes[old_n] - 1
            if left:
                self._sizes[old_n] = left
            else:
                del self._sizes[old_n]
        calls.append((n, seconds))
        self._sum_n += n
        self._sum_nn += n * n
        self._sizes[n] = self._sizes.get(n, 0) + 1
        self._since_exact += 1
        if self._since_exact >= len(calls):  # float sums drift with every subtraction
            self._since_exact = 0
            self._sum_t = sum(took for _, took in calls)
            self._sum_nt = sum(size * took for size, took in calls)
        else:
            self._sum_t += seconds
            self._sum_nt += n * seconds
        count = len(calls)
        sum_n, sum_t = self._sum_n, self._sum_t
        spread = count * self._sum_nn - sum_n * sum_n  # count² × the sizes' variance, exact
        if spread == 0:
            self.per_call_s, self.per_item_s = 0.0, sum_t / sum_n
            return
        slope = max((count * self._sum_nt - sum_n * sum_t) / spread, 0.0)
        intercept = (sum_t - slope * sum_n) / count
        if intercept < 0:  # noise: keep the line through the mean, flat part zero
            intercept, slope = 0.0, sum_t / sum_n
        self.per_call_s, self.per_item_s = intercept, slope
