"""Start from real pretrained weights: torchvision state dicts and TFLite MobileNet v1 files.

Two entry points:

- :func:`import_weights` builds the supernet that fits the file (model kwargs such as
  ``padding="tf_same"`` for TF weights, the file's class count) and fills it;
- :func:`load_pretrained` fills a supernet you already built (a config's
  ``pretrained:`` key).

Both map tensors by name and check every shape (:mod:`mutualnet.weights.common`);
what the file did not fill, or could not place, is listed in the returned
:class:`ImportReport` and is an error unless ``allow_missing``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..slimmable import SlimBatchNorm2d, SlimmableNet
from .common import ImportReport, apply_placement, check_complete, classifier_name

__all__ = ["IMAGENET_PREPROCESSING", "ImportReport", "detect_format", "external_format",
           "import_weights", "load_pretrained"]

#: What torchvision's ImageNet weights expect (resize 256, center crop 224).
IMAGENET_PREPROCESSING: dict[str, Any] = {
    "resize": 256, "resize_mode": "shorter_side", "crop": 224, "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225], "channel_order": "RGB", "input_scale": 255.0,
    "interpolation": "bilinear", "layout": "NCHW",
}
TFLITE_MODELS = ("mobilenet_v1",)


def external_format(path: str | Path) -> str | None:
    """``"tflite"`` / ``"torchvision"`` for a file this package imports, else None (never raises).

    A config's ``pretrained:`` uses it to tell foreign weights from a mutualnet checkpoint
    (a run directory or ``.safetensors`` file), which it loads with ``load_weights``.
    """
    try:
        return detect_format(path)
    except (UsageError, OSError):
        return None


def detect_format(path: str | Path) -> str:
    """``"tflite"`` or ``"torchvision"`` from the file's first bytes; anything else is an error."""
    from .tflite import is_tflite

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file; give a torchvision .pth state dict or a "
                         f".tflite MobileNet v1 file")
    if is_tflite(p):
        return "tflite"
    with open(p, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:3] == b"\x80\x02\x8a":  # torch.save zip / legacy
        return "torchvision"
    hint = ("; it is a safetensors file: a mutualnet checkpoint is used as it is, not imported"
            if head[8:9] == b"{" else "")
    raise UsageError(f"{p}: neither a torchvision state dict (torch.save file) nor a TFLite "
                     f"model (no 'TFL3' identifier); nothing to import{hint}")


def import_weights(source: str | Path, model_name: str, *, width: float | None = None,
                   num_classes: int | None = None, allow_missing: bool = False,
                   model_kwargs: Mapping[str, Any] | None = None,
                   width_range: tuple[float, float] | None = None,
                   ) -> tuple[SlimmableNet, ImportReport]:
    """Build ``model_name``'s supernet to fit ``source`` and fill it; returns (model, report).

    ``width``: the width the file holds (checked against it; default: read from the
    file). ``num_classes``: default the file's (1000 with a 1001-class TFLite file drops
    the background class). ``model_kwargs`` default to what the file needs
    (``padding="tf_same"`` for TFLite); the report carries the kwargs used, the file's
    resolution and the input normalization the weights expect.
    """
    import torch

    from ..models import create_model

    fmt = detect_format(source)
    kwargs = dict(model_kwargs or {})
    tensors = None
    if fmt == "tflite":
        _check_tflite_model(model_name)
        kwargs.setdefault("padding", "tf_same")
        if num_classes is None:
            from .tflite import read_mobilenet_v1

            num_classes = read_mobilenet_v1(Path(source)).num_classes
    else:
        from .torchvision import load_state_dict

        tensors = load_state_dict(Path(source))
        if num_classes is None:
            num_classes = _file_classes(tensors, model_name)
    try:
        with torch.device("cpu"):
            model = create_model(model_name, num_classes=num_classes, width_range=width_range,
                                 **kwargs)
    except TypeError:
        raise UsageError(f"{model_name} takes no option(s) {', '.join(kwargs)}; "
                         f"--padding applies to mobilenet_v1 only") from None
    model.eval()
    if tensors is not None:
        report = _load_torchvision(model, Path(source), str(source), model_name, width,
                                   allow_missing, tensors)
    else:
        report = load_pretrained(model, source, width=width, allow_missing=allow_missing)
    return model, report


def load_pretrained(model: SlimmableNet, source: str | Path, *, width: float | None = None,
                    allow_missing: bool = False) -> ImportReport:
    """Fill an existing supernet from ``source`` (torchvision or TFLite), by name and shape.

    Only the leading channels of the file's width are written; the rest keeps its
    initialization. Raises :class:`~mutualnet.errors.UsageError` on a shape that does not
    fit, on a width that is not the file's, or (unless ``allow_missing``) when a supernet
    tensor is not in the file or a file tensor has no place in the supernet. A class
    count that differs from the file's leaves the classifier at init (listed as skipped).
    """
    fmt = detect_format(source)
    src = str(source)
    name = str(getattr(model, "model_name", type(model).__name__))
    if fmt == "tflite":
        return _load_tflite(model, Path(source), src, name, width, allow_missing)
    return _load_torchvision(model, Path(source), src, name, width, allow_missing)


