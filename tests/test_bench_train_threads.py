"""benchmarks/train_threads.py: the table and the goal line it writes (fake timings)."""

from __future__ import annotations

import argparse

from benchmarks import train_threads as tt


def _runs(case: str, alone: list[float], loaded: list[float], load: float) -> list[tt.Run]:
    out = []
    for a, b in zip(alone, loaded, strict=True):
        out += [tt.Run(case, False, a, a, load), tt.Run(case, True, b, b, load)]
    return out


def test_ratio_is_the_median_loaded_over_the_median_alone() -> None:
    runs = _runs("default", [40.0, 44.0], [90.0, 100.0], 0.5)
    (row,) = tt.rows(runs, 3)
    assert row[:5] == ["default", 3, "40.0, 44.0", "90.0, 100.0", "2.26x"]


def test_report_states_the_goal_and_flags_a_loaded_machine() -> None:
    args = argparse.Namespace(epochs=3, pairs=1, option_epochs=1)
    quiet = tt.report(_runs("default", [40.0], [120.0], 0.4), [], args)
    assert "Measured: 3.00x (NOT met)" in quiet and "were not alone" not in quiet
    busy = tt.report(_runs("default", [100.0], [130.0], 4.0),
                     _runs("spin", [20.0], [80.0], 4.0), args)
    assert "Measured: 1.30x (met)" in busy and "were not alone" in busy
    assert "| spin | 1 | 20.0 | 80.0 | 4.00x |" in busy


def test_the_spin_case_starts_the_command_without_the_passive_default() -> None:
    assert tt.CASES["default"] == ("-m", "mutualnet")
    assert "cli.main" in tt.CASES["spin"][1] and "OMP_WAIT_POLICY" in tt.THREAD_ENV
