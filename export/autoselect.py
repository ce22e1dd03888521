"""Choose the subnets to ship by measured latency, not by MACs (torch-free).

MACs predict latency badly across widths, resolutions and precisions, so
``mutualnet export CKPT --auto N`` measures every candidate (width, resolution, precision)
of the checkpoint's grid and ships the N points that best cover the measured
accuracy-latency front. This module holds the parts that need no torch, so that the
measurement can run on the device (``mutualnet profile DIR --latency-table FILE``):

- :class:`Measured` / :class:`LatencyTable`: one measured candidate (its
  :class:`~export.budget.Candidate`, precision, p50 / p90 ms at one batch size, backend,
  device, load) and the versioned JSON file that holds them (:func:`read_table` is strict:
  unknown keys, missing keys, NaN, wrong types are refused with what to do).
- The rules, in order:

  1. **Indistinguishable latency.** The p50 of ``runs`` timed calls is uncertain by about
     ``(p90 - p50) / sqrt(runs)`` (the standard error of a median, taking the spread
     p90 - p50 as the scale; a busy machine widens it, so load shows up here). Two
     candidates whose p50s differ by at most twice their combined error, or by at most
     3 % of the smaller p50 (a floor for what that error misses: the load changing
     between one candidate's measurement and the next), count as *equal latency*.
  2. **Front.** ``a`` dominates ``b`` when ``a`` is at least as accurate and either clearly
     faster (``a.p90 < b.p50``) or of equal latency and more accurate; of two equally
     accurate candidates of equal latency the one with the lower p50 (then fewer MACs,
     then the id, then the precision) dominates. The front is every candidate nobody
     dominates, fastest first. On it accuracy rises strictly with latency and no two
     points are indistinguishable. A candidate dropped only because of rule 1 gets a note.
  3. **Choice of N.** A front of N points or fewer is shipped whole (with a note when it
     has fewer than N). Otherwise N = 1 keeps the most accurate; N >= 2 keeps the fastest
     and the most accurate, then adds, one at a time, the front point farthest (in log
     p50) from the points kept so far; distances are compared rounded to 1e-9, and a tie
     goes to the faster point.

  Accuracy is the top-1 the export recorded for selection (the same ``best`` and ``run``
  use); where a candidate has none, MACs stand in for accuracy for all of them (a note
  says so).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .budget import Candidate
from .errors import ExportUsageError, LatencyTableError
from .manifest import atomic_write_bytes, subnet_id, utc_now
from .profiles import PRECISIONS

TABLE_FORMAT = "mutualnet-latency-table"
TABLE_VERSION = 1
CANDIDATES_JSON = "auto_candidates.json"
CANDIDATES_MD = "auto_candidates.md"
CANDIDATES_PNG = "auto_candidates.png"
MEASURE_HINT = "measure again with `mutualnet profile DIR --latency-table FILE`"

Pair = tuple[float, int]

__all__ = ["CANDIDATES_JSON", "CANDIDATES_MD", "CANDIDATES_PNG", "MARGIN", "LatencyTable",
           "Measured", "Selection", "check_grid", "choose_spread", "dominates",
           "latency_margin", "measured", "pareto_front", "read_table", "same_latency",
           "select", "table_document", "write_table"]


@dataclass(frozen=True)
class Measured:
    """One candidate as measured: ``candidate.latency_ms`` is its p90 (what budgets use)."""

    candidate: Candidate
    precision: str
    p50_ms: float
    p90_ms: float
    runs: int
    batch: int
    backend: str
    device: str
    load: float | None = None   # 1-minute load average when measured (None: unknown)

    @property
    def key(self) -> tuple[str, str]:
        return self.candidate.id, self.precision

    @property
    def label(self) -> str:
        """``w0.50-r24`` for fp32, ``w0.50-r24 int8`` otherwise."""
        sid = self.candidate.id
        return sid if self.precision == "fp32" else f"{sid} {self.precision}"

    @property
    def spread_ms(self) -> float:
        """p90 - p50: how far one run may stray above the median."""
        return self.p90_ms - self.p50_ms

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {"id": c.id, "width": c.width, "resolution": c.resolution,
                "precision": self.precision, "macs": c.macs, "accuracy": c.accuracy,
                "p50_ms": self.p50_ms, "p90_ms": self.p90_ms,
                "spread_ms": round(self.spread_ms, 6), "runs": self.runs, "batch": self.batch,
                "backend": self.backend, "device": self.device, "load": self.load}


@dataclass(frozen=True)
class LatencyTable:
    """Measured candidates of one checkpoint's grid (``checkpoint_sha256``)."""

    model: str
    checkpoint_sha256: str
    rows: tuple[Measured, ...]
    created: str = ""
    cpu_count: int | None = None

    def pairs(self) -> list[Pair]:
        """The distinct (width, resolution) pairs measured, in row order."""
        return list(dict.fromkeys((m.candidate.width, m.candidate.resolution)
                                  for m in self.rows))


