"""Slimmable layers and the scoped choice of the active subnet.

A subnet is a pair (width w, resolution r). Width keeps the *leading* ``active(c)``
channels of every slimmable layer (SPEC section 2); resolution is just the input
size. The active width is chosen explicitly and scoped::

    with model.subnet(width=0.5):
        y = model(x)

There is no global state: each :class:`SlimmableNet` owns a cached, immutable
*channel plan* per width (one ``(in, out)`` pair per slimmable layer) and entering
``subnet()`` writes that plan into its layers once; forwards then do no Python walk.
Nesting and exceptions restore the previous width. One model instance runs one
subnet at a time: use one instance per thread for concurrent widths.

This module knows no model: models describe their layers with :class:`Ch` channel
specs and spatial paths (for analytic FLOPs) and inherit :class:`SlimmableNet`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError

DIVISOR = 8


def make_divisible(v: float, divisor: int = DIVISOR, min_value: int = 1) -> int:
    """Round ``v`` to a multiple of ``divisor``, never more than 10% below ``v`` (SPEC 2)."""
    new = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def active_channels(c: int, width: float, rho: float = 1.0) -> int:
    """Active channels of a layer of full size ``c`` at ``width`` with group ratio ``rho``."""
    return int(make_divisible(c * width / rho) * rho)


@dataclass(frozen=True)
class Ch:
    """A channel count: ``base`` at width 1.0, scaled by width unless ``slim`` is False."""

    base: int
    rho: float = 1.0
    slim: bool = True

    def at(self, width: float) -> int:
        return active_channels(self.base, width, self.rho) if self.slim else self.base

    def min_width(self) -> float:
        """Below this width the layer rounds to fewer than divisor/2 channels' worth."""
        return (DIVISOR / 2) * self.rho / self.base if self.slim else 0.0


