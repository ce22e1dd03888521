"""TFLite MobileNet v1 classifiers (TF-slim, BN folded, uint8) mapped onto the supernet.

The file is parsed with the ``tflite`` package (the FlatBuffers schema compiled for
Python). Every CONV_2D / DEPTHWISE_CONV_2D is identified by its TF-slim tensor name
(``Conv2d_0``, ``Conv2d_<i>_depthwise``, ``Conv2d_<i>_pointwise``,
``Logits/Conv2d_1c_1x1``), dequantized (``real = scale x (q - zero_point)``) and
transposed to PyTorch's layout. The BatchNorm of each conv was folded into the conv
by the converter: the folded weights go to our conv, and our BatchNorm becomes the
identity plus the folded bias (weight 1, bias = folded bias, running_mean 0,
running_var = 1 - eps, so that ``(x - 0) / sqrt(1 - eps + eps) * 1 + b = x + b``).
The 1x1 classifier conv becomes the Linear layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MissingDependencyError, MutualNetError, UsageError
from ..models.mobilenet_v1 import BLOCKS

#: TF "uint8 input, (pixel - 128) / 128" in the project's 0-1 units: (x - m) / s with
#: m = s = 128 / 255, exactly the same affine map (0.5 / 0.5 would be (pixel - 127.5) / 127.5).
TF_MEAN = 128.0 / 255.0
TF_STD = 128.0 / 255.0
_NAME = re.compile(r"(?:^|/)(Conv2d_(\d+)(?:_(depthwise|pointwise))?|Logits/Conv2d_1c_1x1)/")
_HINT = "pip install tflite  (or pip install 'mutualnet[tflite]')"


@dataclass(frozen=True)
class TFLiteConv:
    """One dequantized conv of the file, in PyTorch layout."""

    name: str  # TF-slim scope, e.g. "Conv2d_3_depthwise"
    target: str  # our module prefix, e.g. "features.3.0"
    weight: np.ndarray  # [out, in, kh, kw] (depthwise: [C, 1, kh, kw]; classifier [N, C])
    bias: np.ndarray
    stride: int
    padding: str  # "SAME" | "VALID"
    activation: str  # "RELU6" | "NONE" | ...
    depthwise: bool


@dataclass(frozen=True)
class TFLiteMobileNetV1:
    """The parsed file: convs in network order, input size, quantization of the input."""

    path: Path
    convs: tuple[TFLiteConv, ...]
    resolution: int
    input_scale: float | None
    input_zero_point: int | None

    @property
    def width(self) -> float:
        """The width multiplier: channels of the last pointwise conv / 1024."""
        last = [c for c in self.convs if c.target == f"features.{len(BLOCKS)}.1.0"]
        if not last:
            raise UsageError(f"{self.path}: no Conv2d_{len(BLOCKS)}_pointwise layer; "
                             f"not a TF-slim MobileNet v1 file")
        return round(last[0].weight.shape[0] / BLOCKS[-1][0], 4)

    @property
    def num_classes(self) -> int | None:
        head = [c for c in self.convs if c.target == "classifier"]
        return head[0].weight.shape[0] if head else None


def _tflite() -> Any:
    try:
        import tflite
    except ImportError:
        raise MissingDependencyError(f"reading TFLite files needs the tflite package: "
                                     f"{_HINT}") from None
    return tflite


def is_tflite(path: Path) -> bool:
    """True if the file carries the TFLite FlatBuffers identifier ``TFL3``."""
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[4:8] == b"TFL3"


def read_mobilenet_v1(path: Path) -> TFLiteMobileNetV1:
    """Parse and dequantize every conv of a TF-slim MobileNet v1 TFLite file."""
    tfl = _tflite()
    buf = Path(path).read_bytes()
    try:
        return _parse(tfl, buf, Path(path))
    except MutualNetError:
        raise
    except Exception as e:  # noqa: BLE001 - the flatbuffer reader raises anything
        raise UsageError(f"{path}: not a readable TFLite model ({e}); is the file "
                         f"complete?") from None


def _parse(tfl: Any, buf: bytes, path: Path) -> TFLiteMobileNetV1:
    model = tfl.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    convs = []
    for op in ops:
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            convs.append(_read_conv(tfl, model, graph, op, kind == "DEPTHWISE_CONV_2D", path,
                                    buf))
    if not convs:
        raise UsageError(f"{path}: the TFLite file has no convolutions; not a MobileNet v1")
    inp = graph.Tensors(graph.Inputs(0))
    shape = inp.ShapeAsNumpy()
    q = inp.Quantization()
    scale = float(q.ScaleAsNumpy()[0]) if q is not None and q.ScaleLength() else None
    zp = int(q.ZeroPointAsNumpy()[0]) if q is not None and q.ZeroPointLength() else None
    return TFLiteMobileNetV1(Path(path), tuple(convs), int(shape[1]), scale, zp)


def _read_conv(tfl: Any, model: Any, graph: Any, op: Any, depthwise: bool, path: Path,
               buf: bytes) -> TFLiteConv:
    w_t, b_t = graph.Tensors(op.Inputs(1)), graph.Tensors(op.Inputs(2))
    full = w_t.Name().decode()
    m = _NAME.search(full.split(";")[0])
    if m is None:
        raise UsageError(f"{path}: conv weight {full.split(';')[0]!r} has no TF-slim MobileNet "
                         f"v1 name (Conv2d_<i>_depthwise/pointwise, Logits/Conv2d_1c_1x1)")
    scope = m.group(1)
    opts = (tfl.DepthwiseConv2DOptions if depthwise else tfl.Conv2DOptions)()
    table = op.BuiltinOptions()
    opts.Init(table.Bytes, table.Pos)
    if opts.StrideH() != opts.StrideW():
        raise UsageError(f"{path}: {scope} has unequal strides; not a MobileNet v1")
    if depthwise and opts.DepthMultiplier() not in (0, 1):
        raise UsageError(f"{path}: {scope} has depth multiplier {opts.DepthMultiplier()}")
    pads = {v: k for k, v in vars(tfl.Padding).items() if not k.startswith("_")}
    acts = {v: k for k, v in vars(tfl.ActivationFunctionType).items() if not k.startswith("_")}
    weight = _dequantize(tfl, model, w_t, buf)
    bias = _dequantize(tfl, model, b_t, buf)
    if depthwise:  # [1, kh, kw, C] -> [C, 1, kh, kw]
        weight = weight.transpose(3, 0, 1, 2)
    else:  # [out, kh, kw, in] -> [out, in, kh, kw]
        weight = weight.transpose(0, 3, 1, 2)
    return TFLiteConv(scope, _target(scope), np.ascontiguousarray(weight), bias,
                      int(opts.StrideH()), pads.get(opts.Padding(), "?"),
                      acts.get(opts.FusedActivationFunction(), "?"), depthwise)


def _target(scope: str) -> str:
    if scope.startswith("Logits"):
        return "classifier"
    parts = scope.split("_")
    index = int(parts[1])
    if len(parts) == 2:
        return f"features.{index}.0"
    return f"features.{index}.{0 if parts[2] == 'depthwise' else 1}.0"


_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8,
           "INT8": np.int8, "INT16": np.int16, "INT64": np.int64}


def _dequantize(tfl: Any, model: Any, tensor: Any, buf: bytes) -> np.ndarray:
    """The tensor's constant data as float32: ``scale x (q - zero_point)`` when quantized."""
    types = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
    kind = types.get(tensor.Type(), "?")
    if kind not in _DTYPES:
        raise UsageError(f"tensor {tensor.Name().decode()!r} has unsupported type {kind}")
    b = model.Buffers(tensor.Buffer())
    if b.Offset() > 1:  # large models keep data outside the flatbuffer
        raw = np.frombuffer(buf, np.uint8, count=b.Size(), offset=b.Offset())
    else:
        raw = b.DataAsNumpy()
    if isinstance(raw, int) or raw.size == 0:
        raise UsageError(f"tensor {tensor.Name().decode()!r} has no constant data")
    shape = tuple(int(s) for s in tensor.ShapeAsNumpy())
    q = np.frombuffer(raw.tobytes(), dtype=_DTYPES[kind]).reshape(shape)
    quant = tensor.Quantization()
    if quant is None or not quant.ScaleLength():
        return q.astype(np.float32)
    scale = quant.ScaleAsNumpy().astype(np.float64)
    zero = quant.ZeroPointAsNumpy().astype(np.float64) if quant.ZeroPointLength() else 0.0
    if np.ndim(scale) and scale.size > 1:  # per-channel along the quantized dimension
        axis = quant.QuantizedDimension()
        bshape = [1] * len(shape)
        bshape[axis] = -1
        scale = scale.reshape(bshape)
        zero = np.reshape(zero, bshape) if np.ndim(zero) and np.size(zero) > 1 else zero
    else:
        scale = float(scale[0])
        zero = float(np.ravel(zero)[0]) if np.size(zero) else 0.0
    return (scale * (q.astype(np.float64) - zero)).astype(np.float32)


