"""ResNet-50 (He et al. 2016, v1.5 strides), slimmable, with torchvision's module names.

The stem conv's output and every bottleneck's mid channels use ``rho = 0.25``
(SPEC section 2), so mid = active(out) / 4 and the stem has active(64, w, 0.25)
channels. All three convs and the shortcut projection are slimmed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..slimmable import (
    Ch,
    GlobalAvgPool,
    Path,
    SlimBatchNorm2d,
    SlimConv2d,
    SlimLinear,
    SlimmableNet,
    Spatial,
)
from ._blocks import init_weights
from .registry import register_model

#: (mid channels, blocks, stride) of the four stages; out = 4 x mid.
STAGES_50: tuple[tuple[int, int, int], ...] = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, in_ch: Ch, mid: int, stride: int, *, max_width: float,
                 path: Path) -> None:
        super().__init__()
        mid_ch, out_ch = Ch(mid, rho=1 / EXPANSION), Ch(mid * EXPANSION)
        self.conv1 = SlimConv2d(in_ch, mid_ch, 1, max_width=max_width, path=path)
        self.bn1 = SlimBatchNorm2d(mid_ch, max_width=max_width, path=self.conv1.out_path)
        self.conv2 = SlimConv2d(mid_ch, mid_ch, 3, stride, max_width=max_width,
                                path=self.conv1.out_path)
        self.bn2 = SlimBatchNorm2d(mid_ch, max_width=max_width, path=self.conv2.out_path)
        self.conv3 = SlimConv2d(mid_ch, out_ch, 1, max_width=max_width, path=self.conv2.out_path)
        self.bn3 = SlimBatchNorm2d(out_ch, max_width=max_width, path=self.conv3.out_path)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            proj = SlimConv2d(in_ch, out_ch, 1, stride, max_width=max_width, path=path)
            self.downsample = nn.Sequential(
                proj, SlimBatchNorm2d(out_ch, max_width=max_width, path=proj.out_path))
        self.out_path: Path = self.conv3.out_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(SlimmableNet):
    def __init__(self, num_classes: int = 1000, max_width: float = 1.0,
                 stages: tuple[tuple[int, int, int], ...] = STAGES_50, stem: int = 64) -> None:
        super().__init__()
        self.max_width = max_width
        stem_ch = Ch(stem, rho=1 / EXPANSION)
        self.conv1 = SlimConv2d(Ch(3, slim=False), stem_ch, 7, 2, 3, max_width=max_width)
        self.bn1 = SlimBatchNorm2d(stem_ch, max_width=max_width, path=self.conv1.out_path)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        path: Path = (*self.conv1.out_path, Spatial(3, 2, 1))
        cin = stem_ch
        for idx, (mid, n, stride) in enumerate(stages, start=1):
            blocks = []
            for i in range(n):
                block = Bottleneck(cin, mid, stride if i == 0 else 1, max_width=max_width,
                                   path=path)
                blocks.append(block)
                path, cin = block.out_path, Ch(mid * EXPANSION)
            self.add_module(f"layer{idx}", nn.Sequential(*blocks))
        self.num_stages = len(stages)
        self.pool = GlobalAvgPool(cin, max_width=max_width, path=path)
        self.fc = SlimLinear(cin, num_classes, max_width=max_width)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
        self.finalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.pool(x))


@register_model("resnet50", width_range=(0.9, 1.0), resolutions=(224, 192, 160, 128),
                num_classes=1000)
def resnet50(num_classes: int = 1000, max_width: float = 1.0) -> ResNet:
    """ResNet-50 for ImageNet (4.09G MACs at 1.0-224), torchvision layout."""
    return ResNet(num_classes, max_width)
