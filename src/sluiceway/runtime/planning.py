"""Call planning: how many calls a key's waiting jobs become, and how many start now.

Both weigh the model's call cost (``models/costs.py``, ``a + b·n`` seconds) against the slots
the jobs can use; ``runtime/batcher.py`` applies them.

Over free slots (``plan_calls``, when ``split`` is on). Holding one slot, a batcher may also
take free slots nobody waits for, at most its share of them (free slots × its waiting jobs /
the lane's waiting jobs, so one restaurant of a burst does not take every slot). With c slots
the soonest its n jobs can finish is ``cost(⌈n/c⌉)``; it makes the fewest calls that finish
within 10% of that. With the kiosk's cost (0.15 + 0.05·n s) and plenty of free slots a burst
of 50 becomes 50 calls of one (0.2 s each instead of one call of 2.6 s); with no free slot it
stays one large batch (the throughput regime); a nearly flat cost (a GPU) keeps one batch; a
proportional cost (a CPU) spreads over every free slot. A model with a fill delay is never
split: the delay says its calls should be full.

Over the next slots to free (``plan_take``). With every slot busy, a key may still hold far
more than a slot's share of the lane's jobs (queued and running, over slots): a restaurant
whose kiosks were all answered by one call come back together. One call of them all would
run long on one slot while the others run small, costly calls, answer them together again and
keep the convoy going. So a key counts on as many slots as it has shares (rounded), the one it
holds and the next to free (running calls' predicted ends, from the cost), and the call now
takes only what ``plan_take`` leaves it so that all its jobs end soonest; the rest claim the
next slots. A flat cost, or slots freeing too late, keep one large batch.
"""

from __future__ import annotations

import heapq
import time

from sluiceway.models.costs import CallCost

# A split's calls may finish this much later than the soonest the slots allow: the few calls
# it saves leave slots for the next arrivals.
_SPLIT_TOLERANCE = 0.1


def plan_calls(cost: CallCost, n: int, slots: int) -> int:
    """How many calls ``n`` jobs should become with ``slots`` slots: the fewest that finish
    within ``_SPLIT_TOLERANCE`` of the soonest possible, ``cost(⌈n / slots⌉)``."""
    if n <= 1 or slots <= 1:
        return 1
    smallest = -(-n // slots)
    if cost.per_item_s <= 0:
        return 1  # a flat cost: splitting finishes no sooner
    target = cost.seconds(smallest) * (1 + _SPLIT_TOLERANCE)
    size = max(smallest, int((target - cost.per_call_s) / cost.per_item_s))
    return min(slots, -(-n // min(size, n)))


def plan_take(cost: CallCost, n: int, calls: int, later: list[float]) -> int:
    """How many of ``n`` jobs the ``calls`` calls starting now should take, when the rest may
    wait for slots that free ``later`` (seconds from now, ascending): so that all ``n`` finish
    soonest (each slot's calls ending together, ``a + b·size`` after it frees), using the
    fewest later slots within ``_SPLIT_TOLERANCE`` of that. A flat cost takes all now."""
    a, b = cost.per_call_s, cost.per_item_s
    if b <= 0 or not later or n <= calls:
        return n
    ends = [a + n * b / calls]  # ends[k]: when all n finish using the first k later slots
    waited = 0.0
    for k, start in enumerate(later, 1):
        waited += start
        end = a + (n * b + waited) / (calls + k)
        if end - a - start < b:  # that slot would get less than one job
            break
        ends.append(end)
    soonest = min(ends)
    used = next(k for k, end in enumerate(ends) if end <= soonest * (1 + _SPLIT_TOLERANCE))
    end = ends[used]
    left = sum(max(1, int((end - a - start) / b + 1e-9)) for start in later[:used])
    return max(calls, n - left)


def take_now(
    cost: CallCost, slots: int, waiting: int, calls: int, jobs: int, ends: dict[int, float]
) -> int:
    """How many of a key's ``waiting`` jobs its ``calls`` calls starting now should take, with
    ``jobs`` queued and running in the lane and its running calls predicted to end at ``ends``
    (``time.monotonic()`` values).

    When every slot is busy, the lane's jobs finish soonest if each call carries about its
    share of them, ``jobs / slots``: a call of far more holds its jobs on one slot for a long
    time while the other slots run small, costly calls. So a key whose waiting jobs make more
    than ``calls`` shares (rounded: 1.5 shares count as two) counts on that many slots, the
    held ones and the next to free, and leaves for the later ones what ``plan_take`` says
    finishes all of its jobs soonest. With scarce slots (few, or as many jobs per slot as the
    key has) it keeps one large batch."""
    # Rounded, not floored: a simulation of the convoy at 16 slots reached 0.90x the bound
    # this way against 0.85x floored (calls nearer a slot's share).
    shares = (2 * slots * waiting + jobs) // (2 * jobs)
    if shares <= calls or not ends:
        return waiting
    now = time.monotonic()
    later = [max(end - now, 0.0) for end in heapq.nsmallest(shares - calls, ends.values())]
    return plan_take(cost, waiting, calls, later)