def measured(width: float, resolution: int, *, precision: str = "fp32", macs: int,
             accuracy: float | None, p50_ms: float, p90_ms: float, runs: int = 1,
             batch: int = 1, backend: str = "onnxruntime", device: str = "cpu",
             load: float | None = None) -> Measured:
    """A :class:`Measured` row from plain values (the id is derived from width and
    resolution)."""
    cand = Candidate(subnet_id(width, resolution), float(width), int(resolution),
                     int(macs), accuracy, p90_ms)
    return Measured(cand, precision, float(p50_ms), float(p90_ms), int(runs), int(batch),
                    backend, device, load)


# --------------------------------------------------------------------------- the file
_TABLE_KEYS = {"format": "str", "version": "int", "model": "str", "checkpoint_sha256": "str",
               "created": "str", "cpu_count": "int|none", "rows": "list"}
_SELECTION_KEYS = {"n": "int", "rule": "str", "front": "list", "chosen": "list",
                   "notes": "list"}
_ROW_KEYS = {"id": "str", "width": "float", "resolution": "int", "precision": "str",
             "macs": "int", "accuracy": "float|none", "p50_ms": "float", "p90_ms": "float",
             "spread_ms": "float", "runs": "int", "batch": "int", "backend": "str",
             "device": "str", "load": "float|none"}


def _is(value: Any, kinds: str) -> bool:
    for kind in kinds.split("|"):
        if kind == "none" and value is None:
            return True
        if isinstance(value, bool):
            continue
        if (kind == "str" and isinstance(value, str)) or (kind == "int" and isinstance(
                value, int)) or (kind == "float" and isinstance(value, int | float)):
            return True
        if (kind == "list" and isinstance(value, list)) or (kind == "dict" and isinstance(
                value, dict)):
            return True
    return False


def _fields(d: Any, spec: Mapping[str, str], where: str, source: str,
            optional: Iterable[str] = ()) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise LatencyTableError(f"{source}: {where} is not a JSON object; {MEASURE_HINT}")
    unknown = sorted(set(d) - set(spec) - set(optional))
    if unknown:
        raise LatencyTableError(f"{source}: unknown key {unknown[0]!r} in {where} (a latency "
                                f"table holds {', '.join(spec)}); {MEASURE_HINT}")
    missing = [k for k in spec if k not in d]
    if missing:
        raise LatencyTableError(f"{source}: {where} lacks {missing[0]!r}; {MEASURE_HINT}")
    for key, kinds in spec.items():
        if not _is(d[key], kinds):
            raise LatencyTableError(f"{source}: {where}.{key} must be {kinds.replace('|', ' or ')}"
                                    f", got {d[key]!r}; {MEASURE_HINT}")
    return d


def _need(ok: bool, source: str, where: str, what: str) -> None:
    if not ok:
        raise LatencyTableError(f"{source}: {where}: {what}; {MEASURE_HINT}")


