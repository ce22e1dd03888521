"""``mutualnet verify | build-engines | profile | run | best``: the device side of an export.

Thin commands over ``export.manifest``, ``export.tensorrt_build``, ``export.latency``,
``export.runtime`` and ``export.budget`` (all torch-free; ``best`` on a checkpoint or an
eval.json reads the grid through ``mutualnet.evaluate``); errors become one line and exit 1
(failure) / 2 (usage). Budgets everywhere go through ``export.budget.choose``.
"""

from __future__ import annotations

import glob
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._params import FINITE

if TYPE_CHECKING:
    import numpy as np

BACKEND = click.Choice(["auto", "tensorrt", "onnxruntime"])
ON_STALE = click.option(
    "--on-stale", type=click.Choice(["error", "fallback"]), default="error", show_default=True,
    help="Engines recorded for another GPU / TensorRT version (or missing): error (exit 1), "
         "or fallback = a note on stderr and ONNX Runtime instead.")
PROGRESS = click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Progress bar on stderr.")
BUDGET = click.option("--budget-mmacs", "--budget-mflops", "budget_mmacs", type=FINITE,
                      default=None, help="Compute budget in millions of MACs "
                      "(--budget-mflops is the old name of the same option).")
STRICT = click.option("--strict", is_flag=True,
                      help="Refuse (exit 1) a budget below the smallest subnet instead of "
                           "falling back to it with a note.")
from export.preprocess import IMAGE_SUFFIXES  # noqa: E402 - one list of image suffixes


def _default_threads() -> int:
    from export.backends import default_threads

    return default_threads()


THREADS = click.option("--threads", type=click.IntRange(min=1), default=None,
                       help="ONNX Runtime intra-op threads [default: the cores this process "
                            "may use].")


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Show library warnings as one ``note:`` line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: set[str] = set()
    for w in caught:
        msg = str(w.message)
        if msg not in seen:
            seen.add(msg)
            click.echo(f"note: {msg}", err=True)


@click.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
def verify_cmd(directory: Path) -> None:
    """Check DIRECTORY's manifest: schema, paths, size and sha256 of every file, and that
    every ONNX graph is the subnet its entry describes (MACs, params, input, classes, id)."""
    from export.manifest import load_manifest

    with _warnings_to_stderr():
        manifest = load_manifest(directory)
    click.echo(f"OK {manifest.summary()}")


@click.command("build-engines")
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(path_type=Path))
@click.option("--profile", "profile", default=None,
              help="Deploy profile name or .yml path [default: the manifest's profile].")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache shared by all builds [default: engines/<profile>/timing.cache].")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Held-out images for engine parity: .npz with images+labels or the shared "
                   "CIFAR JPEG format [default: the export's parity_images.npz].")
@click.option("--parity-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="At most this many held-out images for engine parity.")
@click.option("--record-only", is_flag=True,
              help="Do not build: record engines that build_engines.sh already wrote.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Engine precision, one the profile's device runs [default: the profile's, "
                   "as the export recorded it]; int8 and fp16 build the exported "
                   "model.int8.onnx / model.fp16.onnx strongly typed.")
@PROGRESS
def build_engines_cmd(export_dir: Path, profile: str | None, timing_cache: Path | None,
                      images: Path | None, parity_images: int, record_only: bool,
                      precision: str | None, progress: bool) -> None:
    """Build one TensorRT engine per subnet of EXPORT_DIR (TensorRT 10 or 11), record them.

    Always writes build_engines.sh (equivalent trtexec lines) first; without the tensorrt
    package it stops there with exit 1 and an install hint. Engine parity runs on the
    held-out images the export stored (parity_images.npz) unless --images names others.
    """
    from export.parity_images import read_parity_images

    data = read_parity_images(images, parity_images) if images is not None else None
    build_and_report(export_dir, profile, timing_cache=timing_cache, parity_data=data,
                     parity_limit=parity_images, record_only=record_only, progress=progress,
                     precision=precision)


def build_and_report(export_dir: Path, profile: str | None, *,
                     timing_cache: Path | None = None, parity_data: Any = None,
                     parity_limit: int = 500, record_only: bool = False,
                     progress: bool = True, precision: str | None = None) -> None:
    """``build-engines`` after the arguments are parsed (``export --engines`` reuses it).

    parity_data: ParityImages (or (images, labels)); None = the export's stored images."""
    from export.errors import ParityError
    from export.tensorrt_build import build_engines, describe

    with _warnings_to_stderr():
        report = build_engines(export_dir, profile, timing_cache=timing_cache,
                               parity_data=parity_data, parity_limit=parity_limit,
                               record_only=record_only, progress=progress,
                               precision=precision)
    click.echo(f"wrote {report.script}")
    if report.parity_source is not None:
        n = next(iter(report.parity.values())).images if report.parity else 0
        click.echo(f"engine parity on {n} held-out images from {report.parity_source}")
    click.echo(describe(report))
    if not report.passed:
        failed = ", ".join(s for s, p in report.parity.items() if not p.passed)
        raise ParityError(f"engine parity failed for {failed}; the engines are kept and marked "
                          "in the manifest (use precision fp32 or check the ONNX)")


def _batch_sizes(text: str | None) -> list[int] | None:
    from export.errors import ExportUsageError

    if not text:
        return None
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError as e:
        raise ExportUsageError(f"--batch expects a comma list of integers, got {text!r}") from e


@click.command("profile")
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(path_type=Path))
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--device", default=None, help="cpu, cuda or cuda:N [default: a GPU if present].")
@click.option("--duration", type=click.FloatRange(min=0.01), default=3.0, show_default=True,
              help="Seconds of timed runs per subnet and batch size (after a 200 ms warm-up).")
