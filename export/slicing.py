"""Slice a supernet at (width, resolution) into a standalone plain PyTorch model.

The result keeps the model's own ``forward`` (the module tree is a deep copy) but every
slimmable layer is replaced by an ordinary layer with exactly the active channels:

- ``SlimConv2d`` -> ``nn.Conv2d`` (``ZeroPadConv2d`` when the conv pads like TensorFlow:
  a static ``nn.ZeroPad2d`` computed for this resolution, then an unpadded conv);
- a ``SlimBatchNorm2d`` whose input is the output of one conv used by nothing else ->
  folded into that conv (the conv gets a bias, the BN becomes ``nn.Identity``);
- any other BatchNorm (e.g. Wide ResNet's pre-activation BN) -> :class:`ChannelAffine`
  (``x * scale + shift``: a Mul and an Add in ONNX, never BatchNormalization);
- ``SlimLinear`` -> ``nn.Linear``; ``GlobalAvgPool`` -> :class:`GlobalAvgPool2d`.

Which BN follows which conv is read from a ``torch.fx`` trace of the model (slimmable
layers as leaves), so the slicing is generic over every registered model.

The structural decisions are recorded in a :class:`SubnetArch` (saved as ``arch.json``
next to ``weights.safetensors``); :func:`load_subnet` rebuilds the plain model from those
two files without the supernet's weights: it builds the registered model's skeleton on the
meta device (for its ``forward``), applies the recorded replacements and assigns the weights.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from mutualnet.fileio import atomic_write
from mutualnet.slimmable import (
    GlobalAvgPool,
    SlimConv2d,
    Slimmable,
    SlimmableNet,
    _tf_same_pads,
    spatial_size,
)

from .errors import ExportError, ExportUsageError

ARCH_FORMAT = "mutualnet-subnet"
ARCH_VERSION = 1
ARCH_FILE = "arch.json"
WEIGHTS_FILE = "weights.safetensors"


# --------------------------------------------------------------------------- plain layers
class _StaticZeroPad(torch.autograd.Function):
    """Zero padding whose ONNX form is one Pad node with constant pads.

    (The TorchScript exporter turns ``F.pad`` into a chain of Slice/Concat/Reshape ops that
    compute the pads at run time; a constant is what TensorRT and the graph rules want.)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
        return F.pad(x, pad)

    @staticmethod
    def symbolic(g: Any, x: Any, pad: tuple[int, int, int, int]) -> Any:
        left, right, top, bottom = pad
        pads = torch.tensor([0, 0, top, left, 0, 0, bottom, right], dtype=torch.int64)
        return g.op("Pad", x, g.op("Constant", value_t=pads), mode_s="constant")