def _row(d: Any, where: str, source: str) -> Measured:
    d = _fields(d, _ROW_KEYS, where, source)
    _need(d["width"] > 0 and d["resolution"] >= 1 and d["macs"] >= 1, source, where,
          "width, resolution and macs must be positive")
    _need(d["id"] == subnet_id(d["width"], d["resolution"]), source, where,
          f"id {d['id']!r} is not {subnet_id(d['width'], d['resolution'])!r} (its width and "
          "resolution)")
    _need(d["precision"] in PRECISIONS, source, where,
          f"precision {d['precision']!r} is not one of {', '.join(PRECISIONS)}")
    _need(d["accuracy"] is None or 0 <= d["accuracy"] <= 100, source, where,
          "accuracy is a top-1 percentage in 0..100 or null")
    p50, p90 = float(d["p50_ms"]), float(d["p90_ms"])
    _need(0 < p50 <= p90, source, where, f"latency needs 0 < p50_ms <= p90_ms, got {p50:g} "
          f"and {p90:g}")
    _need(abs(d["spread_ms"] - (p90 - p50)) <= 1e-5 + 1e-4 * p90, source, where,
          f"spread_ms {d['spread_ms']:g} is not p90_ms - p50_ms ({p90 - p50:g})")
    _need(d["runs"] >= 1 and d["batch"] >= 1, source, where, "runs and batch must be >= 1")
    _need(d["load"] is None or d["load"] >= 0, source, where, "load must be >= 0 or null")
    return measured(d["width"], d["resolution"], precision=d["precision"], macs=d["macs"],
                    accuracy=None if d["accuracy"] is None else float(d["accuracy"]),
                    p50_ms=p50, p90_ms=p90, runs=d["runs"], batch=d["batch"],
                    backend=d["backend"], device=d["device"],
                    load=None if d["load"] is None else float(d["load"]))


def table_from_document(doc: Any, source: str = "<latency table>") -> LatencyTable:
    """A :class:`LatencyTable` from a parsed document; :class:`LatencyTableError` (exit 2)
    naming the key for anything this version did not write."""
    doc = _fields(doc, _TABLE_KEYS, "the table", source, optional=("selection",))
    if doc["format"] != TABLE_FORMAT:
        raise LatencyTableError(f"{source} is not a latency table (format {doc['format']!r}); "
                                f"{MEASURE_HINT}")
    if doc["version"] != TABLE_VERSION:
        raise LatencyTableError(f"{source} is a version {doc['version']} latency table and "
                                f"this mutualnet reads version {TABLE_VERSION}; {MEASURE_HINT}")
    if "selection" in doc:
        _fields(doc["selection"], _SELECTION_KEYS, "selection", source)
    rows = tuple(_row(r, f"rows[{i}]", source) for i, r in enumerate(doc["rows"]))
    _need(bool(rows), source, "rows", "the table has no rows")
    seen: set[tuple[str, str]] = set()
    for i, m in enumerate(rows):
        _need(m.key not in seen, source, f"rows[{i}]", f"{m.label} appears twice")
        seen.add(m.key)
    return LatencyTable(doc["model"], doc["checkpoint_sha256"], rows, doc["created"],
                        doc["cpu_count"])


def read_table(path: str | os.PathLike[str]) -> LatencyTable:
    """Read a latency table file with the capped, strict JSON reader (export.jsonio)."""
    from .jsonio import read_json

    return table_from_document(read_json(path, error=LatencyTableError), str(path))


def table_document(table: LatencyTable, selection: Selection | None = None) -> dict[str, Any]:
    """The JSON document of ``table``; with ``selection``, which rows are on the front and
    chosen (the file stays a latency table: ``--latency-table`` reads it back)."""
    doc: dict[str, Any] = {"format": TABLE_FORMAT, "version": TABLE_VERSION,
                           "model": table.model, "checkpoint_sha256": table.checkpoint_sha256,
                           "created": table.created or utc_now(), "cpu_count": table.cpu_count,
                           "rows": [m.to_dict() for m in table.rows]}
    if selection is not None:
        doc["selection"] = {"n": selection.n, "rule": selection.rule,
                            "front": [m.label for m in selection.front],
                            "chosen": [m.label for m in selection.chosen],
                            "notes": list(selection.notes)}
    return doc


