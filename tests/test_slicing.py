"""Slicing a supernet at (w, r) into a plain model: exact, generic, saved and reloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from export.errors import ExportError, ExportUsageError
from export.slicing import (
    ARCH_FILE,
    WEIGHTS_FILE,
    ChannelAffine,
    GlobalAvgPool2d,
    ZeroPadConv2d,
    foldable_pairs,
    load_subnet,
    save_subnet,
    slice_subnet,
)
from mutualnet.calibrate import calibrate_bn
from mutualnet.data import DataSpec, load_data, resize_to
from mutualnet.models import create_model
from mutualnet.slimmable import SlimConv2d, Slimmable, SlimmableNet

TOL = 1e-4  # the fp32 gate; observed differences are ~1e-7


@pytest.fixture(scope="module")
def calib_data():
    return load_data(DataSpec(max_images=64), "train")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """32 real held-out CIFAR-10 images (normalized, 32 px)."""
    data = load_data(DataSpec(max_images=32), "val")
    x, _ = next(data.batches(32, augment=False, shuffle=False))
    return x


def _calibrated(name: str, width: float, resolution: int, data, **kwargs) -> SlimmableNet:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kwargs)
    calibrate_bn(model, width, resolution, data, num_images=32, batch_size=32)
    return model


def _max_diff(model: SlimmableNet, plain: nn.Module, width: float, x: torch.Tensor) -> float:
    with torch.no_grad(), model.subnet(width):
        ref = model(x)
        got = plain(x)
    assert ref.abs().max() > 1e-3, "logits too small for the comparison to mean anything"
    return float((ref - got).abs().max())


CASES = [
    ("tiny_mobilenet", {}, 0.25, 20),
    ("tiny_mobilenet", {}, 1.0, 32),
    ("mobilenet_v1", {}, 0.25, 64),
    ("mobilenet_v2", {}, 0.7, 64),
]  # + WRN (pre-activation) and MobileNet v1 tf_same in their own tests below


@pytest.mark.parametrize(("name", "kwargs", "width", "resolution"), CASES,
                         ids=[f"{c[0]}{'-' + '-'.join(map(str, c[1].values())) if c[1] else ''}"
                              f"-{c[2]}@{c[3]}" for c in CASES])
def test_sliced_equals_supernet_on_real_images(name, kwargs, width, resolution, calib_data,
                                               images) -> None:
    model = _calibrated(name, width, resolution, calib_data, **kwargs)
    sliced = slice_subnet(model, width, resolution, model_kwargs=kwargs)
    x = resize_to(images, resolution)
    diff = _max_diff(model, sliced.module, width, x)
    assert diff <= TOL, f"max abs logit diff {diff:.3g}"
    # plain layers only, BN gone, channel counts those of the plan
    kinds = {type(m) for m in sliced.module.modules()}
    assert not any(issubclass(k, Slimmable | nn.BatchNorm2d) for k in kinds)
    plan = dict(zip((id(m) for m in model.slim_layers), model.plan(width), strict=True))
    named = dict(sliced.module.named_modules())
    for mname, m in model.named_modules():
        if isinstance(m, SlimConv2d):
            conv = named[mname]
            assert type(conv) in (nn.Conv2d, ZeroPadConv2d)
            assert conv.out_channels == plan[id(m)][1]
            assert conv.weight.shape[0] == plan[id(m)][1]


def test_slicing_does_not_touch_the_supernet(calib_data) -> None:
    model = _calibrated("tiny_mobilenet", 0.5, 24, calib_data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slice_subnet(model, 0.5, 24)
    assert model.width == model.max_width
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(model.slim_layers) > 0


def test_batchnorm_is_folded_into_the_preceding_conv(calib_data) -> None:
    model = _calibrated("tiny_mobilenet", 0.5, 32, calib_data)
    sliced = slice_subnet(model, 0.5, 32)
    folds = {name: spec.folded_into for name, spec in sliced.arch.layers
             if spec.kind == "identity"}
    assert folds["features.0.1"] == "features.0.0"
    assert folds["features.1.1.1"] == "features.1.1.0"
    conv = sliced.module.get_submodule("features.0.0")
    assert conv.bias is not None  # the BN shift lives in the conv bias now
    assert isinstance(sliced.module.get_submodule("features.0.1"), nn.Identity)
    assert isinstance(sliced.module.pool, GlobalAvgPool2d)


def test_preactivation_bn_becomes_a_channel_affine(calib_data, images) -> None:
    """WRN's BN-ReLU-conv blocks: a block's bn1 reads the previous block's sum, not a conv.

    In block1.0 (16 -> 32 channels, projection shortcut on the activated input) the stem
    conv's output feeds bn1 only, so that one folds; the others cannot.
    """
    model = _calibrated("wrn", 0.9, 32, calib_data, depth=10, widen_factor=2)
    pairs = foldable_pairs(model)
    assert pairs == {"block1.0.bn1": "conv1", "block1.0.bn2": "block1.0.conv1",
                     "block2.0.bn2": "block2.0.conv1", "block3.0.bn2": "block3.0.conv1"}
    sliced = slice_subnet(model, 0.9, 32, model_kwargs={"depth": 10, "widen_factor": 2})
    affines = [n for n, m in sliced.module.named_modules() if isinstance(m, ChannelAffine)]
    assert sorted(affines) == ["block2.0.bn1", "block3.0.bn1", "bn"]
    assert _max_diff(model, sliced.module, 0.9, images) <= TOL


def test_tf_same_padding_becomes_a_static_zero_pad(calib_data, images) -> None:
    model = _calibrated("mobilenet_v1", 0.25, 64, calib_data, padding="tf_same")
    for resolution, pads in ((64, (0, 1, 0, 1)), (65, (1, 1, 1, 1))):
        sliced = slice_subnet(model, 0.25, resolution, model_kwargs={"padding": "tf_same"})
        stem = sliced.module.get_submodule("features.0.0")
        assert isinstance(stem, ZeroPadConv2d)
        assert tuple(stem.pad.padding) == pads
        assert stem.padding == (0, 0)
        x = resize_to(images[:8], resolution)
        assert _max_diff(model, sliced.module, 0.25, x) <= TOL
    stride1 = sliced.module.get_submodule("features.1.0.0")  # stride-1 depthwise: symmetric
    assert type(stride1) is nn.Conv2d and stride1.padding == (1, 1)


def test_untraceable_model_falls_back_to_affines(calib_data, images) -> None:
    model = _calibrated("tiny_mobilenet", 0.5, 32, calib_data)

    class Untraceable(type(model)):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # data-dependent control flow
            y = self.features(x)
            if y.sum() > 1e30:
                y = y * 0
            return self.classifier(self.pool(y))

    model.__class__ = Untraceable
    with pytest.warns(UserWarning, match="could not trace"):
        sliced = slice_subnet(model, 0.5, 32)
    assert not any(spec.kind == "identity" for _, spec in sliced.arch.layers)
    assert _max_diff(model, sliced.module, 0.5, images) <= TOL


def test_save_and_load_without_the_supernet(tmp_path: Path, calib_data, images) -> None:
    model = _calibrated("mobilenet_v2", 0.85, 32, calib_data)
    sliced = slice_subnet(model, 0.85, 32)
    weights, arch = save_subnet(sliced, tmp_path / "sub")
    assert weights.name == WEIGHTS_FILE and arch.name == ARCH_FILE
    doc = json.loads(arch.read_text())
    assert doc["model"] == "mobilenet_v2" and doc["width"] == 0.85 and doc["resolution"] == 32
    assert doc["layers"]["features.0.0"]["out_channels"] == 32  # make_divisible(32 * .85)
    assert len(arch.read_text().splitlines()) < len(doc["layers"]) + 25  # one line per layer
    del model
    loaded = load_subnet(tmp_path / "sub")
    assert loaded.arch == sliced.arch
    with torch.no_grad():
        assert torch.equal(loaded.module(images), sliced.module(images))
    assert sum(p.numel() for p in loaded.module.parameters()) < 3_000_000


def test_load_rejects_broken_subnet_dirs(tmp_path: Path, calib_data) -> None:
    model = _calibrated("tiny_mobilenet", 0.5, 32, calib_data)
    save_subnet(slice_subnet(model, 0.5, 32), tmp_path / "ok")
    with pytest.raises(ExportUsageError, match="does not exist"):
        load_subnet(tmp_path / "nowhere")
    arch = json.loads((tmp_path / "ok" / ARCH_FILE).read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / WEIGHTS_FILE).write_bytes((tmp_path / "ok" / WEIGHTS_FILE).read_bytes())
    arch["layers"]["features.0.0"]["out_channels"] = 24
    (bad / ARCH_FILE).write_text(json.dumps(arch))
    with pytest.raises(ExportError, match="does not match"):
        load_subnet(bad)
    (bad / ARCH_FILE).write_text(json.dumps({**arch, "format": "something"}))
    with pytest.raises(ExportUsageError, match="not a mutualnet subnet"):
        load_subnet(bad)
    (bad / WEIGHTS_FILE).unlink()
    (bad / ARCH_FILE).write_text((tmp_path / "ok" / ARCH_FILE).read_text())
    with pytest.raises(ExportUsageError, match="missing"):
        load_subnet(bad)


def test_subnets_outside_the_trained_range_are_usage_errors() -> None:
    model = create_model("mobilenet_v2")  # width range [0.7, 1.0]
    with pytest.raises(ExportUsageError, match="below the trained range"):
        slice_subnet(model, 0.5, 64)
    with pytest.raises(ExportUsageError, match="minimum of 32 px"):
        slice_subnet(model, 1.0, 16)


@pytest.mark.slow
def test_resnet50_sliced_equals_supernet(calib_data, images) -> None:
    model = _calibrated("resnet50", 0.9, 64, calib_data)
    sliced = slice_subnet(model, 0.9, 64)
    assert sliced.module.get_submodule("conv1").out_channels == 56 + 2  # rho = 0.25 stem
    assert _max_diff(model, sliced.module, 0.9, resize_to(images, 64)) <= TOL
