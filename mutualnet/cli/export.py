"""``mutualnet export``: checkpoint -> standalone subnets, ONNX, parity table, manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._params import FLOATS, RESOLUTIONS, progress_option, threads_option

_SHARED: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--profile", default=None, metavar="NAME_OR_PATH",
                 help="Deploy profile: a shipped name (cpu, jetson-orin-nano, ...) or a .yml "
                      "file [default: cpu]."),
    click.option("--calib-images", type=click.IntRange(min=0), default=None,
                 help="Training images per subnet for BN calibration [default: the config's, "
                      "10000]; 0 keeps the checkpoint's statistics."),
    click.option("--eval-images", type=click.IntRange(min=1), default=500, show_default=True,
                 help="Held-out images for parity and accuracy."),
    click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True),
    click.option("--data", default=None, metavar="NAME|NAME:PATH|PATH",
                 help="Data to calibrate and check on instead of the checkpoint's, e.g. "
                      "npz:../shared/data/cifar10_jpeg.npz; a folder of images (no class "
                      "folders) or 'synthetic' checks parity without labels."),
    click.option("--device", default="auto", show_default=True,
                 help="Device for BN calibration: auto (cuda if present), cpu, cuda; parity "
                      "always runs on the CPU."),
    click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]),
                 default="torchscript", show_default=True,
                 help="ONNX exporter (torchscript is ~40x faster here)."),
    threads_option,
    click.option("--precision", "precision", default=None, metavar="fp32,fp16,int8",
                 help="Artifacts per subnet: comma list of fp32, fp16, int8 [default: the "
                      "profile's precisions]; fp32 is always written (the reference). Named "
                      "here, a precision that fails its gate makes the export exit 1."),
    click.option("--int8-calib-images", type=click.IntRange(min=1), default=256,
                 show_default=True, help="Images per subnet for int8 calibration, at its "
                                         "resolution, after its BN calibration."),
    click.option("--calib-data", type=click.Path(path_type=Path), default=None,
                 metavar="FOLDER", help="A folder of images (no labels needed) to calibrate "
                                        "int8 on instead of the training images."),
    click.option("--int8-method", type=click.Choice(["minmax", "percentile", "entropy"]),
                 default="minmax", show_default=True,
                 help="How int8 calibration sets activation ranges (ONNX Runtime's MinMax, "
                      "Percentile 99.999 % or Entropy)."),
    click.option("--gate", "gates", multiple=True, metavar="KEY=VALUE",
                 help="Override one parity gate of the profile, e.g. "
                      "int8_min_top1_agreement=0.875 for 7 of 8 images (repeatable)."),
    click.option("--force", is_flag=True, help="Replace a non-empty output directory."),
    progress_option,
]


def shared_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``export`` and ``candidates`` share (how to calibrate, check, write)."""
    for option in reversed(_SHARED):
        command = option(command)
    return command


def _export_options(checkpoint: Path, out: Path | None, default_out: str,
                    shared: dict[str, Any], **grid: Any) -> tuple[Any, Path]:
    """(ExportOptions from the shared options and ``grid``, the output directory); sets the
    torch threads."""
    from export.pipeline import ExportOptions

    from ..device import configure_threads

    configure_threads(shared["threads"])
    if out is None:
        out = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / default_out
    calib_data = shared["calib_data"]
    options = ExportOptions(
        profile=shared["profile"], calib_images=shared["calib_images"],
        eval_images=shared["eval_images"], batch_size=shared["batch_size"],
        data=shared["data"], force=shared["force"], exporter=shared["exporter"],
        device=shared["device"], progress=shared["progress"], precisions=shared["precision"],
        int8_calib_images=shared["int8_calib_images"],
        calib_data=str(calib_data) if calib_data else None,
        int8_method=shared["int8_method"], gates=tuple(shared["gates"]), **grid)
    return options, out


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--widths", type=FLOATS, default=None,
              help="Comma list of widths [default: the config's width list, else the range ends].")
@click.option("--resolutions", type=RESOLUTIONS, default=None,
              help="Comma list of input sides [default: the model's resolution list].")
@click.option("--pairs", default=None, metavar="W@R,...",
              help="Explicit pairs, e.g. 0.25@128,1.0@224 (instead of widths x resolutions).")
@click.option("--auto", "auto", type=click.IntRange(min=1), default=None, metavar="N",
              help="Measure every candidate of the checkpoint's grid (trained widths x "
                   "resolutions) with the profile's backend and batch size and export the N "
                   "that best cover the accuracy-latency front (instead of --widths/"
                   "--resolutions/--pairs); writes auto_candidates.json/.md/.png.")
@click.option("--latency-table", type=click.Path(path_type=Path), default=None,
              metavar="FILE", help="With --auto: latencies measured on the device "
                                   "(`mutualnet profile DIR --latency-table FILE`) instead "
                                   "of measuring here.")
@click.option("--duration", type=click.FloatRange(min=0.01), default=3.0, show_default=True,
              help="With --auto: seconds of timed runs per candidate (after a 200 ms "
                   "warm-up), as `mutualnet profile`.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory [default: CHECKPOINT's run directory /export].")
@click.option("--engines", is_flag=True,
              help="Then build TensorRT engines as `mutualnet build-engines OUT --profile "
                   "PROFILE` does (needs a TensorRT profile; writes build_engines.sh first).")
