"""Measure an export of candidate subnets into a latency table; write the candidate reports.

Torch-free, so it runs on the device: ``mutualnet profile DIR --latency-table FILE`` calls
:func:`measure_candidates` on the directory ``mutualnet candidates CKPT --out DIR`` wrote
(an ordinary export of the checkpoint's whole grid). Timing is ``mutualnet profile``'s
(:func:`export.latency.measure_runtime`: warm-up, timed runs, p50 / p90, the load average
recorded), at one batch size: the export profile's ``opt_batch`` unless told otherwise.
The figures also go into the directory's manifest, as ``profile`` writes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .autoselect import (
    CANDIDATES_JSON,
    CANDIDATES_MD,
    CANDIDATES_PNG,
    LatencyTable,
    Measured,
    Selection,
    measured,
    write_table,
)
from .latency import DEFAULT_DURATION_S, LatencyStats, measure_runtime, record_latencies
from .manifest import SubnetEntry, load_manifest, utc_now
from .profiles import PRECISIONS

__all__ = ["candidate_accuracy", "candidates_markdown", "measure_candidates",
           "plot_candidates", "write_candidate_reports"]


def candidate_accuracy(sn: SubnetEntry, precision: str) -> float | None:
    """The top-1 a candidate is chosen by: fp32 the selection accuracy (``best``'s and
    ``run``'s), fp16 / int8 the accuracy their gate measured."""
    if precision == "fp32":
        return sn.top1()
    rec = sn.precision_records.get(precision)
    return None if rec is None or rec.accuracy is None else rec.accuracy.top1


def _row(sn: SubnetEntry, precision: str, stats: LatencyStats, backend: str,
         device: str) -> Measured:
    return measured(sn.width, sn.resolution, precision=precision, macs=sn.macs,
                    accuracy=candidate_accuracy(sn, precision), p50_ms=float(f"{stats.p50_ms:.5g}"),
                    p90_ms=float(f"{stats.p90_ms:.5g}"), runs=stats.runs, batch=stats.batch,
                    backend=backend, device=device, load=stats.load)


def measure_candidates(export_dir: str | os.PathLike[str], *,
                       precisions: Sequence[str] | None = None, backend: str = "auto",
                       device: str | None = None, batch: int | None = None,
                       duration_s: float = DEFAULT_DURATION_S, threads: int | None = None,
                       progress: bool = True) -> LatencyTable:
    """Measure every subnet of ``export_dir`` in each precision (default: every one it
    holds) at ``batch`` (default: its profile's ``opt_batch``) into a latency table."""
    from .runtime import SubnetRuntime

    manifest = load_manifest(export_dir)
    held = {p for sn in manifest.subnets for p in sn.precisions}
    precs = list(precisions) if precisions else [p for p in PRECISIONS if p in held]
    size = batch or manifest.profile.opt_batch
    rows: list[Measured] = []
    for p in precs:
        with SubnetRuntime.load(export_dir, backend=backend, device=device, threads=threads,
                                precision=p) as rt:
            stats = measure_runtime(rt, [size], duration_s=duration_s, progress=progress)
            record_latencies(rt, stats, p)
            rows += [_row(manifest.subnet(s.subnet_id), p, s, rt.backend, rt.device_name)
                     for s in stats]
    return LatencyTable(manifest.model.name, manifest.source_checkpoint.sha256, tuple(rows),
                        utc_now(), os.cpu_count())


# --------------------------------------------------------------------------- reports
def _cell(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def candidates_markdown(table: LatencyTable, selection: Selection, *,
                        with_notes: bool = True) -> str:
    """The candidate table, fastest first: MACs, top-1, p50 / p90 / spread, front, chosen;
    then the selection's notes (``with_notes``)."""
    front = {m.key for m in selection.front}
    chosen = {m.key for m in selection.chosen}
    lines = ["| candidate | precision | MACs | top-1 | p50 ms | p90 ms | spread ms | front | "
             "chosen |", "|" + "---|" * 9]
    for m in selection.rows:
        c = m.candidate
        lines.append(f"| {c.id} | {m.precision} | {c.mmacs:.4g}M | {_cell(c.accuracy, '.2f')} "
                     f"| {m.p50_ms:.4g} | {m.p90_ms:.4g} | {m.spread_ms:.3g} | "
                     f"{'yes' if m.key in front else ''} | "
                     f"{'**chosen**' if m.key in chosen else ''} |")
    first = table.rows[0]
    head = (f"Candidates of {table.model}: {len(table.rows)} measured with {first.backend} on "
            f"{first.device}, batch {first.batch}; accuracy axis: {selection.quality}. "
            f"Rule: {selection.rule}. Chose {len(selection.chosen)} of the "
            f"{len(selection.front)} front points ({selection.n} asked for).")
    notes = "".join(f"\n- {n}" for n in selection.notes) if with_notes else ""
    return f"{head}\n\n" + "\n".join(lines) + (f"\n\nNotes:{notes}" if notes else "") + "\n"


def plot_candidates(selection: Selection, path: str | os.PathLike[str]) -> None:
    """Accuracy against measured p50 latency (bars to p90), the front and the chosen points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def y(m: Measured) -> float:
        return float(m.candidate.macs / 1e6 if selection.quality == "MACs"
                     else m.candidate.accuracy or 0.0)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    rows = selection.rows
    ax.errorbar([m.p50_ms for m in rows], [y(m) for m in rows],
                xerr=[[0.0] * len(rows), [m.spread_ms for m in rows]], fmt="o", color="C0",
                alpha=0.45, markersize=4, label="candidates (bar: p50 to p90)")
    ax.plot([m.p50_ms for m in selection.front], [y(m) for m in selection.front], "-",
            color="C0", label="front")
    ax.scatter([m.p50_ms for m in selection.chosen], [y(m) for m in selection.chosen], s=80,
               facecolors="none", edgecolors="C3", linewidths=1.5, label="chosen", zorder=3)
    for m in selection.chosen:
        ax.annotate(m.label, (m.p50_ms, y(m)), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"measured latency, ms (p50, batch {rows[0].batch}; log scale)")
    ax.set_ylabel("top-1 accuracy (%)" if selection.quality == "top-1" else
                  "million MACs (no accuracy recorded)")
    ax.set_title(f"Accuracy vs measured latency on {rows[0].device} ({rows[0].backend})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_candidate_reports(out_dir: str | os.PathLike[str], table: LatencyTable,
                            selection: Selection) -> dict[str, Path]:
    """Write auto_candidates.json (a latency table with the selection), .md and .png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"auto_candidates_json": write_table(out / CANDIDATES_JSON, table,
                                                                 selection)}
    (out / CANDIDATES_MD).write_text(candidates_markdown(table, selection))
    paths["auto_candidates_md"] = out / CANDIDATES_MD
    plot_candidates(selection, out / CANDIDATES_PNG)
    paths["auto_candidates_png"] = out / CANDIDATES_PNG
    return paths
