"""The study's evaluation: committed results -> per-(w, r) table, claims and verdicts.

Three claims (issue 15, SPEC 1): MutualNet beats US-Net at every MACs budget; US-Net
beats independently trained networks at every budget; MutualNet's full-width network
beats the same network trained plainly (``independent-w1.00``). A difference counts only
when it exceeds the seed spread (max - min over seeds) of both methods at that point.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mutualnet.evaluate import GridPoint

from .runs import Paths, points_of, read_result
from .settings import GROUPS, INDEPENDENT_WIDTHS, RESOLUTIONS, RunSpec, Scale, plan_runs

Key = tuple[float, int]  # (width, resolution)


@dataclass(frozen=True)
class Loaded:
    """The results of one study: per group, per seed, the evaluated points."""

    scale: Scale
    per_group: Mapping[str, Mapping[int, tuple[GridPoint, ...]]]
    docs: Mapping[str, dict]  # run key -> results document
    missing: tuple[RunSpec, ...]  # planned runs without a (current) results file


def load_study(scale: Scale, paths: Paths) -> Loaded:
    per: dict[str, dict[int, list[GridPoint]]] = {g: {} for g in GROUPS}
    docs, missing = {}, []
    for spec in plan_runs(scale):
        doc = read_result(paths.result_file(spec))
        if doc is None or doc.get("settings") != scale.fairness():
            missing.append(spec)
            continue
        docs[spec.key] = doc
        per[spec.group].setdefault(spec.seed, []).extend(points_of(doc))
    # a seed counts for a group only when all of its runs are there
    need = {g: {s.name for s in plan_runs(scale, (0,)) if s.group == g} for g in GROUPS}
    complete: dict[str, dict[int, tuple[GridPoint, ...]]] = {}
    for g, seeds in per.items():
        complete[g] = {seed: tuple(pts) for seed, pts in seeds.items()
                       if all(f"{n}-s{seed}" in docs for n in need[g])}
    return Loaded(scale, complete, docs, tuple(missing))


@dataclass(frozen=True)
class Stat:
    """Top-1 of one (w, r) point of one method over its seeds."""

    mean: float
    values: tuple[float, ...]
    macs: int

    @property
    def spread(self) -> float:
        return max(self.values) - min(self.values)

    def text(self) -> str:
        seeds = " / ".join(f"{v:.2f}" for v in self.values)
        return f"{self.mean:.2f} ({seeds})" if len(self.values) > 1 else f"{self.mean:.2f}"


def stats(per_seed: Mapping[int, Sequence[GridPoint]]) -> dict[Key, Stat]:
    """Per (w, r) that every seed evaluated: the mean and per-seed top-1."""
    if not per_seed:
        return {}
    keyed = [{(p.width, p.resolution): p for p in pts}
             for _, pts in sorted(per_seed.items())]
    common = set(keyed[0]).intersection(*keyed[1:])
    return {k: Stat(statistics.fmean(d[k].top1 for d in keyed),
                    tuple(d[k].top1 for d in keyed), keyed[0][k].macs) for k in common}


def mean_points(per_seed: Mapping[int, Sequence[GridPoint]]) -> list[GridPoint]:
    """One point per common (w, r) with the seed-mean top-1 (for the budget rule, plots)."""
    from mutualnet.evaluate import sort_points

    first = {(p.width, p.resolution): p for p in next(iter(per_seed.values()), ())}
    out = []
    for k, st in stats(per_seed).items():
        p = first[k]
        out.append(GridPoint(p.width, p.resolution, p.macs, p.params, st.mean, p.top5,
                             p.images, p.loss))
    return sort_points(out)


def best_within(points: Sequence[GridPoint], macs: float) -> GridPoint | None:
    """The point ``mutualnet best`` picks within ``macs``: export.budget.choose, the one
    budget rule; None when none fits."""
    from export.budget import candidates_from_points, choose
    from export.errors import BudgetError

    if not points:
        return None
    try:
        chosen = choose(candidates_from_points(points), mmacs=macs * (1 + 1e-9) / 1e6,
                        strict=True)
    except BudgetError:
        return None
    return next(p for p in points if p.id == chosen.subnet_id)


def budgets(loaded: Loaded) -> list[tuple[str, int]]:
    """MAC budgets: every independent net at each resolution (the points where all three
    methods have a network), from the largest down."""
    macs: dict[Key, int] = {}
    for per_seed in loaded.per_group.values():
        for pts in per_seed.values():
            macs.update({(p.width, p.resolution): p.macs for p in pts})
    keys = [(w, r) for w in INDEPENDENT_WIDTHS for r in RESOLUTIONS if (w, r) in macs]
    keys.sort(key=lambda k: -macs[k])
    return [(f"w{w:.2f}-r{r}", macs[(w, r)]) for w, r in keys]


@dataclass(frozen=True)
class Comparison:
    """Method a vs method b at one budget: the subnets each picks and their stats."""

    budget: str
    macs: int
    a: tuple[str, Stat] | None  # (subnet id, stat)
    b: tuple[str, Stat] | None

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` (a vs b, beyond both seed spreads), ``noise`` or ``n/a``."""
        if self.a is None or self.b is None:
            return "n/a"
        sa, sb = self.a[1], self.b[1]
        diff = sa.mean - sb.mean
        noise = max(sa.spread, sb.spread)
        if diff > noise:
            return "better"
        if diff < -noise:
            return "worse"
        return "noise"