@shared_options
def export_cmd(checkpoint: Path, widths: list[float] | None, resolutions: list[int] | None,
               pairs: str | None, auto: int | None, latency_table: Path | None,
               duration: float, out: Path | None, engines: bool, **shared: Any) -> None:
    """Export subnets of CHECKPOINT (a run directory or its .safetensors) for deployment.

    For each (width, resolution): BN calibration, a plain sliced model with BN folded
    (weights.safetensors + arch.json), model.onnx (opset 17), and parity against the
    supernet on held-out images. Writes parity.md, parity.json, parity_images.npz (those
    held-out images, for engine parity on the device) and manifest.json; exits 1 if any
    subnet fails parity (its files are kept and marked in the manifest). With --engines,
    then builds TensorRT engines as build-engines does, with engine parity on the stored
    images (exit 1 with an install hint, after writing build_engines.sh, where tensorrt is
    missing). With --auto N, chooses the subnets by measured latency first (see README,
    "Choosing subnets by measured latency").
    """
    from export.errors import ExportUsageError
    from export.pipeline import export_checkpoint, parse_pairs
    from export.profiles import load_profile

    deploy = load_profile(shared["profile"])  # usage errors before any work
    if engines and deploy.runtime != "tensorrt":
        raise ExportUsageError(f"--engines needs a TensorRT deploy profile, and {deploy.name} "
                               f"targets {deploy.runtime}; pass --profile jetson-orin-nano, "
                               "server-a100, ... or drop --engines")
    if auto is None and latency_table is not None:
        raise ExportUsageError("--latency-table is for --auto N; add --auto N or drop it")
    options, out = _export_options(
        checkpoint, out, "export", shared, widths=tuple(widths) if widths else None,
        resolutions=tuple(resolutions) if resolutions else None,
        pairs=parse_pairs(pairs) if pairs else None)
    if auto is not None:
        report = _auto(checkpoint, out, options, auto, latency_table, duration,
                       shared["threads"])
    else:
        report = export_checkpoint(checkpoint, out, options)
    _report(report, engines, shared)


def _auto(checkpoint: Path, out: Path, options: Any, n: int, latency_table: Path | None,
          duration: float, threads: int | None) -> Any:
    """``export --auto N``: choose, export, print the candidate table; the export report."""
    from export.auto import AutoOptions, export_auto
    from export.autoselect import CANDIDATES_JSON
    from export.candidates import candidates_markdown

    from .deploy import _warnings_to_stderr

    with _warnings_to_stderr():
        auto = export_auto(checkpoint, out, options, AutoOptions(
            n, str(latency_table) if latency_table else None, duration, threads))
    for note in (*auto.notes, *auto.selection.notes):
        click.echo(f"note: {note}", err=True)
    click.echo(candidates_markdown(auto.table, auto.selection, with_notes=False))
    chosen = ", ".join(m.label for m in auto.selection.chosen)
    source = f"from {latency_table}" if latency_table else "measured here"
    click.echo(f"chose {len(auto.selection.chosen)} of {len(auto.table.rows)} candidates "
               f"(latency {source}): {chosen}; table in {out / CANDIDATES_JSON}")
    return auto.export


def _report(report: Any, engines: bool, shared: dict[str, Any]) -> None:
    """Print an export's notes, parity table and files; exit 1 on a parity failure."""
    from export.errors import ParityError

    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(report.table)
    click.echo(f"wrote {len(report.subnets)} subnets, parity.md, parity.json, "
               f"parity_images.npz and manifest.json to {report.out_dir} in "
               f"{report.seconds:.1f} s")
    if report.failed:
        skipped = "; no engines built" if engines else ""
        raise ParityError(f"{len(report.failed)} of {len(report.subnets)} subnets failed parity "
                          f"({', '.join(report.failed)}); their files are kept in "
                          f"{report.out_dir} and marked parity_failed in manifest.json{skipped}")
    if report.precision_failures:
        left_out = "; ".join(report.precision_failures)
        if report.precisions_explicit:
            raise ParityError(f"left out of the manifest: {left_out}; loosen the gate "
                              "(--gate KEY=VALUE or the profile) or drop that precision "
                              "from --precision")
        click.echo(f"note: left out of the manifest: {left_out}", err=True)
    if engines:
        from .deploy import build_and_report

        # the profile the manifest recorded: --gate overrides and the engine precision
        # that --precision implies (fp16 engines on the DLA profile for --precision fp16)
        build_and_report(report.out_dir, None, parity_limit=shared["eval_images"],
                         progress=shared["progress"])


@click.command("candidates")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory [default: CHECKPOINT's run directory /candidates].")
@shared_options
def candidates_cmd(checkpoint: Path, out: Path | None, **shared: Any) -> None:
    """Export every candidate of CHECKPOINT's grid (trained widths x resolutions) for
    measuring on the device, where torch is not needed:

    `mutualnet profile OUT --latency-table lat.json` there, then here
    `mutualnet export CHECKPOINT --auto N --latency-table lat.json`.
    """
    from export.auto import export_candidates

    options, out = _export_options(checkpoint, out, "candidates", shared)
    report = export_candidates(checkpoint, out, options)
    _report(report, False, shared)
    click.echo(f"next: measure on the device with `mutualnet profile {out} --latency-table "
               "lat.json`, then `mutualnet export CHECKPOINT --auto N --latency-table "
               "lat.json`")


COMMANDS = [export_cmd, candidates_cmd]
