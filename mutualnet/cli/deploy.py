"""``mutualnet verify | build-engines | profile | run``: the device side of a manifest.

Thin commands over ``export.manifest``, ``export.tensorrt_build``, ``export.latency`` and
``export.runtime`` (all torch-free); errors become one line and exit 1 (failure) / 2 (usage).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import numpy as np

BACKEND = click.Choice(["auto", "tensorrt", "onnxruntime"])
ON_STALE = click.option(
    "--on-stale", type=click.Choice(["error", "fallback"]), default="error", show_default=True,
    help="Engines recorded for another GPU / TensorRT version (or missing): error (exit 1), "
         "or fallback = a note on stderr and ONNX Runtime instead.")


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
@click.argument("manifest", type=click.Path(path_type=Path))
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
def build_engines_cmd(manifest: Path, profile: str | None, timing_cache: Path | None,
                      images: Path | None, parity_images: int, record_only: bool) -> None:
    """Build one TensorRT engine per subnet (TensorRT 10 or 11) and record them.

    Always writes build_engines.sh (equivalent trtexec lines) first; without the tensorrt
    package it stops there with exit 1 and an install hint. Engine parity runs on the
    held-out images the export stored (parity_images.npz) unless --images names others.
    """
    from export.tensorrt_build import read_parity_images

    data = read_parity_images(images, parity_images) if images is not None else None
    build_and_report(manifest, profile, timing_cache=timing_cache, parity_data=data,
                     parity_limit=parity_images, record_only=record_only)


def build_and_report(manifest: Path, profile: str | None, *, timing_cache: Path | None = None,
                     parity_data: Any = None, parity_limit: int = 500,
                     record_only: bool = False, progress: bool = True) -> None:
    """``build-engines`` after the arguments are parsed (``export --engines`` reuses it).

    parity_data: ParityImages (or (images, labels)); None = the export's stored images."""
    from export.errors import ParityError
    from export.tensorrt_build import build_engines, describe

    with _warnings_to_stderr():
        report = build_engines(manifest, profile, timing_cache=timing_cache,
                               parity_data=parity_data, parity_limit=parity_limit,
                               record_only=record_only, progress=progress)
    click.echo(f"wrote {report.script}")
    if report.parity_source is not None:
        n = next(iter(report.parity.values())).images if report.parity else 0
        click.echo(f"engine parity on {n} held-out images from {report.parity_source}")
    click.echo(describe(report))
    if not report.passed:
        failed = ", ".join(s for s, p in report.parity.items() if not p.passed)
        raise ParityError(f"engine parity failed for {failed}; the engines are kept and marked "
                          "in the manifest (use precision fp32 or check the ONNX)")


@click.command("profile")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--device", default=None, help="cpu, cuda or cuda:N [default: a GPU if present].")
@click.option("--duration", type=click.FloatRange(min=0.01), default=3.0, show_default=True,
              help="Seconds of timed runs per subnet and batch size (after a 200 ms warm-up).")
@click.option("--batch", "batches", default=None,
              help="Comma list of batch sizes [default: the profile's min,opt,max].")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="ONNX Runtime intra-op threads (0 = its default).")
@ON_STALE
def profile_cmd(manifest: Path, backend: str, device: str | None, duration: float,
                batches: str | None, threads: int, on_stale: str) -> None:
    """Measure every subnet trtexec-style and write p50/p90/p99 into the manifest."""
    from export.errors import ExportUsageError
    from export.latency import profile_manifest
    from export.runtime import resolve_backend

    sizes = None
    if batches:
        try:
            sizes = [int(b) for b in batches.split(",") if b.strip()]
        except ValueError as e:
            raise ExportUsageError(f"--batch expects a comma list of integers, got {batches!r}") \
                from e
    with _warnings_to_stderr():
        backend = resolve_backend(manifest, backend, device, on_stale)
        results = profile_manifest(manifest, backend=backend, device=device,
                                   duration_s=duration, batches=sizes, threads=threads)
    click.echo(f"{'subnet':<14} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
               f"{'img/s':>10} {'runs':>7}")
    for r in results:
        click.echo(f"{r.subnet_id:<14} {r.batch:>5} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} "
                   f"{r.p99_ms:>9.3f} {r.throughput_ips:>10.1f} {r.runs:>7}")
    click.echo(f"latencies written to {Path(manifest)}")


def _read_image(path: Path) -> np.ndarray:
    from export.errors import BackendUnavailableError, ExportUsageError

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise BackendUnavailableError("reading images needs Pillow: `pip install pillow`") from e
    import numpy as np

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise ExportUsageError(f"image {path} does not exist") from e
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ExportUsageError(f"{path} is not an image Pillow can read ({e})") from e


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


@click.command("run")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--budget-mflops", type=float, default=None,
              help="Use the most accurate subnet within this many million MACs.")
@click.option("--latency-ms", type=float, default=None,
              help="Use the most accurate subnet whose measured p90 fits (needs `profile`).")
@click.option("--subnet", default=None, help="Use this subnet id (e.g. w0.50-r32).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Text file, one class name per line [default: the manifest's].")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@ON_STALE
def run_cmd(manifest: Path, images: tuple[Path, ...], budget_mflops: float | None,
            latency_ms: float | None, subnet: str | None, labels: Path | None, top: int,
            backend: str, device: str | None, on_stale: str) -> None:
    """Classify IMAGES with the subnet that fits the budget and print their labels."""
    from export.errors import ExportUsageError
    from export.runtime import SubnetRuntime

    if sum(v is not None for v in (budget_mflops, latency_ms, subnet)) > 1:
        raise ExportUsageError("give at most one of --budget-mflops, --latency-ms, --subnet")
    names = _read_labels(labels) if labels is not None else None
    pictures = [_read_image(p) for p in images]
    with _warnings_to_stderr():
        rt = SubnetRuntime.load(manifest, backend=backend, device=device, on_stale=on_stale)
        if subnet is not None:
            rt.select(subnet)
        elif budget_mflops is not None or latency_ms is not None:
            rt.select_budget(mflops=budget_mflops, latency_ms=latency_ms)
    names = names or list(rt.classes)
    info = next(s for s in rt.subnets if s.id == rt.current)
    click.echo(f"subnet {info.id} ({info.mflops:.4g} M MACs, {rt.backend} on {rt.device_name})",
               err=True)
    with _warnings_to_stderr():
        result = rt.infer(pictures)
    probs = result.probabilities()
    for path, p in zip(images, probs, strict=True):
        order = p.argsort()[::-1][:top]
        text = ", ".join(f"{names[i] if i < len(names) else f'class {i}'} ({p[i] * 100:.1f}%)"
                         for i in order)
        click.echo(f"{path}: {text}")
    rt.close()


COMMANDS = (verify_cmd, build_engines_cmd, profile_cmd, run_cmd)