@dataclass(frozen=True)
class Spatial:
    """One spatial operation on an input path: kernel, stride, padding, TF 'SAME' flag."""

    k: int
    s: int
    p: int
    same: bool = False

    def out(self, h: int) -> int:
        if self.same:
            return -(-h // self.s)
        return (h + 2 * self.p - self.k) // self.s + 1


Path = tuple[Spatial, ...]


def spatial_size(path: Path, resolution: int) -> int:
    """Side of the feature map after the spatial ops of ``path`` on an r x r input."""
    h = resolution
    for op in path:
        h = op.out(h)
    return h


def _tf_same_pads(h: int, k: int, s: int) -> tuple[int, int]:
    out = -(-h // s)
    total = max((out - 1) * s + k - h, 0)
    return total // 2, total - total // 2


class Slimmable:
    """Mixin of every layer a channel plan addresses (conv, BN, linear, pooling)."""

    in_ch: Ch
    out_ch: Ch
    in_alloc: int
    out_alloc: int
    active_in: int
    active_out: int
    path: Path  # spatial ops applied to this layer's input (for analytic FLOPs)

    def _init_slim(self, in_ch: Ch, out_ch: Ch, max_width: float, path: Path) -> None:
        self.in_ch, self.out_ch, self.path = in_ch, out_ch, path
        self.in_alloc = in_ch.at(max_width)
        self.out_alloc = out_ch.at(max_width)
        self.active_in, self.active_out = self.in_alloc, self.out_alloc

    def plan_entry(self, width: float) -> tuple[int, int]:
        return min(self.in_ch.at(width), self.in_alloc), min(self.out_ch.at(width), self.out_alloc)

    def _sliced(self, make: Callable[[], tuple[torch.Tensor | None, ...]],
                anchor: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The active slices of this layer's tensors; cached while no gradient is recorded.

        Slicing costs a few microseconds per tensor, which dominates small subnets at
        batch 1. Without autograd the views are reused until the active channels or the
        parameter storage (``.to()``, ``load_state_dict(assign=True)``) change; in-place
        updates are seen through the views.
        """
        if torch.is_grad_enabled():
            return make()
        key = (self.active_in, self.active_out, anchor.data_ptr(), anchor.device)
        cache = self.__dict__.get("_slice_cache")
        if cache is None or cache[0] != key:
            cache = (key, make())
            self.__dict__["_slice_cache"] = cache
        return cache[1]


class SlimConv2d(nn.Conv2d, Slimmable):
    """Conv2d whose leading ``active_out`` filters over ``active_in`` inputs are used.

    ``depthwise=True`` makes a depthwise conv (groups = active channels). With
    ``tf_same=True`` the conv pads like TensorFlow's "SAME" (asymmetric on even
    inputs with stride 2) instead of symmetrically.
    """

    def __init__(
        self,
        in_ch: Ch,
        out_ch: Ch,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        *,
        depthwise: bool = False,
        bias: bool = False,
        max_width: float = 1.0,
        path: Path = (),
        tf_same: bool = False,
    ) -> None:
        if depthwise and in_ch != out_ch:
            raise ValueError("a depthwise conv needs the same channel spec in and out")
        pad = (kernel_size - 1) // 2 if padding is None else padding
        cin, cout = in_ch.at(max_width), out_ch.at(max_width)
        super().__init__(
            cin, cout, kernel_size, stride, 0 if tf_same else pad,
            groups=cin if depthwise else 1, bias=bias,
        )
        self._init_slim(in_ch, out_ch, max_width, path)
        self.depthwise = depthwise
        self.tf_same = tf_same
        self.spatial = Spatial(kernel_size, stride, pad, tf_same)

    @property
    def out_path(self) -> Path:
        return (*self.path, self.spatial)

    def _active_params(self) -> tuple[torch.Tensor | None, ...]:
        i, o = self.active_in, self.active_out
        weight = self.weight
        if self.depthwise and o != self.out_channels:
            weight = weight[:o]
        elif not self.depthwise and (o != self.out_channels or i != self.in_channels):
            weight = weight[:o, :i]
        return weight, None if self.bias is None else self.bias[:o]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._sliced(self._active_params, self.weight)
        groups = self.active_out if self.depthwise else 1
        if self.tf_same:
            k, s = self.spatial.k, self.spatial.s
            top, bottom = _tf_same_pads(x.shape[-2], k, s)
            left, right = _tf_same_pads(x.shape[-1], k, s)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        assert weight is not None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class SlimBatchNorm2d(nn.BatchNorm2d, Slimmable):
    """BatchNorm with a shared, sliced affine and running statistics over the leading channels.

    In training mode it always normalizes with batch statistics. Running statistics
    are one buffer of the allocated size; they are meaningful only for the subnet
    they were last calibrated for (``mutualnet.calibrate``), as SPEC section 4 says.
    """

    def __init__(self, ch: Ch, *, max_width: float = 1.0, path: Path = ()) -> None:
        super().__init__(ch.at(max_width))
        self._init_slim(ch, ch, max_width, path)

    def _active_params(self) -> tuple[torch.Tensor | None, ...]:
        c = self.active_out
        if c == self.num_features:
            return self.running_mean, self.running_var, self.weight, self.bias
        return tuple(None if t is None else t[:c] for t in
                     (self.running_mean, self.running_var, self.weight, self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0
        if self.training and self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        rm, rv, weight, bias = self._sliced(self._active_params, self.weight)
        use_batch_stats = self.training or rm is None
        return F.batch_norm(x, rm, rv, weight, bias, use_batch_stats, factor, self.eps)


class SlimLinear(nn.Linear, Slimmable):
    """Linear layer over the leading ``active_in`` features (outputs are never slimmed)."""

    def __init__(self, in_ch: Ch, out_features: int, *, max_width: float = 1.0,
                 bias: bool = True) -> None:
        out_ch = Ch(out_features, slim=False)
        super().__init__(in_ch.at(max_width), out_features, bias=bias)
        self._init_slim(in_ch, out_ch, max_width, ())

    def _active_params(self) -> tuple[torch.Tensor | None, ...]:
        i = self.active_in
        return (self.weight if i == self.in_features else self.weight[:, :i]),

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (weight,) = self._sliced(self._active_params, self.weight)
        assert weight is not None
        return F.linear(x, weight, self.bias)


class GlobalAvgPool(nn.Module, Slimmable):
    """Global average pooling to ``[N, C]``; counted in MACs as C x H x W."""

    def __init__(self, ch: Ch, *, max_width: float = 1.0, path: Path = ()) -> None:
        super().__init__()
        self._init_slim(ch, ch, max_width, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


Plan = tuple[tuple[int, int], ...]


class SlimmableNet(nn.Module):
    """Base class of every slimmable model: owns the channel plans and ``subnet()``.

    Subclasses build their layers, set ``self.max_width`` and the registry defaults
    (``width_range``, ``resolutions``), then call :meth:`finalize`.
    """

    max_width: float
    width_range: tuple[float, float]
    resolutions: tuple[int, ...]
    model_name: str
    _PLAN_CACHE = 64

    def finalize(self) -> None:
        self.slim_layers: list[Slimmable] = [m for m in self.modules() if isinstance(m, Slimmable)]
        self._plans: OrderedDict[float, Plan] = OrderedDict()
        self._width = self.max_width

    @property
    def width(self) -> float:
        """The width the model currently runs at."""
        return self._width

    def plan(self, width: float) -> Plan:
        """The ``(in, out)`` active channels of every slimmable layer at ``width`` (cached)."""
        width = float(width)
        plan = self._plans.get(width)
        if plan is None:
            self.check_width(width)
            plan = tuple(layer.plan_entry(width) for layer in self.slim_layers)
            self._plans[width] = plan
            if len(self._plans) > self._PLAN_CACHE:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(width)
        return plan

    def _use(self, width: float) -> None:
        for layer, (i, o) in zip(self.slim_layers, self.plan(width), strict=True):
            layer.active_in = i
            layer.active_out = o
        self._width = width

    @contextmanager
    def subnet(self, width: float) -> Iterator[SlimmableNet]:
        """Run the model at ``width`` inside the block; the previous width is restored after."""
        previous = self._width
        self._use(float(width))
        try:
            yield self
        finally:
            self._use(previous)

    def min_width(self) -> float:
        """Smallest width at which every slimmed layer still keeps a meaningful channel count."""
        return max(max(layer.in_ch.min_width(), layer.out_ch.min_width())
                   for layer in self.slim_layers)

    def min_resolution(self) -> int:
        """Smallest input side: the network's total stride (its last feature map is then 1x1)."""
        return max(math.prod(op.s for op in layer.path) for layer in self.slim_layers)

    def check_width(self, width: float) -> None:
        if not math.isfinite(width) or width <= 0:
            raise UsageError(f"width must be a positive number, got {width}")
        if width > self.max_width + 1e-9:
            raise UsageError(
                f"width {width} is above this model's maximum {self.max_width}; "
                f"build the model with max_width >= {width}"
            )