def state_from_tflite(parsed: TFLiteMobileNetV1, *, num_classes: int | None,
                      eps: float) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Supernet state-dict tensors (at the file's width) and notes; checks the layer options.

    ``num_classes`` 1000 with a 1001-class file drops row 0 (TF's background class).
    """
    tensors: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    strides = _expected_strides()
    for conv in parsed.convs:
        _check_options(parsed.path, conv, strides)
        if conv.target == "classifier":
            w, b = conv.weight.reshape(conv.weight.shape[0], -1), conv.bias
            if num_classes is not None and num_classes == w.shape[0] - 1:
                w, b = w[1:], b[1:]
                notes.append(f"dropped class 0 (background): {w.shape[0] + 1} -> {w.shape[0]}")
            tensors["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(w))
            tensors["classifier.bias"] = torch.from_numpy(np.ascontiguousarray(b))
            continue
        bn = conv.target[:-1] + "1"
        c = conv.weight.shape[0]
        tensors[f"{conv.target}.weight"] = torch.from_numpy(conv.weight)
        tensors[f"{bn}.weight"] = torch.ones(c)
        tensors[f"{bn}.bias"] = torch.from_numpy(conv.bias.astype(np.float32))
        tensors[f"{bn}.running_mean"] = torch.zeros(c)
        tensors[f"{bn}.running_var"] = torch.full((c,), 1.0 - eps)
    return tensors, notes


def _expected_strides() -> dict[str, int]:
    strides = {"features.0.0": 2}
    for i, (_, s) in enumerate(BLOCKS, start=1):
        strides[f"features.{i}.0.0"] = s
        strides[f"features.{i}.1.0"] = 1
    strides["classifier"] = 1
    return strides


def _check_options(path: Path, conv: TFLiteConv, strides: dict[str, int]) -> None:
    want_stride = strides.get(conv.target)
    if want_stride is None:
        raise UsageError(f"{path}: layer {conv.name} has no counterpart in mobilenet_v1 "
                         f"(stem + {len(BLOCKS)} blocks + classifier)")
    if conv.stride != want_stride:
        raise UsageError(f"{path}: {conv.name} has stride {conv.stride}, mobilenet_v1 has "
                         f"{want_stride} there")
    want_act = "NONE" if conv.target == "classifier" else "RELU6"
    if conv.activation != want_act:
        raise UsageError(f"{path}: {conv.name} uses activation {conv.activation}, "
                         f"mobilenet_v1 has {want_act} there")
    if conv.target != "classifier" and conv.weight.shape[-1] > 1 and conv.padding != "SAME":
        raise UsageError(f"{path}: {conv.name} uses {conv.padding} padding; only TF 'SAME' "
                         f"padding maps onto mobilenet_v1")


def preprocessing(parsed: TFLiteMobileNetV1) -> dict[str, Any]:
    """The input normalization these weights expect, in the project's manifest terms.

    TF resized whole images to the input size, aspect ratio not kept: ``resize_mode``
    "stretch" with resize = crop = the file's resolution.
    """
    return {"resize": parsed.resolution, "resize_mode": "stretch", "crop": parsed.resolution,
            "mean": [TF_MEAN] * 3, "std": [TF_STD] * 3, "channel_order": "RGB",
            "input_scale": 255.0, "interpolation": "bilinear", "layout": "NCHW"}

