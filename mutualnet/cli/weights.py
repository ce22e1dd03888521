"""``mutualnet import-weights``: torchvision / TFLite weights -> a mutualnet checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ._params import FINITE


@click.command("import-weights")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_name", required=True,
              help="Supernet to fill: mobilenet_v2 / resnet50 (torchvision), mobilenet_v1 (TFLite).")
@click.option("--width", type=FINITE, default=None,
              help="Width the file holds (checked) [default: read from the file].")
@click.option("--classes", "num_classes", type=click.IntRange(min=1), default=None,
              help="Classes of the model [default: the file's]; 1000 drops TF's background class.")
@click.option("--padding", type=click.Choice(["tf_same", "symmetric"]), default=None,
              help="mobilenet_v1 padding [default: tf_same for TFLite files].")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Class names, one a line, stored in the checkpoint.")
@click.option("--dataset-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageFolder root (train/, val/) recorded in the config for train/eval/export.")
@click.option("--allow-missing", is_flag=True,
              help="Import even if some tensors are not in the file or have no place.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output run directory (gets checkpoint.safetensors).")
@click.option("--force", is_flag=True, help="Overwrite an existing checkpoint in --out.")
def import_weights_cmd(source: Path, model_name: str, width: float | None,
                       num_classes: int | None, padding: str | None, labels: Path | None,
                       dataset_dir: Path | None, allow_missing: bool, out_dir: Path,
                       force: bool) -> None:
    """Map pretrained weights in SOURCE onto a supernet by name and shape; save a checkpoint."""
    from ..checkpoint import CHECKPOINT_FILE
    from ..weights import import_weights
    from ..weights.save import read_labels, save_imported

    if out_dir.suffix == ".safetensors":
        raise UsageError(f"--out {out_dir}: give a directory; the checkpoint is written as "
                         f"DIR/{CHECKPOINT_FILE}")
    if (out_dir / CHECKPOINT_FILE).exists() and not force:
        raise UsageError(f"{out_dir / CHECKPOINT_FILE} exists; pass --force to overwrite it "
                         f"or choose another --out")
    if width is not None and not width > 0:
        raise UsageError(f"--width must be a positive number, got {width}")
    kwargs = {"padding": padding} if padding is not None else None
    model, report = import_weights(source, model_name, width=width, num_classes=num_classes,
                                   allow_missing=allow_missing, model_kwargs=kwargs)
    classes = read_labels(labels, report.num_classes) if labels is not None else None
    path = save_imported(out_dir, model, report, classes=classes,
                         dataset_dir=None if dataset_dir is None else str(dataset_dir.resolve()))
    click.echo(report.summary())
    click.echo(f"wrote {path}")


COMMANDS = [import_weights_cmd]
