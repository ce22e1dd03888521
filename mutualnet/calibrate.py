"""Per-subnet BatchNorm calibration (SPEC section 4).

BN running statistics are not shared across subnets: after training, each (w, r) gets its
own, recomputed from training images before it is evaluated or exported. Without this the
small subnets' accuracy collapses (their statistics differ from the mix seen in training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .slimmable import SlimmableNet

if TYPE_CHECKING:
    from .data import ImageData


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (slimmable ones and plain ones alike)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def reset_bn_stats(model: nn.Module) -> None:
    """Zero the running statistics and switch to an exact cumulative average (momentum None)."""
    for bn in batchnorm_layers(model):
        bn.reset_running_stats()
        bn.momentum = None


@torch.no_grad()
def calibrate_bn(model: SlimmableNet, width: float, resolution: int, data: ImageData, *,
                 num_images: int = 10000, batch_size: int = 256,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
    """Recompute every BN layer's running statistics for the subnet (``width``, ``resolution``).

    Resets the statistics, sets momentum to None (cumulative average), then runs up to
    ``num_images`` augmented training images of ``data``, resized on ``device`` to
    ``resolution``, through the subnet in train mode without gradients. Leaves the model
    in eval mode, ready to evaluate that subnet.
    """
    from .data import resize_to

    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    reset_bn_stats(model)
    model.train()
    with model.subnet(width):
        for x, _ in data.batches(batch_size, augment=True, shuffle=True, seed=seed, epoch=0,
                                 device=device, limit=num_images):
            model(resize_to(x, resolution))
    model.eval()
