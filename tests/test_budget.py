"""The one budget rule: ties, unknown accuracy, below the smallest, bad budgets."""

from __future__ import annotations

import pytest

from export.budget import Candidate, choose
from export.errors import BudgetError, ExportUsageError

GRID = [
    Candidate("w0.25-r24", 0.25, 24, 100_000, 40.0, 1.0),
    Candidate("w0.50-r24", 0.50, 24, 200_000, 45.0, 2.0),
    Candidate("w0.25-r32", 0.25, 32, 180_000, 45.0, 1.5),   # ties w0.50-r24, cheaper
    Candidate("w1.00-r32", 1.00, 32, 900_000, 50.0, 6.0),
]


def test_most_accurate_within_budget_and_ties_go_to_the_cheaper() -> None:
    assert choose(GRID, mmacs=0.15).subnet_id == "w0.25-r24"
    assert choose(GRID, mmacs=0.25).subnet_id == "w0.25-r32"
    assert choose(GRID, mmacs=10).subnet_id == "w1.00-r32"
    assert choose(GRID, latency_ms=2.0).subnet_id == "w0.25-r32"


def test_order_of_candidates_does_not_matter() -> None:
    assert choose(GRID[::-1], mmacs=0.25).subnet_id == choose(GRID, mmacs=0.25).subnet_id


def test_below_the_smallest_falls_back_or_refuses_when_strict() -> None:
    c = choose(GRID, mmacs=0.01)
    assert (c.subnet_id, c.fits) == ("w0.25-r24", False) and "below the smallest" in c.message
    with pytest.raises(BudgetError, match="below the smallest"):
        choose(GRID, mmacs=0.01, strict=True)


def test_unknown_accuracy_picks_the_largest_that_fits() -> None:
    grid = [Candidate(c.id, c.width, c.resolution, c.macs) for c in GRID]
    c = choose(grid, mmacs=0.25)
    assert c.subnet_id == "w0.50-r24" and "no accuracy" in c.message


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "x"])
def test_bad_budgets_are_usage_errors(bad: object) -> None:
    with pytest.raises(ExportUsageError):
        choose(GRID, mmacs=bad)  # type: ignore[arg-type]


def test_exactly_one_budget_and_latency_needs_measurements() -> None:
    with pytest.raises(ExportUsageError, match="exactly one"):
        choose(GRID, mmacs=1, latency_ms=1)
    with pytest.raises(ExportUsageError, match="mutualnet profile"):
        choose([Candidate("a", 1.0, 8, 10, 1.0)], latency_ms=1)
