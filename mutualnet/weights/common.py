"""Place named external tensors into the leading channels of a supernet, checking every shape.

Importers (torchvision, TFLite) turn a file into ``{supernet state-dict name: tensor}``
at some width ``W``; :func:`place` then checks each tensor against the supernet's
slice at ``W`` (the leading ``active(c, W)`` channels of every slimmable layer, the
full tensor elsewhere) and copies it there. Channels beyond ``W`` keep their
initialization. Nothing is matched by position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..slimmable import SlimBatchNorm2d, SlimConv2d, SlimLinear, SlimmableNet

#: Buffers that are counters, not weights: filled when the source has them, never "missing".
COUNTERS = ("num_batches_tracked",)


@dataclass(frozen=True)
class ImportReport:
    """What an import did: which supernet tensors were filled and what was left out."""

    source: str
    format: str  # "torchvision" | "tflite"
    model: str
    width: float
    num_classes: int
    mapped: tuple[str, ...]
    missing: tuple[str, ...]  # supernet tensors the source did not fill
    unused: tuple[str, ...]  # source tensors with no place in the supernet
    skipped: tuple[tuple[str, str], ...] = ()  # (supernet name, why) left at init
    resolution: int | None = None  # the file's input side, where it has one
    preprocessing: Mapping[str, Any] | None = None  # input normalization the weights expect
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: "file": BN running statistics come from the file; "folded": BN is identity + the
    #: folded bias. Either way they are valid for widths <= ``width`` without calibration,
    #: and calibrating ("folded") changes what the network computes.
    bn_stats: str = "file"

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unused)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "format": self.format, "model": self.model,
            "width": self.width, "num_classes": self.num_classes,
            "mapped": len(self.mapped), "missing": list(self.missing),
            "unused": list(self.unused), "skipped": [list(s) for s in self.skipped],
            "resolution": self.resolution,
            "preprocessing": None if self.preprocessing is None else dict(self.preprocessing),
            "model_kwargs": dict(self.model_kwargs), "notes": list(self.notes),
            "bn_stats": self.bn_stats,
        }

    def summary(self) -> str:
        """Human-readable lines: counts, then every tensor left out."""
        lines = [f"{self.format} {self.source} -> {self.model} at width {self.width:g}: "
                 f"{len(self.mapped)} tensors mapped, {len(self.missing)} missing, "
                 f"{len(self.unused)} unused"]
        lines += [f"  missing (left at init): {name}" for name in self.missing]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        lines += [f"  unused from the file: {name}" for name in self.unused]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def expected_shapes(model: SlimmableNet, width: float) -> dict[str, tuple[int, ...]]:
    """Shape of every state-dict entry of ``model`` when it runs at ``width`` (its slice)."""
    if width > model.max_width + 1e-9:
        raise UsageError(f"the weights are for width {width:g} but the supernet's maximum "
                         f"width is {model.max_width:g}; build it with a width range up to "
                         f">= {width:g}")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with model.subnet(width):
        for prefix, module in model.named_modules():
            dot = f"{prefix}." if prefix else ""
            for key, shape in _slice_shapes(module).items():
                if dot + key in shapes:
                    shapes[dot + key] = shape
    return shapes


def _slice_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    if isinstance(module, SlimConv2d):
        i, o = module.active_in, module.active_out
        k = tuple(module.weight.shape[2:])
        return {"weight": (o, 1 if module.depthwise else i, *k), "bias": (o,)}
    if isinstance(module, SlimBatchNorm2d):
        o = module.active_out
        return {"weight": (o,), "bias": (o,), "running_mean": (o,), "running_var": (o,)}
    if isinstance(module, SlimLinear):
        return {"weight": (module.out_features, module.active_in), "bias": (module.out_features,)}
    return {}


def classifier_name(model: SlimmableNet) -> str:
    """State-dict prefix of the model's final classifier (its last SlimLinear)."""
    names = [n for n, m in model.named_modules() if isinstance(m, SlimLinear)]
    return names[-1] if names else ""


@dataclass(frozen=True)
class Placement:
    mapped: tuple[str, ...]
    missing: tuple[str, ...]
    unused: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


def plan_placement(model: SlimmableNet, tensors: Mapping[str, torch.Tensor], width: float,
                   *, source: str) -> Placement:
    """Check every named tensor against the supernet's slice at ``width``; copy nothing.

    A shape that differs anywhere but in the classifier's class count is an error (the
    file is another architecture or width). A class-count difference leaves the
    classifier at its initialization (listed under ``skipped``).
    """
    shapes = expected_shapes(model, width)
    head = classifier_name(model)
    mapped, skipped, bad = [], [], []
    for name, tensor in tensors.items():
        want = shapes.get(name)
        if want is None:
            continue
        got = tuple(tensor.shape)
        if got == want:
            mapped.append(name)
        elif head and name.startswith(head + ".") and got[1:] == want[1:]:
            skipped.append((name, f"the file has {got[0]} classes, the model {want[0]}"))
        else:
            bad.append(f"{name}: file {list(got)}, supernet at width {width:g} {list(want)}")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UsageError(f"{source}: {len(bad)} tensor shapes do not fit "
                         f"{getattr(model, 'model_name', type(model).__name__)}: "
                         f"{'; '.join(bad[:3])}{more}; check --model and --width")
    unused = tuple(n for n in tensors if n not in shapes)
    filled = set(mapped)
    missing = tuple(n for n in shapes if n not in filled and not n.endswith(COUNTERS))
    return Placement(tuple(mapped), missing, unused, tuple(skipped))


def apply_placement(model: SlimmableNet, tensors: Mapping[str, torch.Tensor],
                    placement: Placement) -> None:
    """Copy the mapped tensors into the leading slices of the supernet's tensors."""
    state = model.state_dict()
    with torch.no_grad():
        for name in placement.mapped:
            src = tensors[name]
            dst = state[name]
            region = tuple(slice(0, s) for s in src.shape)
            dst[region].copy_(src.to(dtype=dst.dtype, device=dst.device))


def check_complete(placement: Placement, *, allow_missing: bool, source: str,
                   hint: str = "") -> None:
    """Raise unless every supernet tensor was filled and every file tensor used."""
    if allow_missing or not (placement.missing or placement.unused):
        return
    parts = []
    if placement.missing:
        why = f"; {placement.skipped[0][0]}: {placement.skipped[0][1]}" if placement.skipped \
            else ""
        parts.append(f"{len(placement.missing)} supernet tensors not filled from the file "
                     f"({_names(placement.missing)}{why})")
    if placement.unused:
        parts.append(f"{len(placement.unused)} file tensors with no place in the supernet "
                     f"({_names(placement.unused)})")
    raise UsageError(f"{source}: {' and '.join(parts)}{hint}; pass --allow-missing to "
                     f"import anyway (missing tensors keep their initialization)")


def _names(names: tuple[str, ...], n: int = 4) -> str:
    more = f", ... {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more
