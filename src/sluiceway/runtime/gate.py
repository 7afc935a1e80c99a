"""Whether a model's calls batch: the most jobs one call may take now, from learned costs.

A lane asks ``BatchGate.limit`` before forming each call. The limit is the policy's max batch,
or 1 while the learned cost says batching gains (almost) nothing (``costs.NO_GAIN``): calls of
one use the free slots at once instead of stacking jobs on one, so latency is that of batching
off. Once the window of observed calls holds a single size again the cost is not known again,
and the gain is measured afresh by a call of two (a probe, so that a full batch does not hold
its jobs back every window of calls).

Two costs are learned. ``cost`` fits the calls' durations; the scheduler also plans calls with
it (``planning.py``). ``cpu_cost`` fits the CPU each call took, for a model that computes on
the calling thread alone (``Model.computes_on_caller``), and decides when it is known: on a
busy CPU a call's duration holds waits (the other slot, the event loop, the GIL), one per call
whatever its size, which a fit of durations takes for a per-call cost that batching spares.
On ``bench/oip`` (MobileNetV2, 2026-12-01) the durations said batching gained while the CPU
per request was 13.6-15.2 ms batched against 12.1-12.9 in calls of one. A gate running calls
of one batches again only for a clear gain (``costs.GAIN``), not one probe's noise.
"""

from __future__ import annotations

from sluiceway.models.costs import GAIN, NO_GAIN, CallCost, LearnedCost, per_item_ratio


class BatchGate:
    """One model's batch limit, from its learned costs (module doc)."""

    def __init__(self, max_batch: int, cost: CallCost) -> None:
        self.max_batch = max_batch
        self.cost = cost
        """What a call of n items takes, in seconds (declared, or learned from durations)."""
        self.cpu_cost = LearnedCost()
        """The CPU a call of n items takes, if the model computes on the calling thread."""
        self.unbatched = False
        """The cost said batching gains nothing: calls of one until a clear gain."""

    def observe(self, n: int, seconds: float, cpu: float | None = None) -> None:
        """A call of ``n`` items took ``seconds``, ``cpu`` of them computing on its thread."""
        self.cost.observe(n, seconds)
        if cpu is not None:
            self.cpu_cost.observe(n, cpu)

    def limit(self) -> int:
        """The most jobs one call takes now."""
        max_batch = self.max_batch
        if max_batch <= 1:
            return max_batch
        cost = self.cpu_cost if self.cpu_cost.known else self.cost
        ratio = per_item_ratio(cost, max_batch)
        if ratio is None:
            return 2 if self.unbatched else max_batch
        self.unbatched = ratio >= (GAIN if self.unbatched else NO_GAIN)
        return 1 if self.unbatched else max_batch
