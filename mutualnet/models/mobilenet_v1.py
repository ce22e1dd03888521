"""MobileNet v1 (Howard et al. 2017), slimmable.

Architecture table (paper Table 1): a stride-2 3x3 stem with 32 filters, then 13
depthwise-separable blocks ``(out_channels, stride)``, global average pooling and a
classifier. ``padding="tf_same"`` pads the stride-2 convs like TensorFlow, for
weights imported from TF/TFLite.
"""

from __future__ import annotations

import torch
from torch import nn

from ..slimmable import Ch, GlobalAvgPool, Path, SlimLinear, SlimmableNet
from ._blocks import ConvBNAct, init_weights
from .registry import register_model

STEM = 32
#: (out_channels, stride) of the 13 depthwise-separable blocks.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, in_ch: Ch, out_ch: Ch, stride: int, *, max_width: float,
                 path: Path, tf_same: bool) -> None:
        dw = ConvBNAct(in_ch, in_ch, 3, stride, depthwise=True, max_width=max_width,
                       path=path, tf_same=tf_same)
        pw = ConvBNAct(in_ch, out_ch, 1, max_width=max_width, path=dw.out_path)
        super().__init__(dw, pw)
        self.out_path: Path = pw.out_path


class MobileNetV1(SlimmableNet):
    def __init__(self, num_classes: int = 1000, max_width: float = 1.0,
                 padding: str = "symmetric", stem: int = STEM,
                 blocks: tuple[tuple[int, int], ...] = BLOCKS, stem_stride: int = 2) -> None:
        super().__init__()
        if padding not in ("symmetric", "tf_same"):
            raise ValueError(f"padding must be 'symmetric' or 'tf_same', got {padding!r}")
        self.max_width = max_width
        self.padding = padding
        tf_same = padding == "tf_same"
        cin = Ch(STEM if stem is None else stem)
        first = ConvBNAct(Ch(3, slim=False), cin, 3, stem_stride, max_width=max_width,
                          tf_same=tf_same)
        layers: list[nn.Module] = [first]
        path = first.out_path
        for c, s in blocks:
            block = DepthwiseSeparable(cin, Ch(c), s, max_width=max_width, path=path,
                                       tf_same=tf_same)
            layers.append(block)
            path, cin = block.out_path, Ch(c)
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool(cin, max_width=max_width, path=path)
        self.classifier = SlimLinear(cin, num_classes, max_width=max_width)
        init_weights(self)
        self.finalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_model("mobilenet_v1", width_range=(0.25, 1.0), resolutions=(224, 192, 160, 128),
                num_classes=1000)
def mobilenet_v1(num_classes: int = 1000, max_width: float = 1.0,
                 padding: str = "symmetric") -> MobileNetV1:
    """MobileNet v1 for ImageNet (569M MACs at 1.0-224)."""
    return MobileNetV1(num_classes, max_width, padding)


@register_model("tiny_mobilenet", width_range=(0.25, 1.0), resolutions=(32, 28, 24, 20),
                num_classes=10)
def tiny_mobilenet(num_classes: int = 10, max_width: float = 1.0,
                   padding: str = "symmetric") -> MobileNetV1:
    """A ~9k-parameter MobileNet-style net for 32 px images: tests and the bundled demo."""
    return MobileNetV1(num_classes, max_width, padding, stem=16,
                       blocks=((32, 2), (64, 2), (64, 1)), stem_stride=1)