@click.option("--batch", "batches", default=None,
              help="Comma list of batch sizes [default: the profile's min,opt,max; with "
                   "--latency-table one size, default its opt_batch].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Which artifact of each subnet to measure [default: fp32; with "
                   "--latency-table every precision the export holds].")
@click.option("--latency-table", type=click.Path(path_type=Path), default=None,
              metavar="FILE", help="Also write the figures as a latency table for `mutualnet "
                                   "export CKPT --auto N --latency-table FILE` (EXPORT_DIR "
                                   "from `mutualnet candidates`; needs no torch).")
@THREADS
@PROGRESS
@ON_STALE
def profile_cmd(export_dir: Path, backend: str, device: str | None, duration: float,
                batches: str | None, precision: str | None, latency_table: Path | None,
                threads: int | None, progress: bool, on_stale: str) -> None:
    """Measure every subnet trtexec-style and write p50/p90/p99 into the manifest."""
    from export.latency import profile_manifest
    from export.runtime import resolve_backend

    sizes = _batch_sizes(batches)
    with _warnings_to_stderr():
        backend = resolve_backend(export_dir, backend, device, on_stale)
        if latency_table is not None:
            _latency_table(export_dir, latency_table, backend=backend, device=device,
                           duration=duration, sizes=sizes, precision=precision,
                           threads=threads or _default_threads(), progress=progress)
            return
        results = profile_manifest(export_dir, backend=backend, device=device,
                                   duration_s=duration, batches=sizes,
                                   threads=threads or _default_threads(), progress=progress,
                                   precision=precision or "fp32")
    click.echo(f"{'subnet':<14} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
               f"{'img/s':>10} {'runs':>7}")
    for r in results:
        click.echo(f"{r.subnet_id:<14} {r.batch:>5} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} "
                   f"{r.p99_ms:>9.3f} {r.throughput_ips:>10.1f} {r.runs:>7}")
    click.echo(f"latencies written to {Path(export_dir)}")


def _latency_table(export_dir: Path, path: Path, *, backend: str, device: str | None,
                   duration: float, sizes: list[int] | None, precision: str | None,
                   threads: int, progress: bool) -> None:
    """``profile --latency-table FILE``: measure every candidate at one batch size."""
    from export.autoselect import write_table
    from export.candidates import measure_candidates
    from export.errors import ExportUsageError

    if sizes is not None and len(sizes) != 1:
        raise ExportUsageError(f"--latency-table records one batch size, got --batch "
                               f"{','.join(map(str, sizes))}; pass one")
    table = measure_candidates(export_dir, precisions=[precision] if precision else None,
                               backend=backend, device=device, batch=sizes[0] if sizes else None,
                               duration_s=duration, threads=threads, progress=progress)
    write_table(path, table)
    click.echo(f"{'candidate':<20} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'spread':>8} "
               f"{'load':>5}")
    for m in table.rows:
        load = "-" if m.load is None else f"{m.load:.1f}"
        click.echo(f"{m.label:<20} {m.batch:>5} {m.p50_ms:>9.3f} {m.p90_ms:>9.3f} "
                   f"{m.spread_ms:>8.3f} {load:>5}")
    click.echo(f"latency table of {len(table.rows)} candidates written to {path}; bring it "
               "back and run `mutualnet export CKPT --auto N --latency-table "
               f"{path.name}`")


