"""Write an imported supernet as a mutualnet checkpoint (config + weights + import report)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..slimmable import SlimmableNet
from .common import ImportReport

if TYPE_CHECKING:
    from ..config import TrainConfig


def read_labels(path: str | os.PathLike[str], num_classes: int) -> tuple[str, ...]:
    """Class names, one a line; a 1001-line TF file for 1000 classes drops its first line."""
    p = Path(path)
    try:
        names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read labels file {p}: {e}") from None
    if len(names) == num_classes + 1:
        names = names[1:]  # the background class of TF's 1001-class files
    if len(names) != num_classes:
        raise UsageError(f"{p} has {len(names)} labels, the model {num_classes} classes; "
                         f"give one name per class, one a line")
    return tuple(names)


def checkpoint_config(model: SlimmableNet, report: ImportReport, *,
                      dataset_dir: str | None = None) -> TrainConfig:
    """The TrainConfig recorded with imported weights (ImageNet-style data, file's kwargs).

    ``dataset_dir``: the ImageFolder root (``train/``, ``val/``) later commands should use.

    The weights' input preprocessing goes into the config: ``input_mean``/``input_std``
    (TFLite: 128/255), ``image_resize_mode`` (TFLite: "stretch", whole image to the model
    size) and, with the file's resolution, ``image_size`` and ``image_resize``; the full
    record also goes into the checkpoint's ``extra``.
    """
    from ..config import config_from_dict

    d: dict[str, Any] = {
        "model": report.model,
        "model_kwargs": dict(report.model_kwargs),
        "num_classes": report.num_classes,
        "width_mult_range": list(model.width_range),
        "dataset": "imagefolder",
        "dataset_dir": dataset_dir,
    }
    pre = report.preprocessing or {}
    if report.resolution is not None:
        d["image_size"] = report.resolution
        if pre.get("resize") is not None:
            d["image_resize"] = int(pre["resize"])
    if pre.get("resize_mode") is not None:
        d["image_resize_mode"] = str(pre["resize_mode"])
    for key, value in (("input_mean", pre.get("mean")), ("input_std", pre.get("std"))):
        if value is not None:
            d[key] = [float(v) for v in value]
    return config_from_dict(d, source=f"import of {report.source}")


def save_imported(out_dir: str | os.PathLike[str], model: SlimmableNet, report: ImportReport,
                  *, classes: Sequence[str] | None = None,
                  dataset_dir: str | None = None) -> Path:
    """Atomically write ``out_dir/checkpoint.safetensors``; returns its path."""
    from ..checkpoint import save_checkpoint

    config = checkpoint_config(model, report, dataset_dir=dataset_dir)
    return save_checkpoint(out_dir, model, config, extra_meta={"imported": report.to_dict()},
                           classes=None if classes is None else tuple(classes))


def import_to_checkpoint(source: str | os.PathLike[str], model_name: str,
                         out_dir: str | os.PathLike[str], *, width: float | None = None,
                         num_classes: int | None = None, padding: str | None = None,
                         labels: str | os.PathLike[str] | None = None,
                         dataset_dir: str | os.PathLike[str] | None = None,
                         allow_missing: bool = False,
                         force: bool = False) -> tuple[ImportReport, Path]:
    """What ``mutualnet import-weights`` does: fill ``model_name`` from the torchvision /
    TFLite file ``source`` and save it as ``out_dir/checkpoint.safetensors``.

    ``labels``: class names, one a line, stored in the checkpoint; ``dataset_dir``: the
    ImageFolder root recorded in the config (made absolute). An existing checkpoint in
    ``out_dir`` is a usage error unless ``force``. Returns (the import report, the path).
    """
    import math

    from ..checkpoint import CHECKPOINT_FILE
    from . import import_weights

    out = Path(out_dir)
    if out.suffix == ".safetensors":
        raise UsageError(f"--out {out}: give a directory; the checkpoint is written as "
                         f"DIR/{CHECKPOINT_FILE}")
    if (out / CHECKPOINT_FILE).exists() and not force:
        raise UsageError(f"{out / CHECKPOINT_FILE} exists; pass --force to overwrite it "
                         f"or choose another --out")
    if width is not None and not (math.isfinite(width) and width > 0):
        raise UsageError(f"--width must be a positive number, got {width}")
    kwargs = {"padding": padding} if padding is not None else None
    model, report = import_weights(Path(source), model_name, width=width, num_classes=num_classes,
                                   allow_missing=allow_missing, model_kwargs=kwargs)
    classes = read_labels(labels, report.num_classes) if labels is not None else None
    root = None if dataset_dir is None else str(Path(dataset_dir).resolve())
    return report, save_imported(out, model, report, classes=classes, dataset_dir=root)


def import_pretrained_for_eval(config: TrainConfig, out_dir: str | os.PathLike[str]
                               ) -> tuple[str, ImportReport | None]:
    """The checkpoint a ``test_only`` run evaluates: ``config.pretrained`` itself, or for
    external weights (torchvision .pth, TFLite) the mutualnet checkpoint they are mapped
    into first (as training would), saved as ``out_dir/imported/``.

    Returns (the checkpoint to evaluate, the import report or None when nothing was imported).
    """
    from ..checkpoint import build_model, save_checkpoint
    from ..train.loop import load_pretrained_weights
    from . import external_format

    if not config.pretrained:
        raise UsageError("test_only: true needs pretrained: PATH (the checkpoint or weights "
                         "to evaluate)")
    if external_format(config.pretrained) is None:
        return str(config.pretrained), None
    net = build_model(config)
    report = load_pretrained_weights(net, config)
    assert report is not None
    path = save_checkpoint(Path(out_dir) / "imported", net,
                           config.replace(test_only=False, pretrained=None),
                           extra_meta={"imported": report.to_dict()})
    return str(path), report
