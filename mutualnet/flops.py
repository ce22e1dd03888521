"""Analytic MACs and parameter counts from the channel plan (SPEC section 5).

MACs count convolutions, linear layers and average pooling; BN, activations and
additions are excluded. Parameters count conv/linear weights and biases and the BN
affine of the active channels. No forward pass is run: spatial sizes come from each
layer's recorded input path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .slimmable import (
    GlobalAvgPool,
    SlimBatchNorm2d,
    SlimConv2d,
    SlimLinear,
    SlimmableNet,
    spatial_size,
)


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int


def count(model: SlimmableNet, width: float, resolution: int) -> Cost:
    """MACs and parameters of ``model`` at (``width``, ``resolution``)."""
    macs = params = 0
    for layer, (i, o) in zip(model.slim_layers, model.plan(width), strict=True):
        if isinstance(layer, SlimConv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            per_out = k * (1 if layer.depthwise else i)
            h = spatial_size(layer.out_path, resolution)
            macs += h * h * o * per_out
            params += o * per_out + (o if layer.bias is not None else 0)
        elif isinstance(layer, SlimLinear):
            macs += i * o
            params += i * o + (o if layer.bias is not None else 0)
        elif isinstance(layer, SlimBatchNorm2d):
            params += 2 * o if layer.affine else 0
        elif isinstance(layer, GlobalAvgPool):
            h = spatial_size(layer.path, resolution)
            macs += i * h * h
    return Cost(macs, params)


def count_by_name(name: str, width: float, resolution: int, num_classes: int | None = None,
                  **kwargs: object) -> Cost:
    """Like :func:`count` for a registered model, built on the meta device (no memory)."""
    from .models import create_model

    wr_max = max(1.0, width)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes,
                             width_range=(min(width, wr_max), wr_max), **kwargs)
    return count(model, width, resolution)


def human(n: float, unit: str = "") -> str:
    """568_800_000 -> '568.8M' (one decimal below 1000 of a unit, G with three decimals)."""
    if n >= 1e9:
        return f"{n / 1e9:.3f}G{unit}"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M{unit}"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K{unit}"
    return f"{n:.0f}{unit}"