def _load_torchvision(model: SlimmableNet, path: Path, src: str, name: str,
                      width: float | None, allow_missing: bool,
                      tensors: Mapping[str, Any] | None = None) -> ImportReport:
    from . import torchvision as tv

    if width is not None and abs(width - tv.TORCHVISION_WIDTH) > 1e-9:
        raise UsageError(f"{src}: a torchvision state dict holds width "
                         f"{tv.TORCHVISION_WIDTH:g}, not {width:g}; omit --width")
    if tensors is None:
        tensors = tv.load_state_dict(path)
    placement = tv.plan(model, tensors, source=src)
    check_complete(placement, allow_missing=allow_missing, source=src)
    apply_placement(model, tensors, placement)
    notes = []
    if model.max_width > tv.TORCHVISION_WIDTH:
        notes.append(f"channels beyond width {tv.TORCHVISION_WIDTH:g} keep their init")
    return ImportReport(src, "torchvision", name, tv.TORCHVISION_WIDTH, _classes(model),
                        placement.mapped, placement.missing, placement.unused,
                        placement.skipped, 224, dict(IMAGENET_PREPROCESSING),
                        _kwargs(model), tuple(notes))


def _load_tflite(model: SlimmableNet, path: Path, src: str, name: str, width: float | None,
                 allow_missing: bool) -> ImportReport:
    from . import tflite as tfl
    from .common import plan_placement

    _check_tflite_model(name)
    parsed = tfl.read_mobilenet_v1(path)
    file_width = parsed.width
    if width is not None and abs(width - file_width) > 1e-6:
        raise UsageError(f"{src}: the file holds a width-{file_width:g} MobileNet v1 "
                         f"({_channels(parsed)}), not width {width:g}; pass --width "
                         f"{file_width:g} or omit --width")
    eps = {m.eps for m in model.modules() if isinstance(m, SlimBatchNorm2d)}
    if len(eps) > 1:
        raise UsageError(f"{name}: BatchNorm eps differs between layers; cannot set the "
                         f"imported BatchNorms to the identity")
    tensors, notes = tfl.state_from_tflite(parsed, num_classes=_classes(model),
                                           eps=eps.pop() if eps else 1e-5)
    placement = plan_placement(model, tensors, file_width, source=src)
    missing_head = parsed.num_classes is None
    check_complete(placement, allow_missing=allow_missing, source=src,
                   hint=" (the file has no classifier: an embedding extractor)"
                   if missing_head else "")
    apply_placement(model, tensors, placement)
    if getattr(model, "padding", None) != "tf_same":
        notes.append("the supernet pads symmetrically: predictions drift from the TFLite "
                     "model's; build it with padding='tf_same' for the original predictions")
    if model.max_width > file_width:
        notes.append(f"only the leading channels of width {file_width:g} come from the file; "
                     f"wider channels keep their init until trained")
    notes.append("BatchNorm folded into the convs: BN set to identity + folded bias "
                 "(running_mean 0, running_var 1 - eps); recalibrating BN changes the model")
    return ImportReport(src, "tflite", name, file_width, _classes(model), placement.mapped,
                        placement.missing, placement.unused, placement.skipped,
                        parsed.resolution, tfl.preprocessing(parsed), _kwargs(model),
                        tuple(notes), bn_stats="folded")


def _check_tflite_model(name: str) -> None:
    if name not in TFLITE_MODELS:
        raise UsageError(f"TFLite import supports {', '.join(TFLITE_MODELS)} only, not "
                         f"{name!r}; pass --model mobilenet_v1")


def _channels(parsed: Any) -> str:
    first = parsed.convs[0].weight.shape[0]
    last = [c for c in parsed.convs if c.target == "classifier"]
    tail = f", classifier input {last[0].weight.shape[1]}" if last else ""
    return f"stem {first} channels{tail}"


def _classes(model: SlimmableNet) -> int:
    head = model.get_submodule(classifier_name(model))
    return int(head.out_features)  # type: ignore[arg-type]


def _kwargs(model: SlimmableNet) -> dict[str, Any]:
    padding = getattr(model, "padding", None)
    return {"padding": padding} if padding is not None else {}


def _file_classes(tensors: Mapping[str, Any], model_name: str) -> int | None:
    """Class count of a torchvision file's classifier (None: let the model decide)."""
    import torch

    from ..models import create_model

    with torch.device("meta"):
        head = classifier_name(create_model(model_name))
    weight = tensors.get(f"{head}.weight")
    return None if weight is None or weight.ndim != 2 else int(weight.shape[0])
