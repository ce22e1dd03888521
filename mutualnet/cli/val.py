"""``mutualnet val``: evaluate an export's artifacts on a labelled set (``export.val``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .deploy import PROGRESS, THREADS, _warnings_to_stderr


@click.command("val")
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(path_type=Path))
@click.option("--data", default=None, metavar="PATH",
              help="Labelled images: an ImageFolder (DIR/val/<class>/* or DIR/<class>/*), an "
                   ".npz with images + labels, or the shared CIFAR JPEG .npz [default: the "
                   "export's parity_images.npz].")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]),
              default="auto", show_default=True,
              help="auto: TensorRT where engines for this GPU are recorded, else ONNX Runtime.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N [default: a GPU if present].")
@click.option("--precision", "precision", default=None, metavar="P[,P...]",
              help="Only these precisions (fp32, fp16, int8) [default: every one the export "
                   "holds].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most N images, taken evenly over the set [default: all].")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per run (latency is per image at this batch size).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Directory for val.md and val.json [default: EXPORT_DIR].")
@click.option("--json", "as_json", is_flag=True, help="Print val.json's content, not the table.")
@THREADS
@PROGRESS
def val_cmd(export_dir: Path, data: str | None, backend: str, device: str | None,
            precision: str | None, limit: int | None, batch: int, out: Path | None,
            as_json: bool, threads: int | None, progress: bool) -> None:
    """Evaluate every subnet and precision of EXPORT_DIR on labelled images: top-1, top-5,
    agreement with the subnet's fp32 artifact, latency per image (mean, p90).

    Images are preprocessed as the runtime does it (the stored parity images as parity
    does). Writes val.md and val.json. Unlabelled images: use `mutualnet export --data DIR`.
    """
    from export.val import ValOptions, evaluate_export, write_val_report

    precisions = None if precision is None else tuple(
        p.strip().lower() for p in precision.split(",") if p.strip())
    options = ValOptions(data=data, backend=backend, device=device, precisions=precisions,
                         limit=limit, batch=batch, threads=threads, progress=progress)
    with _warnings_to_stderr():
        report = evaluate_export(export_dir, options)
    md, js = write_val_report(report, out)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
        return
    click.echo(report.table())
    click.echo(f"{report.describe()}; wrote {md} and {js} in {report.seconds:.1f} s")


COMMANDS = [val_cmd]
