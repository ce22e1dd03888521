"""``mutualnet export CKPT --auto N`` and ``mutualnet candidates``: ship the N subnets that
cover the measured accuracy-latency front (the rules are in :mod:`export.autoselect`).

1. The candidate grid: the checkpoint's trained widths (``config.eval_widths()``, what
   ``mutualnet eval`` reports) x its resolutions.
2. Its candidates: an ordinary export of the whole grid (BN calibrated per subnet, ONNX,
   parity and accuracy on the held-out images, in every precision asked for), into a
   temporary directory (``export --auto``) or ``--out`` (``candidates``, for the device).
3. Their latency, measured here (:func:`export.candidates.measure_candidates`, the
   profile's ``opt_batch``) or read from ``--latency-table`` (measured on the device).
4. :func:`export.autoselect.select`, then the normal export of exactly the chosen
   (width, resolution) pairs into ``out``, with auto_candidates.json / .md / .png listed in
   its manifest.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .autoselect import LatencyTable, Pair, Selection, check_grid, read_table, select
from .candidates import measure_candidates, write_candidate_reports
from .errors import ExportUsageError, LatencyTableError
from .latency import DEFAULT_DURATION_S
from .pipeline import (
    ExportOptions,
    ExportReport,
    check_options,
    check_output_dir,
    export_checkpoint,
    plan_grid,
)
from .precisions import parse_precisions
from .profiles import DeployProfile, load_profile, override_gates

__all__ = ["AutoOptions", "AutoReport", "candidate_grid", "export_auto", "export_candidates"]

DEVICE_STEPS = ("`mutualnet candidates CKPT --out DIR --profile {p}`, copy DIR to the device, "
                "`mutualnet profile DIR --latency-table lat.json` there, copy lat.json back, "
                "then `mutualnet export CKPT --auto N --latency-table lat.json --profile {p}`")


@dataclass(frozen=True)
class AutoOptions:
    """``--auto N`` and how to get the latencies."""

    n: int
    latency_table: str | None = None   # measured on the device; None: measure here
    duration_s: float = DEFAULT_DURATION_S   # timed seconds per candidate (measured here)
    threads: int | None = None   # ONNX Runtime threads for the measurement


@dataclass(frozen=True)
class AutoReport:
    """What :func:`export_auto` measured, chose and exported."""

    export: ExportReport
    table: LatencyTable
    selection: Selection
    notes: tuple[str, ...]   # from the candidate export (BN kept as stored, ...)


def candidate_grid(checkpoint: str | os.PathLike[str]) -> tuple[list[Pair], str]:
    """(the checkpoint's trained widths x resolutions, its sha256)."""
    from mutualnet.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    grid = plan_grid(ckpt.model, widths=ckpt.config.eval_widths(),
                     resolutions=ckpt.model.resolutions)
    return grid, ckpt.sha256


def _grid_options(options: ExportOptions, pairs: tuple[Pair, ...]) -> ExportOptions:
    return dataclasses.replace(options, widths=None, resolutions=None, pairs=pairs)


def export_candidates(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      options: ExportOptions | None = None) -> ExportReport:
    """Export the whole candidate grid of ``checkpoint`` into ``out_dir`` (for measuring on
    the device with ``mutualnet profile DIR --latency-table FILE``)."""
    options = options or ExportOptions()
    _check_grid_flags(options, "candidates")
    grid, _ = candidate_grid(checkpoint)
    return export_checkpoint(checkpoint, out_dir, _grid_options(options, tuple(grid)))


def _check_grid_flags(options: ExportOptions, what: str) -> None:
    if options.widths or options.resolutions or options.pairs:
        raise ExportUsageError(f"{what} exports the checkpoint's whole grid and chooses from "
                               "it; drop --widths/--resolutions/--pairs")


def _measure_here(checkpoint: Path, grid: list[Pair], options: ExportOptions,
                  auto: AutoOptions, profile: DeployProfile,
                  precisions: tuple[str, ...]) -> tuple[LatencyTable, tuple[str, ...]]:
    with tempfile.TemporaryDirectory(prefix="mutualnet-candidates-") as work:
        cand = Path(work) / "candidates"
        report = export_checkpoint(checkpoint, cand, dataclasses.replace(
            _grid_options(options, tuple(grid)), force=False, attachments=()))
        backend = "onnxruntime"
        if profile.runtime == "tensorrt":
            from .tensorrt_build import build_engines

            build_engines(cand, profile, progress=options.progress)
            backend = "tensorrt"
        table = measure_candidates(cand, precisions=precisions, backend=backend,
                                   batch=profile.opt_batch, duration_s=auto.duration_s,
                                   threads=auto.threads, progress=options.progress)
    notes = list(report.notes)
    if report.failed:
        notes.append(f"left out of the candidates (failed parity): {', '.join(report.failed)}")
        table = dataclasses.replace(table, rows=tuple(
            m for m in table.rows if m.candidate.id not in report.failed))
    return table, tuple(notes)


def _table_from_file(path: str, grid: list[Pair], sha256: str,
                     precisions: tuple[str, ...]) -> LatencyTable:
    table = read_table(path)
    check_grid(table, grid, checkpoint_sha256=sha256, source=path)
    rows = tuple(m for m in table.rows if m.precision in precisions)
    if not rows:
        held = sorted({m.precision for m in table.rows})
        raise LatencyTableError(f"{path} measured {', '.join(held)}, none of the precisions "
                                f"asked for ({', '.join(precisions)}); pass --precision "
                                f"{','.join(held)} or measure that precision")
    return dataclasses.replace(table, rows=rows)


def _check_auto(options: ExportOptions, auto: AutoOptions, profile: DeployProfile) -> None:
    _check_grid_flags(options, "--auto N")
    if auto.n < 1:
        raise ExportUsageError(f"--auto needs N >= 1 points to ship, got {auto.n}")
    if auto.duration_s <= 0:
        raise ExportUsageError("--duration must be a positive number of seconds")
    if (auto.latency_table is None and profile.runtime == "tensorrt"
            and importlib.util.find_spec("tensorrt") is None):
        raise ExportUsageError(
            f"profile {profile.name} runs TensorRT, which is not installed here, so its "
            "latency cannot be measured on this machine; measure on the device: "
            + DEVICE_STEPS.format(p=profile.name))


def _final_precisions(options: ExportOptions, selection: Selection,
                      asked: tuple[str, ...]) -> str | tuple[str, ...] | None:
    chosen = ("fp32", *selection.precisions())
    return options.precisions if set(chosen) == set(asked) else tuple(dict.fromkeys(chosen))


def export_auto(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                options: ExportOptions, auto: AutoOptions) -> AutoReport:
    """Measure (or read) the candidates' latency, choose ``auto.n`` and export them."""
    from mutualnet.checkpoint import resolve_checkpoint_path

    profile = override_gates(load_profile(options.profile), options.gates)
    _check_auto(options, auto, profile)
    check_options(options)
    precisions, _ = parse_precisions(options.precisions, profile)
    weights = resolve_checkpoint_path(checkpoint)
    out = Path(out_dir).expanduser()
    check_output_dir(out, force=options.force, protect=(weights,))
    grid, sha256 = candidate_grid(weights)
    notes: tuple[str, ...] = ()
    if auto.latency_table is not None:
        table = _table_from_file(auto.latency_table, grid, sha256, precisions)
    else:
        table, notes = _measure_here(weights, grid, options, auto, profile, precisions)
    selection = select(table, auto.n)
    with tempfile.TemporaryDirectory(prefix="mutualnet-auto-") as work:
        files = write_candidate_reports(work, table, selection)
        final = dataclasses.replace(
            _grid_options(options, selection.pairs()),
            precisions=_final_precisions(options, selection, precisions),
            attachments=tuple((k, str(p)) for k, p in files.items()))
        report = export_checkpoint(weights, out, final)
    return AutoReport(report, table, selection, notes)
