"""Pairs of (original supernet, our supernet) built with the same widths, and the
helpers the peer scripts share: weight copy by order and shape, layer-by-layer
channel records, BatchNorm calibration on given batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mutualnet.models import create_model
from mutualnet.slimmable import SlimmableNet

from ._refs import Reference, load_reference, set_width


@dataclass(frozen=True)
class PairSpec:
    """One model of ours and the reference module that builds the same network."""

    ours: str                       # name in mutualnet.models
    ref: str                        # "MutualNet" | "slimmable_networks"
    module: str                     # the reference's model module
    width_range: tuple[float, float]
    resolutions: tuple[int, int]    # the two resolutions compared
    num_classes: int = 1000
    flags: dict[str, Any] = field(default_factory=dict)
    ours_kwargs: dict[str, Any] = field(default_factory=dict)
    #: US-Nets' models average-pool with a fixed kernel (input_size // 32): they run
    #: only at the resolution they were built for, so one is built per resolution.
    fixed_resolution: bool = False

    @property
    def label(self) -> str:
        short = "MutualNet" if self.ref == "MutualNet" else "US-Nets"
        lo, hi = self.width_range
        return f"{self.ours} [{lo}, {hi}] vs {short} {self.module.split('.')[-1]}"

    def widths(self) -> tuple[float, float, float]:
        lo, hi = self.width_range
        return lo, round((lo + hi) / 2, 4), hi


PAIRS: tuple[PairSpec, ...] = (
    PairSpec("mobilenet_v1", "MutualNet", "models.mobilenet_v1", (0.25, 1.0), (224, 128)),
    PairSpec("mobilenet_v2", "MutualNet", "models.mobilenet_v2", (0.7, 1.0), (224, 128)),
    PairSpec("resnet50", "MutualNet", "models.resnet", (0.9, 1.0), (224, 128),
             flags={"depth": 50, "data_transforms": "imagenet1k_basic"}),
    PairSpec("wrn28_10", "MutualNet", "models.wideresnet", (0.9, 1.0), (32, 24),
             num_classes=10, flags={"dataset": "cifar10", "depth": 28, "widen_factor": 10,
                                    "dropoutrate": 0.0, "image_size": 32}),
    # the paper's scaled-up MobileNet v1 (w = 1.6): allocation above width 1.0
    PairSpec("mobilenet_v1", "MutualNet", "models.mobilenet_v1", (0.25, 1.6), (224, 128)),
    PairSpec("mobilenet_v1", "slimmable_networks", "models.us_mobilenet_v1", (0.25, 1.0),
             (224, 128), fixed_resolution=True),
    PairSpec("mobilenet_v2", "slimmable_networks", "models.us_mobilenet_v2", (0.35, 1.0),
             (224, 128), fixed_resolution=True),
)


#: Pairs that cannot be equal, checked to fail exactly as explained (see equivalence.py).
DIVERGENT: tuple[tuple[PairSpec, str, str], ...] = (
    (PairSpec("mobilenet_v2", "MutualNet", "models.mobilenet_v2", (0.7, 1.2), (224, 128)),
     "features.18.0.weight conv.weight (1280, ",
     "above width 1.0 MutualNet's MobileNet v2 keeps its last conv at 1280 outputs "
     "(`self.outp = make_divisible(1280)`), while US-Nets and torchvision widen it to "
     "make_divisible(1280 x max width) (1536 at 1.2), as ours does. No MutualNet config "
     "trains MobileNet v2 above width 1.0 (its range is [0.7, 1.0]), where all agree."),
)


def find_pair(ours: str, ref: str = "MutualNet") -> PairSpec:
    for spec in PAIRS:
        if spec.ours == ours and spec.ref == ref:
            return spec
    raise KeyError(f"no peer pair for {ours!r} / {ref!r}")


def load_ref(spec: PairSpec, width_list: Sequence[float], extra: Sequence[str] = ()) -> Reference:
    """Load the reference for ``spec``; ``width_list`` becomes FLAGS.width_mult_list (the
    widths whose BatchNorm statistics the original keeps, i.e. that it can evaluate)."""
    flags = {"model": spec.module, "num_classes": spec.num_classes,
             "width_mult_range": list(spec.width_range),
             "width_mult_list": sorted(float(w) for w in set(width_list)),
             "image_size": spec.resolutions[0], **spec.flags}
    return load_reference(spec.ref, flags, [spec.module, *extra])


def build_theirs(ref: Reference, spec: PairSpec, resolution: int | None = None) -> nn.Module:
    res = resolution or spec.resolutions[0]
    return ref[spec.module].Model(spec.num_classes, input_size=res)


def build_ours(spec: PairSpec) -> SlimmableNet:
    return create_model(spec.ours, num_classes=spec.num_classes, width_range=spec.width_range,
                        **spec.ours_kwargs)


class Theirs:
    """The original model, one instance per resolution when its pooling is fixed."""

    def __init__(self, ref: Reference, spec: PairSpec) -> None:
        self.spec = spec
        self.ref = ref
        self.main = build_theirs(ref, spec)
        self._by_res: dict[int, nn.Module] = {spec.resolutions[0]: self.main}

    def at(self, resolution: int) -> nn.Module:
        if not self.spec.fixed_resolution:
            return self.main
        if resolution not in self._by_res:
            m = build_theirs(self.ref, self.spec, resolution)
            m.load_state_dict(self.main.state_dict())
            self._by_res[resolution] = m
        return self._by_res[resolution]


# --------------------------------------------------------------------------- weights

def layer_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv / BN / Linear modules in registration order, without the originals' per-width
    ``USBatchNorm2d.bn`` statistics holders (they are buffers, never called)."""
    inner = {id(c) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
             for c in m.modules() if c is not m}
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear) and id(m) not in inner]


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.BatchNorm2d):
        return "bn"
    return "linear"


