"""Small building blocks shared by the model files."""

from __future__ import annotations

from torch import nn

from ..slimmable import Ch, Path, SlimBatchNorm2d, SlimConv2d


class ConvBNAct(nn.Sequential):
    """conv -> BN -> activation, named 0/1/2 like torchvision's Conv2dNormActivation."""

    def __init__(
        self,
        in_ch: Ch,
        out_ch: Ch,
        kernel_size: int,
        stride: int = 1,
        *,
        depthwise: bool = False,
        act: type[nn.Module] | None = nn.ReLU6,
        max_width: float = 1.0,
        path: Path = (),
        tf_same: bool = False,
    ) -> None:
        conv = SlimConv2d(in_ch, out_ch, kernel_size, stride, depthwise=depthwise,
                          max_width=max_width, path=path, tf_same=tf_same and stride > 1)
        layers: list[nn.Module] = [conv, SlimBatchNorm2d(out_ch, max_width=max_width,
                                                         path=conv.out_path)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)
        self.out_path: Path = conv.out_path


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
