"""Slimmable layers: rounding rules, leading-channel slicing, the scoped subnet context."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mutualnet.errors import UsageError
from mutualnet.models import create_model
from mutualnet.slimmable import Ch, SlimBatchNorm2d, SlimConv2d, active_channels, make_divisible


def test_make_divisible_matches_spec_formula() -> None:
    assert make_divisible(32) == 32
    assert make_divisible(32 * 0.25) == 8
    assert make_divisible(230.4) == 232
    assert make_divisible(10.0) == 16  # rounds to 8, which is below 0.9 * 10: bumped to 16
    assert make_divisible(3.5) == 9  # SPEC's min_value=1 quirk, kept as written


def test_active_channels_group_ratio() -> None:
    assert active_channels(64, 0.9, 0.25) == 58  # ResNet stem at 0.9 (SPEC section 2)
    assert active_channels(16 * 6, 1.0, 6) == 96  # MobileNet v2 hidden = t x rounded input
    assert active_channels(24 * 6, 0.7, 6) == 6 * make_divisible(24 * 0.7)


def _plain_tiny_forward(model: nn.Module, x: torch.Tensor, width: float) -> torch.Tensor:
    """Hand-built narrow network: plain F.conv2d / batch_norm with explicitly sliced weights."""
    assert hasattr(model, "plan")
    plan = dict(zip(model.slim_layers, model.plan(width), strict=True))
    y = x
    for m in model.modules():
        if isinstance(m, SlimConv2d):
            i, o = plan[m]
            w = m.weight[:o].clone() if m.depthwise else m.weight[:o, :i].clone()
            conv = nn.Conv2d(i, o, m.kernel_size, m.stride, m.padding,
                             groups=i if m.depthwise else 1, bias=False)
            conv.weight.data.copy_(w)
            y = conv(y)
        elif isinstance(m, SlimBatchNorm2d):
            _, o = plan[m]
            y = F.batch_norm(y, m.running_mean[:o], m.running_var[:o], m.weight[:o],
                             m.bias[:o], False, 0.0, m.eps)
            y = F.relu6(y)
    y = y.mean((2, 3))
    lin = model.classifier
    return F.linear(y, lin.weight[:, : plan[lin][0]], lin.bias)


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
def test_slimmed_forward_equals_hand_built_narrow_model(width: float) -> None:
    torch.manual_seed(0)
    model = create_model("tiny_mobilenet").eval()
    for m in model.modules():
        if isinstance(m, SlimBatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.normal_()
            m.bias.data.normal_()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad(), model.subnet(width):
        got = model(x)
        want = _plain_tiny_forward(model, x, width)
    assert torch.allclose(got, want, atol=1e-5)


def test_subnet_nests_and_restores_on_exception() -> None:
    model = create_model("tiny_mobilenet")
    assert model.width == 1.0
    first = model.slim_layers[0]
    with model.subnet(0.5):
        assert model.width == 0.5
        c_half = first.active_out
        with pytest.raises(RuntimeError, match="boom"), model.subnet(0.25):
            assert model.width == 0.25
            raise RuntimeError("boom")
        assert model.width == 0.5 and first.active_out == c_half
    assert model.width == 1.0 and first.active_out == first.out_alloc


def test_width_beyond_allocation_and_nonpositive_are_rejected() -> None:
    model = create_model("tiny_mobilenet")
    with pytest.raises(UsageError, match="above this model's maximum"), model.subnet(1.5):
        pass
    with pytest.raises(UsageError, match="positive"), model.subnet(0.0):
        pass
    assert model.width == 1.0


def test_plan_is_cached_and_bounded() -> None:
    model = create_model("tiny_mobilenet")
    assert model.plan(0.5) is model.plan(0.5)
    for i in range(200):
        model.plan(0.25 + i * 0.003)
    assert len(model._plans) <= model._PLAN_CACHE


def test_models_are_independent() -> None:
    """No global width state: two models hold their own widths."""
    a, b = create_model("tiny_mobilenet"), create_model("tiny_mobilenet")
    with a.subnet(0.25):
        assert b.width == 1.0
        assert b.slim_layers[0].active_out == b.slim_layers[0].out_alloc


def test_batchnorm_calibration_mode_uses_cumulative_average() -> None:
    bn = SlimBatchNorm2d(Ch(16))
    bn.active_in = bn.active_out = 8
    bn.reset_running_stats()
    bn.momentum = None
    xs = [torch.randn(4, 8, 3, 3) * (i + 1) + i for i in range(3)]
    bn.train()
    for x in xs:
        bn(x)
    means = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
    assert torch.allclose(bn.running_mean[:8], means, atol=1e-5)
    assert torch.all(bn.running_mean[8:] == 0)  # channels outside the subnet untouched


def test_tf_same_padding_is_asymmetric_on_even_inputs() -> None:
    conv = SlimConv2d(Ch(3, slim=False), Ch(8), 3, 2, tf_same=True)
    x = torch.randn(1, 3, 8, 8)
    y = conv(x)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, None, 2)
    assert y.shape[-1] == 4 and torch.allclose(y, ref)


def test_inference_slice_cache_follows_width_updates_and_conversion() -> None:
    torch.manual_seed(0)
    model = create_model("tiny_mobilenet").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with model.subnet(0.5):
            a = model(x)
        with model.subnet(0.25):
            b = model(x)
        with model.subnet(0.5):
            assert torch.equal(model(x), a)
            model.classifier.weight.add_(1.0)  # in-place update seen through cached views
            assert not torch.equal(model(x), a)
        assert b.shape == a.shape
        model.double()  # new storage: the cache must not serve the old float tensors
        with model.subnet(0.5):
            assert model(x.double()).dtype == torch.float64
    with model.subnet(0.5):  # with autograd, gradients reach the parameters
        model(x.double()).sum().backward()
    assert model.classifier.weight.grad is not None
