"""Analytic FLOPs: SPEC section 5's table, and agreement with a forward-hook counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mutualnet.flops import count, count_by_name, human
from mutualnet.models import create_model, get_model_info, list_models
from mutualnet.slimmable import GlobalAvgPool, SlimConv2d


@pytest.mark.parametrize("name, width, res, printed", [
    ("mobilenet_v1", 1.0, 224, "568.8M"),
    ("mobilenet_v1", 0.25, 128, "13.6M"),
    ("mobilenet_v2", 1.0, 224, "300.8M"),
    ("mobilenet_v2", 0.7, 128, "57.6M"),
    ("resnet50", 1.0, 224, "4.089G"),
])
def test_spec_table(name: str, width: float, res: int, printed: str) -> None:
    assert human(count_by_name(name, width, res).macs) == printed


def test_params_match_torchvision() -> None:
    assert count_by_name("mobilenet_v2", 1.0, 224).params == 3_504_872
    assert count_by_name("resnet50", 1.0, 224).params == 25_557_032


def _hook_count(model: nn.Module, resolution: int) -> tuple[int, int]:
    """MACs and used parameters measured from the tensors a real forward pass sees."""
    total = {"macs": 0, "params": 0}

    def conv_hook(m: nn.Conv2d, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        cin = inp[0].shape[1]
        groups = cin if getattr(m, "depthwise", False) else m.groups
        k = m.kernel_size[0] * m.kernel_size[1]
        total["macs"] += out[0].numel() * (cin // groups) * k
        total["params"] += out.shape[1] * (cin // groups) * k

    def linear_hook(m: nn.Linear, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        total["macs"] += inp[0].shape[1] * out.shape[1]
        total["params"] += inp[0].shape[1] * out.shape[1] + out.shape[1]

    def bn_hook(m: nn.BatchNorm2d, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        total["params"] += 2 * inp[0].shape[1]

    def pool_hook(m: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        total["macs"] += inp[0][0].numel()

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
        elif isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(bn_hook)
        elif isinstance(m, GlobalAvgPool):
            m.register_forward_hook(pool_hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return total["macs"], total["params"]


@pytest.mark.parametrize("name", list_models())
def test_analytic_equals_hook_counter(name: str) -> None:
    info = get_model_info(name)
    kwargs = {"depth": 10, "widen_factor": 2} if name == "wrn" else {}
    model = create_model(name, **kwargs).eval()
    lo, hi = info.width_range
    widths = sorted({lo, (lo + hi) / 2, hi})
    resolutions = (info.resolutions[-1], info.resolutions[-2])
    for w in widths:
        for r in resolutions:
            with model.subnet(w):
                measured = _hook_count(model, r)
            cost = count(model, w, r)
            assert (cost.macs, cost.params) == measured, (name, w, r)


def test_tf_same_path_counts_ceil_sizes() -> None:
    sym = create_model("mobilenet_v1")
    same = create_model("mobilenet_v1", padding="tf_same")
    assert count(sym, 0.5, 160) == count(same, 0.5, 160)  # identical on multiples of 32
    assert isinstance(same.features[0][0], SlimConv2d) and same.features[0][0].tf_same
    assert _hook_count(same.eval(), 150)[0] == count(same, 1.0, 150).macs