def _read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    from export.preprocess import DEFAULT_MAX_PIXELS, read_image

    return read_image(path, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)


def _read_labels(path: Path) -> list[str]:
    from export.errors import ExportUsageError

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ExportUsageError(f"--labels {path} is not a UTF-8 text file (byte {e.start} "
                               "cannot be decoded); pass a text file with one class name "
                               "per line") from e
    except OSError as e:
        raise ExportUsageError(f"cannot read --labels {path}: {e.strerror or e}") from e
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise ExportUsageError(f"--labels {path} holds no class names; write one per line")
    return names


def _expand(arg: str) -> list[Path]:
    """One IMAGES argument: a file, a directory (its images, sorted) or a glob (sorted)."""
    from export.errors import ExportUsageError

    path = Path(arg)
    if path.is_dir():
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ExportUsageError(f"directory {arg} holds no images "
                                   f"({', '.join(IMAGE_SUFFIXES)})")
        return found
    if path.exists() or not any(c in arg for c in "*?["):
        return [path]
    matches = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
    if not matches:
        raise ExportUsageError(f"no file matches {arg!r}")
    return matches


def image_paths(args: Sequence[str]) -> list[Path]:
    """The image files IMAGES names, in argument order, each expansion sorted, no repeats."""
    return list(dict.fromkeys(p for arg in args for p in _expand(arg)))


def _check_labels(names: list[str], classes: int, path: Path) -> None:
    from export.errors import ExportUsageError

    if len(names) != classes:
        raise ExportUsageError(f"--labels {path} has {len(names)} class names but the model "
                               f"predicts {classes} classes; give one name per class, in "
                               "order")


def _select(rt: Any, subnet: str | None, mmacs: float | None, latency_ms: float | None,
            strict: bool) -> None:
    if subnet is not None:
        rt.select(subnet)
    elif mmacs is not None or latency_ms is not None:
        rt.select_budget(mmacs=mmacs, latency_ms=latency_ms, strict=strict)


def _print_results(paths: list[Path], result: Any, names: Sequence[str], top: int,
                   as_json: bool) -> None:
    probs = result.probabilities()
    for path, p in zip(paths, probs, strict=True):
        order = [int(i) for i in p.argsort()[::-1][:top]]
        if as_json:
            click.echo(json.dumps({"path": str(path), "subnet": result.subnet_id, "top": [
                {"label": _name(names, i), "index": i, "probability": round(float(p[i]), 6)}
                for i in order]}))
        else:
            click.echo(f"{path}: " + ", ".join(f"{_name(names, i)} ({p[i] * 100:.1f}%)"
                                               for i in order))


def _name(names: Sequence[str], i: int) -> str:
    return names[i] if i < len(names) else f"class {i}"


@click.command("run")
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True)
@BUDGET
@click.option("--latency-ms", type=FINITE, default=None,
              help="Use the most accurate subnet whose measured p90 fits (needs `profile`).")
@STRICT
@click.option("--subnet", default=None, help="Use this subnet id (e.g. w0.50-r32).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Text file, one class name per line [default: the manifest's].")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per image: path, subnet, top-k labels and probabilities.")
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images over this many pixels (width x height), checked before "
                   "decoding [default: 50,000,000].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32",
              show_default=True, help="Which artifact of each subnet to run (export "
                                      "--precision writes them).")
