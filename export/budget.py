"""The one rule that picks a subnet for a MACs or latency budget (torch-free).

``mutualnet best``, ``mutualnet run``, ``SubnetRuntime.select_budget`` and the
reproduction script all call :func:`choose`, so they answer alike:

- Candidates whose cost (millions of MACs, or p90 latency in ms) is within the budget
  fit. Among those with a known accuracy, the most accurate wins; equal accuracy goes
  to the lower cost, then fewer MACs, then the id (so the answer never depends on order).
- If no fitting candidate has a known accuracy, the one with the most MACs within the
  budget wins (compute as the proxy), and the message says so.
- A budget below the cheapest candidate falls back to the cheapest (``fits`` False; the
  caller warns), or with ``strict=True`` raises :class:`BudgetError` (exit code 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BudgetError, ExportUsageError

MACS_UNIT = "M MACs"
LATENCY_UNIT = "ms (p90, batch 1)"


@dataclass(frozen=True)
class Candidate:
    """One subnet as the budget rule sees it."""

    id: str
    width: float
    resolution: int
    macs: int
    accuracy: float | None = None      # top-1 percent; None when unknown
    latency_ms: float | None = None    # measured p90 at batch 1, when known

    @property
    def mmacs(self) -> float:
        return self.macs / 1e6


@dataclass(frozen=True)
class BudgetChoice:
    """The chosen subnet, whether it fits the budget, and a sentence saying why."""

    subnet_id: str
    fits: bool
    message: str
    cost: float
    budget: float
    unit: str


def _budget(mmacs: float | None, latency_ms: float | None) -> tuple[float, str]:
    if (mmacs is None) == (latency_ms is None):
        raise ExportUsageError("give exactly one budget: MACs (millions) or latency (ms)")
    value, what = (mmacs, "MACs") if mmacs is not None else (latency_ms, "latency")
    try:
        budget = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ExportUsageError(f"the {what} budget must be a number, got {value!r}") from None
    if not (math.isfinite(budget) and budget > 0):
        raise ExportUsageError(f"the {what} budget must be a positive finite number, "
                               f"got {value!r}")
    return budget, (MACS_UNIT if mmacs is not None else LATENCY_UNIT)


def _costs(candidates: Sequence[Candidate], unit: str) -> dict[str, float]:
    if unit == MACS_UNIT:
        return {c.id: c.mmacs for c in candidates}
    missing = [c.id for c in candidates if c.latency_ms is None]
    if missing:
        raise ExportUsageError(f"no latency measured for {', '.join(missing)}: run "
                               "`mutualnet profile DIR` on this device first")
    return {c.id: float(c.latency_ms) for c in candidates}  # type: ignore[arg-type]


def choose(candidates: Sequence[Candidate], *, mmacs: float | None = None,
           latency_ms: float | None = None, strict: bool = False) -> BudgetChoice:
    """Pick the subnet for one budget: ``mmacs`` (millions of MACs) or ``latency_ms``."""
    budget, unit = _budget(mmacs, latency_ms)
    if not candidates:
        raise ExportUsageError("no subnets to choose from")
    cost = _costs(candidates, unit)
    fitting = [c for c in candidates if cost[c.id] <= budget]
    if not fitting:
        cheapest = min(candidates, key=lambda c: (cost[c.id], c.macs, c.id))
        message = (f"budget {budget:g} {unit} is below the smallest subnet {cheapest.id} "
                   f"({cost[cheapest.id]:.4g} {unit})")
        if strict:
            raise BudgetError(f"{message}; raise the budget or drop --strict to fall back "
                              "to the smallest")
        return BudgetChoice(cheapest.id, False, f"{message}; using it", cost[cheapest.id],
                            budget, unit)
    known = [c for c in fitting if c.accuracy is not None and math.isfinite(c.accuracy)]
    if known:
        best = min(known, key=lambda c: (-float(c.accuracy or 0.0), cost[c.id], c.macs, c.id))
        why = f"the most accurate ({best.accuracy:.2f}% top-1) within {budget:g} {unit}"
    else:
        best = min(fitting, key=lambda c: (-c.macs, cost[c.id], c.id))
        why = f"the largest within {budget:g} {unit} (no accuracy recorded)"
    return BudgetChoice(best.id, True, f"{best.id} ({cost[best.id]:.4g} {unit}) is {why}",
                        cost[best.id], budget, unit)


def candidates_from_manifest(manifest: Any) -> list[Candidate]:
    """The subnets of an :class:`export.manifest.Manifest` as candidates, with the accuracy
    the export recorded for selection (the full eval when there was one, else parity's)."""
    return [Candidate(s.id, s.width, s.resolution, s.macs, s.top1()) for s in manifest.subnets]


def candidates_from_points(points: Iterable[Any]) -> list[Candidate]:
    """Evaluated grid points (``mutualnet.evaluate.GridPoint``: id, width, resolution, macs,
    top1) as candidates."""
    return [Candidate(p.id, float(p.width), int(p.resolution), int(p.macs), float(p.top1))
            for p in points]
