"""MobileNet v2 (Sandler et al. 2018), slimmable, with torchvision's module names.

Expanded (hidden) channels use the group ratio ``rho = t`` so that hidden =
t x the rounded input (SPEC section 2). The last 1x1 conv keeps 1280 outputs at
every width; its BN and the classifier are plain (never slimmed) layers.
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
    make_divisible,
)
from ._blocks import ConvBNAct, init_weights
from .registry import register_model

#: torchvision's inverted residual table: expansion t, channels c, repeats n, stride s.
SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
STEM, LAST = 32, 1280


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: Ch, out_ch: Ch, stride: int, t: int, *, max_width: float,
                 path: Path) -> None:
        super().__init__()
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        hidden = in_ch
        if t != 1:
            hidden = Ch(in_ch.base * t, rho=float(t))
            expand = ConvBNAct(in_ch, hidden, 1, max_width=max_width, path=path)
            layers.append(expand)
            path = expand.out_path
        dw = ConvBNAct(hidden, hidden, 3, stride, depthwise=True, max_width=max_width,
                       path=path)
        proj = SlimConv2d(hidden, out_ch, 1, max_width=max_width, path=dw.out_path)
        layers += [dw, proj, SlimBatchNorm2d(out_ch, max_width=max_width, path=proj.out_path)]
        self.conv = nn.Sequential(*layers)
        self.out_path: Path = proj.out_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2(SlimmableNet):
    def __init__(self, num_classes: int = 1000, max_width: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.max_width = max_width
        cin = Ch(STEM)
        stem = ConvBNAct(Ch(3, slim=False), cin, 3, 2, max_width=max_width)
        layers: list[nn.Module] = [stem]
        path = stem.out_path
        for t, c, n, s in SETTING:
            for i in range(n):
                block = InvertedResidual(cin, Ch(c), s if i == 0 else 1, t,
                                         max_width=max_width, path=path)
                layers.append(block)
                path, cin = block.out_path, Ch(c)
        last = Ch(make_divisible(LAST * max(1.0, max_width)), slim=False)
        head = ConvBNAct(cin, last, 1, max_width=max_width, path=path)
        layers.append(head)
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool(last, max_width=max_width, path=head.out_path)
        self.classifier = nn.Sequential(nn.Dropout(dropout),
                                        SlimLinear(last, num_classes, max_width=max_width))
        init_weights(self)
        self.finalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_model("mobilenet_v2", width_range=(0.7, 1.0), resolutions=(224, 192, 160, 128),
                num_classes=1000)
def mobilenet_v2(num_classes: int = 1000, max_width: float = 1.0,
                 dropout: float = 0.2) -> MobileNetV2:
    """MobileNet v2 for ImageNet (301M MACs at 1.0-224), torchvision layout."""
    return MobileNetV2(num_classes, max_width, dropout)
