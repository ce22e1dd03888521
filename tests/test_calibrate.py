"""Per-subnet BN calibration (SPEC 4): what it resets, what it computes, why it matters."""

from __future__ import annotations

import pytest
import torch

from mutualnet.calibrate import batchnorm_layers, calibrate_bn, reset_bn_stats
from mutualnet.checkpoint import load_checkpoint
from mutualnet.data import load_data, resize_to
from mutualnet.evaluate import evaluate


@pytest.fixture(scope="module")
def data(tiny_checkpoint):
    cfg = load_checkpoint(tiny_checkpoint).config
    return (load_data(cfg.data_spec("train"), "train"), load_data(cfg.data_spec("val"), "val"))


def test_calibration_changes_small_subnet_accuracy(tiny_checkpoint, data) -> None:
    """Statistics of the big subnet ruin the small one; its own statistics restore it."""
    train, val = data
    model = load_checkpoint(tiny_checkpoint).model
    small = (0.25, 20)
    calibrate_bn(model, 1.0, 32, train, num_images=1000)
    with_big_stats = evaluate(model, *small, val).top1
    calibrate_bn(model, *small, train, num_images=1000)
    with_own_stats = evaluate(model, *small, val).top1
    assert with_own_stats > with_big_stats + 5.0, (with_big_stats, with_own_stats)
    assert with_own_stats > 15.0  # clearly above chance (10%)


def test_calibration_is_an_exact_cumulative_average_of_the_subnet(tiny_checkpoint, data) -> None:
    train, _ = data
    model = load_checkpoint(tiny_checkpoint).model
    width, res, n = 0.5, 24, 300
    calibrate_bn(model, width, res, train, num_images=n, batch_size=n, seed=3)
    assert not model.training
    bns = batchnorm_layers(model)
    assert all(bn.momentum is None for bn in bns)
    # one batch => running stats are exactly that batch's statistics at the stem BN
    x = next(iter(train.batches(n, augment=True, shuffle=True, seed=3, epoch=0, limit=n)))[0]
    stem_bn = model.features[0][1]
    with torch.no_grad(), model.subnet(width):
        feats = model.features[0][0](resize_to(x, res))
    c = feats.shape[1]
    assert c < stem_bn.num_features  # the subnet uses only the leading channels
    torch.testing.assert_close(stem_bn.running_mean[:c], feats.mean((0, 2, 3)),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stem_bn.running_var[:c], feats.var((0, 2, 3), unbiased=True),
                               rtol=1e-4, atol=1e-5)
    assert torch.all(stem_bn.running_mean[c:] == 0) and torch.all(stem_bn.running_var[c:] == 1)
    # deterministic: the same call gives the same statistics
    before = stem_bn.running_var.clone()
    calibrate_bn(model, width, res, train, num_images=n, batch_size=n, seed=3)
    assert torch.equal(before, stem_bn.running_var)


def test_reset_bn_stats() -> None:
    from mutualnet.models import create_model

    model = create_model("tiny_mobilenet")
    model.train()
    model(torch.randn(4, 3, 32, 32))
    reset_bn_stats(model)
    for bn in batchnorm_layers(model):
        assert bn.momentum is None and int(bn.num_batches_tracked) == 0
        assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