@THREADS
@ON_STALE
def run_cmd(export_dir: Path, images: tuple[str, ...], budget_mmacs: float | None,
            latency_ms: float | None, strict: bool, subnet: str | None, labels: Path | None,
            top: int, as_json: bool, backend: str, device: str | None, max_pixels: int | None,
            precision: str, threads: int | None, on_stale: str) -> None:
    """Classify IMAGES (files, directories of images, globs) with the subnet that fits."""
    from export.errors import ExportUsageError
    from export.runtime import SubnetRuntime

    if sum(v is not None for v in (budget_mmacs, latency_ms, subnet)) > 1:
        raise ExportUsageError("give at most one of --budget-mmacs, --latency-ms, --subnet")
    names = _read_labels(labels) if labels is not None else None
    paths = image_paths(images)
    pictures = [_read_image(p, max_pixels) for p in paths]
    with _warnings_to_stderr():
        rt = SubnetRuntime.load(export_dir, backend=backend, device=device, on_stale=on_stale,
                                threads=threads or _default_threads(), precision=precision)
    with rt:
        if names is not None:
            _check_labels(names, rt.manifest.model.num_classes, labels or Path())
        with _warnings_to_stderr():
            _select(rt, subnet, budget_mmacs, latency_ms, strict)
        info = next(s for s in rt.subnets if s.id == rt.current)
        click.echo(f"subnet {info.id} ({info.mmacs:.4g} M MACs, {rt.backend} {precision} on "
                   f"{rt.device_name})", err=True)
        with _warnings_to_stderr():
            result = rt.infer(pictures)
        _print_results(paths, result, names or list(rt.classes), top, as_json)


def best_candidates(source: str, device: str | None) -> tuple[list[Any], dict[str, Any]]:
    """The candidates ``best`` chooses among, and per id what to print: an export directory
    (its manifest: the accuracy the export recorded for selection, the same ``run`` uses),
    else an eval.json, a directory holding one, or a checkpoint (its grid, evaluated first
    when the run has no eval/eval.json of this checkpoint)."""
    from export.budget import candidates_from_manifest, candidates_from_points

    if (Path(source) / "manifest.json").is_file():
        from export.manifest import load_manifest

        manifest = load_manifest(source, verify_files=False)
        shown = {s.id: {"top5": None, "source": None if s.selection_accuracy is None
                        else s.selection_accuracy.source} for s in manifest.subnets}
        return candidates_from_manifest(manifest), shown
    from ..evaluate import grid_for

    _, points = grid_for(source, device=device)
    return candidates_from_points(points), {p.id: {"top5": p.top5, "source": "eval"}
                                            for p in points}


@click.command("best")
@click.argument("source")
@BUDGET
@STRICT
@click.option("--json", "as_json", is_flag=True, help="Print the chosen point as JSON.")
@click.option("--device", default=None, help="Device if the grid must be evaluated first.")
def best_cmd(source: str, budget_mmacs: float | None, strict: bool, as_json: bool,
             device: str | None) -> None:
    """Print the most accurate (width, resolution) of SOURCE within --budget-mmacs.

    SOURCE is an export directory (its manifest), an eval.json (or a directory holding one),
    or a checkpoint: its run's eval/eval.json is used if present, else the grid is evaluated
    first. The choice is the one `run` makes (export.budget.choose); below the smallest
    point it falls back to the smallest with a note, or with --strict exits 1."""
    from export.budget import choose
    from export.errors import ExportUsageError

    if budget_mmacs is None:
        raise ExportUsageError("best needs --budget-mmacs X (millions of MACs)")
    candidates, shown = best_candidates(source, device)
    choice = choose(candidates, mmacs=budget_mmacs, strict=strict)
    if not choice.fits:
        click.echo(f"note: {choice.message}", err=True)
    c = next(c for c in candidates if c.id == choice.subnet_id)
    extra = shown[c.id]
    if as_json:
        click.echo(json.dumps({"id": c.id, "width": c.width, "resolution": c.resolution,
                               "macs": c.macs, "mmacs": c.mmacs, "top1": c.accuracy,
                               "top5": extra["top5"], "accuracy_source": extra["source"],
                               "fits": choice.fits}))
        return
    top1 = "top-1 unknown" if c.accuracy is None else f"top-1 {c.accuracy:.2f}%"
    top5 = "" if extra["top5"] is None else f", top-5 {extra['top5']:.2f}%"
    click.echo(f"{c.id}: width {c.width:g}, resolution {c.resolution}, {c.mmacs:.3f} M MACs, "
               f"{top1}{top5}")


COMMANDS = (verify_cmd, build_engines_cmd, profile_cmd, run_cmd, best_cmd)
