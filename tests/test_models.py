"""Width 1.0 reproduces the standard architectures; the registry behaves."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mutualnet.errors import UsageError
from mutualnet.models import create_model, get_model_info, list_models, register_model


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name, reference", [
    ("mobilenet_v2", torchvision.models.mobilenet_v2),
    ("resnet50", torchvision.models.resnet50),
])
def test_width_one_equals_torchvision_layer_by_layer(name: str, reference) -> None:
    with torch.device("meta"):
        ours, theirs = create_model(name), reference()
    assert _shapes(ours) == _shapes(theirs)


def _conv_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_mobilenet_v1_matches_paper_table() -> None:
    """Howard et al. 2017, Table 1: conv filter shapes in order, then the FC layer."""
    expected = [(32, 3, 3, 3)]
    cin = 32
    for cout in (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024):
        expected += [(cin, 1, 3, 3), (cout, cin, 1, 1)]
        cin = cout
    with torch.device("meta"):
        model = create_model("mobilenet_v1")
    assert _conv_shapes(model) == expected
    assert tuple(model.classifier.weight.shape) == (1000, 1024)
    strides = [m.stride[0] for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(s == 2 for s in strides) == 5


def test_wrn28_10_matches_paper() -> None:
    """Zagoruyko & Komodakis 2016: 16 -> 160 -> 320 -> 640 channels, 4 blocks a group."""
    with torch.device("meta"):
        model = create_model("wrn28_10")
    convs = _conv_shapes(model)
    assert convs[0] == (16, 3, 3, 3)
    outs = [s[0] for s in convs if s[2] == 3]
    assert outs[1:] == [160] * 8 + [320] * 8 + [640] * 8
    assert sum(p.numel() for p in model.parameters()) == 36_479_194
    assert tuple(model.fc.weight.shape) == (10, 640)


def test_width_above_one_builds_and_runs() -> None:
    model = create_model("tiny_mobilenet", width_range=(0.25, 1.6)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
        with model.subnet(1.0):
            y1 = model(x)
    assert y1.shape == (1, 10)
    assert model.slim_layers[0].out_alloc == 24  # make_divisible(16 * 1.6) = 24
    with torch.device("meta"):
        big = create_model("mobilenet_v1", width_range=(0.25, 1.6))
    assert big.features[0][0].out_channels == make_div(32 * 1.6)


def make_div(v: float) -> int:
    from mutualnet.slimmable import make_divisible

    return make_divisible(v)


def test_registry_defaults_and_errors() -> None:
    assert {"mobilenet_v1", "mobilenet_v2", "resnet50", "wrn28_10", "wrn",
            "tiny_mobilenet"} <= set(list_models())
    assert get_model_info("mobilenet_v2").width_range == (0.7, 1.0)
    assert get_model_info("resnet50").resolutions == (224, 192, 160, 128)
    assert get_model_info("wrn28_10").resolutions == (32, 28, 24, 20)
    with pytest.raises(UsageError, match="known models: .*mobilenet_v1"):
        get_model_info("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_model("mobilenet_v1", width_range=(0.25, 1.0), resolutions=(224,),
                       num_classes=10)(lambda **kw: None)  # type: ignore[arg-type]


def test_tiny_model_is_tiny_and_trains() -> None:
    model = create_model("tiny_mobilenet")
    n = sum(p.numel() for p in model.parameters())
    assert 3_000 < n < 12_000
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_wrn_rejects_bad_depth() -> None:
    with pytest.raises(UsageError, match="6n \\+ 4"):
        create_model("wrn", depth=27)


def test_min_width_and_resolution() -> None:
    with torch.device("meta"):
        m = create_model("mobilenet_v1")
    assert m.min_width() == pytest.approx(0.125)  # the 32-channel stem would round below 4
    assert m.min_resolution() == 32
    assert create_model("tiny_mobilenet").min_resolution() == 4  # strides 1, 2, 2, 1