def write_table(path: str | os.PathLike[str], table: LatencyTable,
                selection: Selection | None = None) -> Path:
    """Write ``table`` (atomically) as JSON; returns the path."""
    text = json.dumps(table_document(table, selection), indent=1, allow_nan=False) + "\n"
    atomic_write_bytes(Path(path), text.encode())
    return Path(path)


def check_grid(table: LatencyTable, grid: Sequence[Pair], *, checkpoint_sha256: str,
               source: str) -> None:
    """Refuse a table measured on other candidates than ``grid`` (the checkpoint's), or on
    candidates of another checkpoint, naming the mismatch."""
    hint = ("write this checkpoint's candidates (`mutualnet candidates CKPT --out DIR`) and "
            "measure them (`mutualnet profile DIR --latency-table FILE`)")
    if table.checkpoint_sha256 != checkpoint_sha256:
        raise LatencyTableError(f"{source} was measured on candidates of another checkpoint "
                                f"(sha256 {table.checkpoint_sha256[:12]}..., this one is "
                                f"{checkpoint_sha256[:12]}...); {hint}")
    want = {subnet_id(w, r) for w, r in grid}
    have = {subnet_id(w, r) for w, r in table.pairs()}
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"not in the checkpoint's grid: {', '.join(extra)}"] if extra else [])
        raise LatencyTableError(f"{source} does not match the checkpoint's candidate grid "
                                f"({'; '.join(parts)}); {hint}")


# --------------------------------------------------------------------------- the rules
#: The smallest relative p50 difference that counts as a difference (rule 1).
MARGIN = 0.03


def median_error(m: Measured) -> float:
    """The uncertainty of ``m``'s p50: spread / sqrt(runs)."""
    return m.spread_ms / math.sqrt(m.runs)


def latency_margin(a: Measured, b: Measured) -> float:
    """How far apart two p50s must be to count as different (rule 1), in ms."""
    return max(MARGIN * min(a.p50_ms, b.p50_ms),
               2.0 * math.hypot(median_error(a), median_error(b)))


def same_latency(a: Measured, b: Measured) -> bool:
    """Rule 1: the p50s are within :func:`latency_margin` of each other (1e-9 relative
    slack, so that 1.03 vs 1.00 is within 3 % in floating point too)."""
    return abs(a.p50_ms - b.p50_ms) <= latency_margin(a, b) * (1 + 1e-9)


def _order(m: Measured) -> tuple[float, int, str, str]:
    return m.p50_ms, m.candidate.macs, m.candidate.id, m.precision


Quality = Callable[[Measured], float]


def quality_of(rows: Sequence[Measured]) -> tuple[Quality, str]:
    """What "more accurate" means: top-1 when every candidate has one, else MACs."""
    if all(m.candidate.accuracy is not None for m in rows):
        return (lambda m: float(m.candidate.accuracy or 0.0)), "top-1"
    return (lambda m: float(m.candidate.macs)), "MACs"


def dominates(a: Measured, b: Measured, quality: Quality) -> bool:
    """Rule 2: ``a`` at least as accurate, and clearly faster, or of equal latency and more
    accurate (equal accuracy: the lower p50, MACs, id, precision)."""
    qa, qb = quality(a), quality(b)
    if qa < qb or a.key == b.key:
        return False
    if not same_latency(a, b):
        return a.p50_ms < b.p50_ms
    return qa > qb or _order(a) < _order(b)


