"""Wide ResNet (Zagoruyko & Komodakis 2016) for CIFAR, slimmable.

WRN-d-k: a 3x3 stem with 16 channels, three groups of (d - 4) / 6 pre-activation
basic blocks with 16k, 32k, 64k channels (strides 1, 2, 2), BN-ReLU, average
pooling and a classifier. Every channel count is slimmed (rho = 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..slimmable import (
    Ch,
    GlobalAvgPool,
    Path,
    SlimBatchNorm2d,
    SlimConv2d,
    SlimLinear,
    SlimmableNet,
)
from ._blocks import init_weights
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_ch: Ch, out_ch: Ch, stride: int, dropout: float, *,
                 max_width: float, path: Path) -> None:
        super().__init__()
        self.bn1 = SlimBatchNorm2d(in_ch, max_width=max_width, path=path)
        self.conv1 = SlimConv2d(in_ch, out_ch, 3, stride, max_width=max_width, path=path)
        self.bn2 = SlimBatchNorm2d(out_ch, max_width=max_width, path=self.conv1.out_path)
        self.conv2 = SlimConv2d(out_ch, out_ch, 3, max_width=max_width, path=self.conv1.out_path)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = SlimConv2d(in_ch, out_ch, 1, stride, max_width=max_width, path=path)
        self.out_path: Path = self.conv2.out_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout > 0:
            y = F.dropout(y, self.dropout, self.training)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(SlimmableNet):
    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 max_width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise UsageError(f"WRN depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        self.max_width = max_width
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = SlimConv2d(Ch(3, slim=False), Ch(16), 3, max_width=max_width)
        path, cin = self.conv1.out_path, Ch(16)
        groups = []
        for c, s in zip(widths, (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                block = BasicBlock(cin, Ch(c), s if i == 0 else 1, dropout,
                                   max_width=max_width, path=path)
                blocks.append(block)
                path, cin = block.out_path, Ch(c)
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = SlimBatchNorm2d(cin, max_width=max_width, path=path)
        self.pool = GlobalAvgPool(cin, max_width=max_width, path=path)
        self.fc = SlimLinear(cin, num_classes, max_width=max_width)
        init_weights(self)
        self.finalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(F.relu(self.bn(x))))


@register_model("wrn", width_range=(0.9, 1.0), resolutions=(32, 28, 24, 20), num_classes=10)
def wrn(num_classes: int = 10, max_width: float = 1.0, depth: int = 28, widen_factor: int = 10,
        dropout: float = 0.0) -> WideResNet:
    """Wide ResNet-depth-widen_factor for CIFAR (set depth / widen_factor)."""
    return WideResNet(depth, widen_factor, num_classes, max_width, dropout)


@register_model("wrn28_10", width_range=(0.9, 1.0), resolutions=(32, 28, 24, 20),
                num_classes=10)
def wrn28_10(num_classes: int = 10, max_width: float = 1.0, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 for CIFAR-10/100 (36.5M params)."""
    return WideResNet(28, 10, num_classes, max_width, dropout)