@dataclass(frozen=True)
class Mapping:
    pairs: tuple[tuple[str, str, tuple[int, ...]], ...]   # (their name, our name, shape)

    @property
    def tensors(self) -> int:
        return len(self.pairs)

    @property
    def elements(self) -> int:
        return sum(int(torch.Size(s).numel()) for _, _, s in self.pairs)


def map_parameters(theirs: nn.Module, ours: nn.Module) -> Mapping:
    """Pair the parameters of both models by order and check every pair: same tensor shape,
    same layer kind (conv/bn/linear), same parameter role (weight/bias), same count."""
    def params(model: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
        out = []
        for lname, m in layer_modules(model):
            for pname, p in m.named_parameters(recurse=False):
                out.append((f"{lname}.{pname}", f"{_kind(m)}.{pname}", p))
        return out

    tp, op = params(theirs), params(ours)
    n_t = sum(1 for _ in theirs.parameters())
    n_o = sum(1 for _ in ours.parameters())
    if len(tp) != n_t or len(op) != n_o:
        raise AssertionError(f"parameters outside conv/bn/linear layers: theirs {n_t - len(tp)}, "
                             f"ours {n_o - len(op)}")
    if len(tp) != len(op):
        raise AssertionError(f"parameter count differs: theirs {len(tp)}, ours {len(op)}")
    pairs = []
    for (tn, tk, t), (on, ok, o) in zip(tp, op, strict=True):
        if tk != ok or t.shape != o.shape:
            raise AssertionError(f"mapping broken at {tn} {tk} {tuple(t.shape)} -> "
                                 f"{on} {ok} {tuple(o.shape)}")
        pairs.append((tn, on, tuple(t.shape)))
    return Mapping(tuple(pairs))


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> None:
    """Give every parameter a value that makes slicing visible: random BN affine, biases and
    classifier weights (their init leaves BN at 1/0 and biases at 0)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        elif isinstance(m, nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight.shape[1] ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@torch.no_grad()
def copy_weights(theirs: nn.Module, ours: nn.Module) -> Mapping:
    """Copy the original's parameters into ours along the checked mapping."""
    mapping = map_parameters(theirs, ours)
    t_params = dict(theirs.named_parameters())
    o_params = dict(ours.named_parameters())
    for tn, on, _ in mapping.pairs:
        o_params[on].copy_(t_params[tn])
    return mapping


# --------------------------------------------------------------------------- channels

Record = tuple[str, int, int, int]   # (kind, in channels, out channels, output side)


def channel_record(model: nn.Module, run: Any) -> list[Record]:
    """Run ``run()`` and return, per conv/bn/linear layer in registration order, the
    channels it saw and produced and its output side (0 for linear)."""
    seen: dict[int, Record] = {}
    hooks = []
    layers = layer_modules(model)
    for _, m in layers:
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            side = out.shape[-1] if out.dim() == 4 else 0
            seen[id(mod)] = (_kind(mod), inp[0].shape[1], out.shape[1], side)
        hooks.append(m.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return [seen.get(id(m), ("unused", 0, 0, 0)) for _, m in layers]


def first_mismatch(a: Sequence[Record], b: Sequence[Record],
                   names: Sequence[str]) -> str | None:
    if len(a) != len(b):
        return f"layer count {len(a)} vs {len(b)}"
    for name, x, y in zip(names, a, b, strict=True):
        if x != y:
            return f"{name}: theirs {x} ours {y}"
    return None


# --------------------------------------------------------------------------- BN

def resize(x: torch.Tensor, r: int) -> torch.Tensor:
    """The originals' resize (bilinear, align_corners=True), identical for both sides."""
    if x.shape[-1] == r:
        return x
    return F.interpolate(x, (r, r), mode="bilinear", align_corners=True)


@torch.no_grad()
def calibrate_ours(model: SlimmableNet, width: float, resolution: int,
                   batches: Iterable[torch.Tensor]) -> None:
    """SPEC section 4 on given batches: reset, cumulative average, train-mode forwards."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with model.subnet(width):
        for x in batches:
            model(resize(x, resolution))
    model.eval()


def set_reference_width(model: nn.Module, width: float) -> None:
    set_width(model, width)