def pareto_front(rows: Sequence[Measured], quality: Quality | None = None
                 ) -> tuple[tuple[Measured, ...], tuple[str, ...]]:
    """(the non-dominated candidates, fastest first; a note for each candidate dropped only
    because its latency is indistinguishable from a better one's)."""
    q = quality or quality_of(rows)[0]
    ordered = sorted(rows, key=_order)
    front = tuple(m for m in ordered if not any(dominates(o, m, q) for o in ordered))
    dropped: dict[tuple[str, str], list[Measured]] = {}
    for m in ordered:
        winners = [o for o in ordered if dominates(o, m, q)]
        if winners and all(same_latency(o, m) for o in winners):
            w = next((o for o in winners if o in front), winners[0])
            dropped.setdefault(w.key, []).append(m)
    notes = tuple(_equal_note(w, dropped[w.key]) for w in ordered if w.key in dropped)
    return front, notes


def _equal_note(kept: Measured, dropped: Sequence[Measured]) -> str:
    def p50(m: Measured) -> str:
        return f"{m.label} (p50 {m.p50_ms:.3g} ms, spread {m.spread_ms:.2g})"

    return (f"indistinguishable in latency from {p50(kept)}, so treated as equal and left "
            f"out for it (it is more accurate, or as accurate with a lower p50): "
            f"{', '.join(p50(m) for m in dropped)}")


def _distance(m: Measured, kept: Sequence[Measured]) -> float:
    return round(min(abs(math.log(m.p50_ms) - math.log(k.p50_ms)) for k in kept), 9)


def choose_spread(front: Sequence[Measured], n: int) -> tuple[Measured, ...]:
    """Rule 3: N points of ``front`` spread over its latency range, fastest first."""
    if n < 1:
        raise ExportUsageError(f"--auto needs N >= 1 points to ship, got {n}")
    pts = sorted(front, key=_order)
    if len(pts) <= n:
        return tuple(pts)
    if n == 1:
        return (pts[-1],)
    kept = [pts[0], pts[-1]]
    while len(kept) < n:
        rest = [(i, m) for i, m in enumerate(pts) if m not in kept]
        _, best = max(rest, key=lambda im: (_distance(im[1], kept), -im[0]))
        kept.append(best)
    return tuple(sorted(kept, key=_order))


RULE = ("front by measured p50 (within 2 standard errors or 3 % = equal latency); keep the "
        "fastest and the most accurate, then the farthest in log p50 (ties: the faster)")


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select`: every row, the front, the chosen points (fastest
    first), what "accuracy" meant, and the notes to show the user."""

    n: int
    rows: tuple[Measured, ...]
    front: tuple[Measured, ...]
    chosen: tuple[Measured, ...]
    quality: str
    notes: tuple[str, ...]
    rule: str = RULE

    def pairs(self) -> tuple[Pair, ...]:
        """The distinct (width, resolution) pairs chosen, fastest first."""
        return tuple(dict.fromkeys((m.candidate.width, m.candidate.resolution)
                                   for m in self.chosen))

    def precisions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.precision for m in self.chosen))


def _load_note(table: LatencyTable) -> str | None:
    loads = [m.load for m in table.rows if m.load is not None]
    if not loads or table.cpu_count is None or max(loads) <= table.cpu_count:
        return None
    return (f"measured under load (load average up to {max(loads):.1f} on {table.cpu_count} "
            "cores): latencies are inflated and their spread wide, so more candidates are "
            "indistinguishable; measure on a quiet machine for a sharper choice")


def select(table: LatencyTable, n: int) -> Selection:
    """Apply rules 1-3 to ``table``: the front and the N points to ship."""
    if n < 1:
        raise ExportUsageError(f"--auto needs N >= 1 points to ship, got {n}")
    quality, what = quality_of(table.rows)
    front, notes = pareto_front(table.rows, quality)
    chosen = choose_spread(front, n)
    extra = [note for note in (_load_note(table),) if note]
    if what == "MACs":
        extra.append("no accuracy recorded for some candidates: MACs stand in for accuracy "
                     "(export with labelled --data to choose by top-1)")
    if len(front) < n:
        extra.append(f"the accuracy-latency front has {len(front)} point(s), fewer than the "
                     f"{n} asked for: shipping those {len(front)}")
    return Selection(n, tuple(sorted(table.rows, key=_order)), front, chosen, what,
                     (*notes, *extra))
