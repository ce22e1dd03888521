"""``mutualnet import-weights``: torchvision / TFLite weights -> a mutualnet checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

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
    from ..weights.save import import_to_checkpoint

    report, path = import_to_checkpoint(
        source, model_name, out_dir, width=width, num_classes=num_classes, padding=padding,
        labels=labels, dataset_dir=dataset_dir, allow_missing=allow_missing, force=force)
    click.echo(report.summary())
    click.echo(f"wrote {path}")


COMMANDS = [import_weights_cmd]