class ZeroPadConv2d(nn.Conv2d):
    """A conv preceded by a fixed zero padding (TensorFlow 'SAME' at one input size)."""

    def __init__(self, *args: Any, pad: tuple[int, int, int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad = nn.ZeroPad2d(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling():
            pad = tuple(int(p) for p in self.pad.padding)
            return super().forward(_StaticZeroPad.apply(x, pad))
        return super().forward(self.pad(x))


class ChannelAffine(nn.Module):
    """Per-channel ``x * scale + shift`` (an inference BatchNorm that cannot be folded)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels, 1, 1))
        self.register_buffer("shift", torch.zeros(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class GlobalAvgPool2d(nn.Module):
    """Average pooling over the whole (statically known) ``kernel`` x ``kernel`` map to [N, C].

    A fixed-kernel pool (ONNX AveragePool + Flatten) rather than an adaptive one: both
    exporters then emit opset-17 ops (the dynamo exporter turns adaptive pooling into an
    opset-18 ReduceMean it cannot convert down).
    """

    def __init__(self, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.avg_pool2d(x, self.kernel), 1)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


# --------------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class LayerSpec:
    """What one module of the supernet becomes in the plain model."""

    kind: str  # conv | linear | affine | identity | avgpool
    in_channels: int = 0
    out_channels: int = 0
    kernel: tuple[int, int] = (1, 1)  # conv kernel, or the pooled map's size for avgpool
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    pad: tuple[int, int, int, int] | None = None  # static zero pad (left, right, top, bottom)
    folded_into: str | None = None  # for a BN folded into a conv: that conv's name

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "conv":
            d: dict[str, Any] = {
                "kind": "conv", "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel": list(self.kernel),
                "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias,
            }
            if self.pad is not None:
                d["pad"] = list(self.pad)
            return d
        if self.kind == "linear":
            return {"kind": "linear", "in_features": self.in_channels,
                    "out_features": self.out_channels, "bias": self.bias}
        if self.kind == "affine":
            return {"kind": "affine", "channels": self.out_channels}
        if self.kind == "identity":
            return {"kind": "identity", "channels": self.out_channels,
                    "folded_into": self.folded_into}
        return {"kind": "avgpool", "kernel": list(self.kernel)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerSpec:
        kind = d["kind"]
        if kind == "conv":
            pad = d.get("pad")
            return cls("conv", int(d["in_channels"]), int(d["out_channels"]), _pair(d["kernel"]),
                       _pair(d["stride"]), _pair(d["padding"]), _pair(d["dilation"]),
                       int(d["groups"]), bool(d["bias"]),
                       None if pad is None else (int(pad[0]), int(pad[1]), int(pad[2]),
                                                 int(pad[3])))
        if kind == "linear":
            return cls("linear", int(d["in_features"]), int(d["out_features"]),
                       bias=bool(d["bias"]))
        if kind == "affine":
            return cls("affine", int(d["channels"]), int(d["channels"]))
        if kind == "identity":
            c = int(d.get("channels", 0))
            return cls("identity", c, c, folded_into=d.get("folded_into"))
        if kind == "avgpool":
            return cls("avgpool", kernel=_pair(d["kernel"]))
        raise ValueError(f"unknown layer kind {kind!r}")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class SubnetArch:
    """Everything needed to rebuild a sliced subnet around its weights file."""

    model: str
    width: float
    resolution: int
    num_classes: int
    width_range: tuple[float, float]
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    layers: tuple[tuple[str, LayerSpec], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ARCH_FORMAT, "version": ARCH_VERSION, "model": self.model,
            "width": self.width, "resolution": self.resolution,
            "num_classes": self.num_classes, "width_range": list(self.width_range),
            "model_kwargs": dict(self.model_kwargs),
            "input": {"name": "input", "shape": ["N", 3, self.resolution, self.resolution]},
            "layers": {name: spec.to_dict() for name, spec in self.layers},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> SubnetArch:
        if d.get("format") != ARCH_FORMAT:
            raise ExportUsageError(f"{source} is not a mutualnet subnet architecture file "
                                   f"(format {d.get('format')!r}); pass the arch.json written "
                                   "by `mutualnet export`")
        if d.get("version") != ARCH_VERSION:
            raise ExportUsageError(f"{source}: architecture version {d.get('version')!r} is not "
                                   f"supported (expected {ARCH_VERSION}); re-export the subnet")
        try:
            layers = tuple((name, LayerSpec.from_dict(spec)) for name, spec in d["layers"].items())
            wr = d["width_range"]
            return cls(str(d["model"]), float(d["width"]), int(d["resolution"]),
                       int(d["num_classes"]), (float(wr[0]), float(wr[1])),
                       dict(d.get("model_kwargs") or {}), layers)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ExportUsageError(f"{source}: malformed architecture ({e}); re-export the "
                                   "subnet") from None


@dataclass(frozen=True)
class SlicedSubnet:
    """A standalone plain model and the architecture it was built from."""

    module: nn.Module
    arch: SubnetArch


# --------------------------------------------------------------------------- analysis
class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Slimmable | nn.Conv2d | nn.BatchNorm2d | nn.Linear) or \
            super().is_leaf_module(m, module_qualified_name)


def foldable_pairs(model: nn.Module) -> dict[str, str]:
    """``{bn_name: conv_name}`` for every BatchNorm fed only by one conv used only by it.

    Read from a ``torch.fx`` trace; if the model cannot be traced, nothing is folded (every
    BN then becomes a :class:`ChannelAffine`, still exact) and a warning says so.
    """
    try:
        graph = _LeafTracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure falls back to no folding
        warnings.warn(f"could not trace {type(model).__name__} ({e}); BatchNorms become "
                      "per-channel affines instead of being folded into the convs",
                      stacklevel=2)
        return {}
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        name = str(node.target)
        if node.op != "call_module" or not isinstance(modules[name], nn.BatchNorm2d):
            continue
        if calls[name] != 1 or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module":
            continue
        conv_name = str(src.target)
        conv = modules[conv_name]
        if (isinstance(conv, nn.Conv2d) and calls[conv_name] == 1 and len(src.users) == 1
                and conv.out_channels == modules[name].num_features):
            pairs[name] = conv_name
    return pairs


def _active(layer: nn.Module, plan: Mapping[int, tuple[int, int]]) -> tuple[int, int]:
    if id(layer) in plan:
        return plan[id(layer)]
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels
    if isinstance(layer, nn.BatchNorm2d):
        return layer.num_features, layer.num_features
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return 0, 0


def subnet_arch(model: SlimmableNet, width: float, resolution: int, *,
                model_kwargs: Mapping[str, Any] | None = None,
                fold: Mapping[str, str] | None = None) -> SubnetArch:
    """The plain architecture of ``model`` at (``width``, ``resolution``)."""
    check_subnet(model, width, resolution)
    plan = {id(layer): io for layer, io in zip(model.slim_layers, model.plan(width), strict=True)}
    fold = foldable_pairs(model) if fold is None else fold
    folded_convs = set(fold.values())
    layers: list[tuple[str, LayerSpec]] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            layers.append((name, _conv_spec(m, _active(m, plan), resolution,
                                            bias=m.bias is not None or name in folded_convs)))
        elif isinstance(m, nn.BatchNorm2d):
            c = _active(m, plan)[1]
            if name in fold:
                layers.append((name, LayerSpec("identity", c, c, folded_into=fold[name])))
            else:
                layers.append((name, LayerSpec("affine", c, c)))
        elif isinstance(m, nn.Linear):
            i, o = _active(m, plan)
            layers.append((name, LayerSpec("linear", i, o, bias=m.bias is not None)))
        elif isinstance(m, GlobalAvgPool):
            h = spatial_size(m.path, resolution)
            layers.append((name, LayerSpec("avgpool", kernel=(h, h))))
        elif isinstance(m, Slimmable):
            raise ExportError(f"cannot slice layer {name} of type {type(m).__name__}: teach "
                              "export/slicing.py about it")
    kwargs = dict(model_kwargs if model_kwargs is not None
                  else getattr(model, "model_kwargs", None) or {})
    name = getattr(model, "model_name", None)
    if not name:
        raise ExportUsageError("the model has no registry name: build it with "
                               "mutualnet.models.create_model")
    num_classes = _num_classes(layers)
    wr = getattr(model, "width_range", (width, model.max_width))
    return SubnetArch(name, float(width), int(resolution), num_classes,
                      (float(wr[0]), float(wr[1])), kwargs, tuple(layers))


def _num_classes(layers: list[tuple[str, LayerSpec]]) -> int:
    linears = [spec for _, spec in layers if spec.kind == "linear"]
    return linears[-1].out_channels if linears else 0


def _conv_spec(m: nn.Conv2d, io: tuple[int, int], resolution: int, *, bias: bool) -> LayerSpec:
    i, o = io
    depthwise = bool(getattr(m, "depthwise", False)) or (
        m.groups > 1 and m.groups == m.in_channels == m.out_channels)
    if not depthwise and m.groups != 1:
        raise ExportError(f"grouped conv {m} (groups={m.groups}) cannot be sliced")
    padding = m.padding
    if isinstance(padding, str):
        raise ExportError(f"conv {m} uses padding={padding!r}; only numeric padding slices")
    pad = None
    if getattr(m, "tf_same", False):
        assert isinstance(m, SlimConv2d)
        h = spatial_size(m.path, resolution)
        top, bottom = _tf_same_pads(h, m.spatial.k, m.spatial.s)
        left, right = top, bottom  # square inputs: the same pads on both axes
        if top or bottom:
            pad = (left, right, top, bottom)
    return LayerSpec("conv", o if depthwise else i, o, _pair(m.kernel_size), _pair(m.stride),
                     _pair(padding), _pair(m.dilation), o if depthwise else 1, bias, pad)


def check_subnet(model: SlimmableNet, width: float, resolution: int) -> None:
    """Usage error unless (``width``, ``resolution``) is a subnet ``model`` can run."""
    model.check_width(width)
    lo = getattr(model, "width_range", (model.min_width(), model.max_width))[0]
    if width < lo - 1e-9:
        raise ExportUsageError(f"width {width:g} is below the trained range "
                               f"[{lo:g}, {model.max_width:g}]; pick a width inside it")
    if int(resolution) != resolution or resolution < model.min_resolution():
        raise ExportUsageError(f"resolution {resolution} is below the model's minimum of "
                               f"{model.min_resolution()} px (its total stride)")


# --------------------------------------------------------------------------- building
def _make_layer(spec: LayerSpec) -> nn.Module:
    if spec.kind == "conv":
        kw: dict[str, Any] = dict(stride=spec.stride, padding=spec.padding,
                                  dilation=spec.dilation, groups=spec.groups, bias=spec.bias)
        if spec.pad is not None:
            return ZeroPadConv2d(spec.in_channels, spec.out_channels, spec.kernel,
                                 pad=spec.pad, **kw)
        return nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel, **kw)
    if spec.kind == "linear":
        return nn.Linear(spec.in_channels, spec.out_channels, bias=spec.bias)
    if spec.kind == "affine":
        return ChannelAffine(spec.out_channels)
    if spec.kind == "identity":
        return nn.Identity()
    if spec.kind == "avgpool":
        return GlobalAvgPool2d(spec.kernel)
    raise ValueError(f"unknown layer kind {spec.kind!r}")


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def build_structure(skeleton: nn.Module, arch: SubnetArch) -> nn.Module:
    """Replace the layers of ``skeleton`` (modified in place) as ``arch`` says.

    New layers are created on the meta device: assign weights with
    ``load_state_dict(..., assign=True)``.
    """
    with torch.device("meta"):
        new = [(name, _make_layer(spec)) for name, spec in arch.layers]
    for name, module in new:
        _replace(skeleton, name, module)
    if isinstance(skeleton, SlimmableNet):
        skeleton.slim_layers = []  # nothing is slimmable any more: subnet() becomes a no-op
        skeleton._plans.clear()
    skeleton.subnet_width = arch.width  # type: ignore[assignment]
    skeleton.subnet_resolution = arch.resolution  # type: ignore[assignment]
    return skeleton.eval()


def _fold(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d,
          c: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale, shift = _bn_affine(bn, c)
    w = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias.double() * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def _bn_affine(bn: nn.BatchNorm2d, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError("a BatchNorm has no running statistics; calibrate the subnet "
                          "(mutualnet.calibrate.calibrate_bn) before slicing")
    mean = bn.running_mean[:c].double()
    var = bn.running_var[:c].double()
    gamma = bn.weight[:c].double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias[:c].double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def sliced_state(model: nn.Module, arch: SubnetArch) -> dict[str, torch.Tensor]:
    """The plain model's weights: active slices of ``model``'s, with BNs folded (fp32)."""
    modules = dict(model.named_modules())
    specs = dict(arch.layers)
    bn_of = {spec.folded_into: name for name, spec in arch.layers if spec.kind == "identity"}
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, spec in arch.layers:
            m = modules[name]
            if spec.kind == "conv":
                assert isinstance(m, nn.Conv2d)
                o = spec.out_channels
                i = spec.in_channels // spec.groups
                w = m.weight[:o, :i]
                b = None if m.bias is None else m.bias[:o]
                if name in bn_of:
                    bn = modules[bn_of[name]]
                    assert isinstance(bn, nn.BatchNorm2d)
                    w, b = _fold(w, b, bn, o)
                state[f"{name}.weight"] = w
                if b is not None:
                    state[f"{name}.bias"] = b
            elif spec.kind == "linear":
                assert isinstance(m, nn.Linear)
                state[f"{name}.weight"] = m.weight[:spec.out_channels, :spec.in_channels]
                if m.bias is not None:
                    state[f"{name}.bias"] = m.bias[:spec.out_channels]
            elif spec.kind == "affine":
                assert isinstance(m, nn.BatchNorm2d)
                scale, shift = _bn_affine(m, spec.out_channels)
                dtype = m.weight.dtype if m.weight is not None else torch.float32
                state[f"{name}.scale"] = scale.view(-1, 1, 1).to(dtype)
                state[f"{name}.shift"] = shift.view(-1, 1, 1).to(dtype)
    assert set(specs) >= {k.rsplit(".", 1)[0] for k in state}
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def slice_subnet(model: SlimmableNet, width: float, resolution: int, *,
                 model_kwargs: Mapping[str, Any] | None = None) -> SlicedSubnet:
    """A standalone plain copy of ``model`` at (``width``, ``resolution``), BN folded.

    ``model``'s BN running statistics must be the ones calibrated for this pair
    (``mutualnet.calibrate.calibrate_bn``); ``model`` itself is not modified.
    ``model_kwargs`` are the keyword arguments the model was built with (recorded so
    :func:`load_subnet` can rebuild it); default: ``model.model_kwargs`` or ``{}``.
    """
    arch = subnet_arch(model, width, resolution, model_kwargs=model_kwargs)
    state = sliced_state(model, arch)
    was_training = model.training
    net = build_structure(copy.deepcopy(model), arch)
    model.train(was_training)
    missing, unexpected = net.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ExportError(f"internal error: sliced weights {unexpected} have no layer")
    leftover = [k for k, v in net.state_dict().items() if v.is_meta]
    if leftover:
        raise ExportError(f"internal error: sliced model has no weights for {leftover}")
    return SlicedSubnet(net.eval(), arch)


# --------------------------------------------------------------------------- save / load
def save_subnet(sliced: SlicedSubnet, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``weights.safetensors`` and ``arch.json`` into ``out_dir`` (each atomically)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in sliced.module.state_dict().items()}
    weights, arch = out / WEIGHTS_FILE, out / ARCH_FILE
    meta = {"format": ARCH_FORMAT, "model": sliced.arch.model,
            "width": repr(sliced.arch.width), "resolution": str(sliced.arch.resolution)}
    atomic_write(weights, lambda p: save_file(state, str(p), metadata=meta))
    text = arch_json(sliced.arch)
    atomic_write(arch, lambda p: p.write_text(text))
    return weights, arch


def arch_json(arch: SubnetArch) -> str:
    """``arch.json`` text: readable header, one line per layer."""
    d = arch.to_dict()
    layers = d.pop("layers")
    head = json.dumps(d, indent=1)[:-2]
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in layers.items())
    return f'{head},\n "layers": {{\n{body}\n }}\n}}\n'


def read_arch(path: str | os.PathLike[str]) -> SubnetArch:
    """Read an ``arch.json`` (or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / ARCH_FILE
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise ExportUsageError(f"{p} does not exist; pass a subnet directory written by "
                               "`mutualnet export`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"cannot read {p}: {e}") from None
    return SubnetArch.from_dict(d, source=str(p))


def load_subnet(path: str | os.PathLike[str], *, map_location: str = "cpu") -> SlicedSubnet:
    """Rebuild a sliced subnet from its directory (``arch.json`` + ``weights.safetensors``).

    Needs the model's code (the registry) but not the supernet's weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mutualnet.models import create_model

    root = Path(path)
    if root.is_file():
        root = root.parent
    arch = read_arch(root)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise ExportUsageError(f"{weights} is missing; the subnet directory is incomplete")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as e:
        raise ExportError(f"cannot read {weights}: {e}; re-export the subnet") from None
    with torch.device("meta"):
        skeleton = create_model(arch.model, num_classes=arch.num_classes,
                                width_range=arch.width_range, **dict(arch.model_kwargs))
    net = build_structure(skeleton, arch)
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(f"{weights} does not match {root / ARCH_FILE}: {first}") from None
    return SlicedSubnet(net.eval(), arch)
