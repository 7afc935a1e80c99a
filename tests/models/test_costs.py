"""Call costs: declared by a kind, or fitted online from measured calls."""

from __future__ import annotations

import pytest

from sluiceway.kinds import build_kinds
from sluiceway.models.costs import NO_GAIN, DeclaredCost, LearnedCost, per_item_ratio
from sluiceway.runtime.planning import plan_calls
from tests.conftest import fast_settings


def test_the_kiosk_declares_the_seed_cost() -> None:
    settings = fast_settings(knn_infer_base_cost_s=0.2, knn_infer_per_query_cost_s=0.05)
    knn = next(kind for kind in build_kinds(settings) if kind.name == "knn")
    cost = knn.call_cost()
    assert cost.seconds(1) == pytest.approx(0.2)
    assert cost.seconds(50) == pytest.approx(0.2 + 0.05 * 49)


def test_a_learned_cost_fits_the_line_of_recent_calls() -> None:
    cost = LearnedCost(window=8)
    for n in [1, 4, 8, 2, 6]:
        cost.observe(n, 0.3 + 0.1 * n)
    assert cost.per_call_s == pytest.approx(0.3)
    assert cost.per_item_s == pytest.approx(0.1)
    for _ in range(8):  # the window forgets: the model got faster
        cost.observe(2, 0.2)
        cost.observe(4, 0.2)
    assert cost.per_call_s == pytest.approx(0.2)
    assert cost.per_item_s == pytest.approx(0.0)


def test_calls_of_one_size_are_taken_as_proportional() -> None:
    cost = LearnedCost()
    cost.observe(4, 0.4)
    cost.observe(4, 0.4)
    assert (cost.per_call_s, cost.per_item_s) == (0.0, pytest.approx(0.1))


@pytest.mark.parametrize(
    ("per_call", "per_item", "n", "slots", "calls"),
    [
        (0.15, 0.05, 50, 256, 50),  # the kiosk burst with slots to spare: singles
        (0.15, 0.05, 50, 4, 4),  # few slots: one call per slot
        (0.15, 0.05, 50, 1, 1),  # no free slot: one big batch
        (0.049, 0.001, 40, 256, 7),  # small per-item cost: calls of 6 end within 10%
        (0.05, 0.0, 20, 16, 1),  # a flat cost (a GPU): splitting ends no sooner
        (0.0, 0.1, 8, 2, 2),  # a proportional cost (a CPU): every slot
    ],
)
def test_plan_calls_makes_the_fewest_calls_that_end_soonest(
    per_call: float, per_item: float, n: int, slots: int, calls: int
) -> None:
    assert plan_calls(DeclaredCost(per_call, per_item), n, slots) == calls


def test_the_gain_of_batching_is_known_once_two_sizes_were_seen() -> None:
    cost = LearnedCost()
    assert per_item_ratio(cost, 8) is None  # a guess: the scheduler keeps batching
    for _ in range(4):
        cost.observe(1, 0.006)
    assert per_item_ratio(cost, 8) is None
    cost.observe(8, 0.054)  # 8 items cost more than 8 alone (a CPU image model)
    ratio = per_item_ratio(cost, 8)
    assert ratio is not None and ratio >= NO_GAIN
    flat = LearnedCost()
    for size in (1, 8, 1, 8):
        flat.observe(size, 0.01 + 0.001 * size)
    ratio = per_item_ratio(flat, 8)
    assert ratio is not None and ratio < 0.5
    assert per_item_ratio(DeclaredCost(0.0, 0.001), 8) == pytest.approx(1.0)