def _pick(loaded: Loaded, group: str, macs: int) -> tuple[str, Stat] | None:
    per_seed = loaded.per_group.get(group, {})
    best = best_within(mean_points(per_seed), macs)
    if best is None:
        return None
    return best.id, stats(per_seed)[(best.width, best.resolution)]


def compare(loaded: Loaded, a: str, b: str) -> list[Comparison]:
    return [Comparison(label, macs, _pick(loaded, a, macs), _pick(loaded, b, macs))
            for label, macs in budgets(loaded)]


def boosting(loaded: Loaded) -> Comparison:
    """MutualNet's w1.00-r32 vs the plain full-width network (independent-w1.00) at r32."""
    base = max(RESOLUTIONS)
    mut = stats(loaded.per_group.get("MutualNet", {})).get((1.0, base))
    plain = stats({s: [p for p in pts if p.width == 1.0]
                   for s, pts in loaded.per_group.get("Independent", {}).items()}
                  ).get((1.0, base))
    either = mut if mut is not None else plain
    macs = either.macs if either is not None else 0
    return Comparison(f"w1.00-r{base}", macs, ("w1.00-r32", mut) if mut else None,
                      ("w1.00-r32", plain) if plain else None)


def claim_sentence(claim: str, comps: Sequence[Comparison], seeds: int) -> str:
    """One plain sentence: holds / does not hold / within noise, with the counts."""
    known = [c for c in comps if c.verdict != "n/a"]
    if not known:
        return f"{claim}: not measured yet (runs missing)."
    n = len(known)
    better = sum(c.verdict == "better" for c in known)
    worse = sum(c.verdict == "worse" for c in known)
    where = f"at {n} budget{'s' * (n > 1)}" if n > 1 else "at the one point compared"
    caveat = "" if seeds > 1 else " (one seed: no spread, so any difference counts)"
    if worse:
        verdict = f"does not hold: worse beyond the seed spread at {worse} of {n}"
    elif better == n:
        verdict = f"holds {where}, each beyond the seed spread"
    else:
        verdict = (f"within noise: better beyond the seed spread at {better} of {n}, "
                   f"within the spread at {n - better}")
    return f"{claim}: {verdict}{caveat}."


def seeds_of(loaded: Loaded) -> int:
    return min((len(v) for v in loaded.per_group.values() if v), default=0)


def missing_note(loaded: Loaded) -> str:
    if not loaded.missing:
        return "All planned runs are in."
    return "Missing runs (no current results file): " + ", ".join(
        s.key for s in loaded.missing) + "."
