"""What an ONNX graph is, read from the graph itself: input, classes, MACs, parameters.

A manifest names each subnet's ONNX file by path, sha256 and size. Those say that the
file did not change since the manifest was (re)written, not which subnet the file holds:
a w1.00-r24 model copied over w0.25-r24 with its hash updated used to be served as
w0.25-r24. :func:`read_graph_identity` computes the identity from the graph alone (a
shape walk over the nodes, never a run), :func:`graph_record` is what the export records
per subnet (``"graph"`` in manifest.json), and :func:`check_graph_identity` (called by
``load_manifest`` when it verifies files, so by ``mutualnet verify`` and
``SubnetRuntime.load``) recomputes it for every subnet and refuses a mismatch.

Counting follows ``mutualnet.flops`` so that the graph's numbers equal the manifest's
analytic ``macs`` and ``params`` for an exported subnet:

- MACs: Conv (``out_h * out_w * out_ch * k_h * k_w * in_ch / groups``, so grouped and
  depthwise convs too), Gemm and MatMul (``in * out`` per row), average pooling
  (AveragePool, GlobalAveragePool, ReduceMean: one per input element it averages).
  Activations, additions, BN affines and max pooling count no MACs.
- Parameters: Conv / Gemm / MatMul weights and Gemm biases; a Conv bias counts twice per
  channel, because in an exported subnet it is a BatchNorm folded into the conv (its
  scale and shift: mutualnet's models have bias-free convs, ``export.slicing`` gives a
  conv a bias only when it folds a BN); per-channel constants of Mul / Add / Sub / Div
  (an unfoldable BN kept as ``x * scale + shift``). Scalars are not parameters.

The file is read by :mod:`export.onnxproto` (protobuf's wire format, without the onnx
package, whose import alone takes seconds on a small device): weights are skipped, only
their ``dims`` are read (the values of small tensors such as Pad's pads are). ONNX
metadata (``metadata_props``) keys that start with ``mutualnet.`` are returned too; the
export writes the subnet's identity there.

Torch-free and onnx-free: this module runs on the device.
"""

from __future__ import annotations

import json
import mmap
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError, ManifestError
from .onnxproto import Graph, Node, ProtoError, parse_model

__all__ = ["META_PREFIX", "GraphIdentity", "check_graph_identity", "graph_record",
           "identity_differences", "identity_metadata", "read_graph_identity", "record_graphs"]

META_PREFIX = "mutualnet."
#: Parameters per channel of a Conv bias: a folded BatchNorm's scale and shift.
FOLDED_BIAS_PARAMS = 2
Dim = int | str
Shape = tuple[Dim, ...]
_UNARY = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu",
                    "Elu", "Selu", "PRelu", "Softmax", "LogSoftmax", "Dropout", "Cast", "Neg",
                    "Abs", "Exp", "Log", "Sqrt", "Erf", "Gelu", "Mish", "Softplus", "Identity"})
_BINARY = frozenset({"Add", "Mul", "Sub", "Div", "Max", "Min", "Pow", "Sum"})
_AFFINE = frozenset({"Add", "Mul", "Sub", "Div"})


@dataclass(frozen=True)
class GraphIdentity:
    """What one ONNX graph is. ``input_shape`` keeps a symbolic batch dimension as text."""

    input_name: str
    input_shape: Shape
    output_name: str
    classes: int
    macs: int
    params: int
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def resolution(self) -> int | None:
        """R of an ``[N, 3, R, R]`` input, else None."""
        s = self.input_shape
        ok = len(s) == 4 and s[1] == 3 and isinstance(s[2], int) and s[2] == s[3]
        return int(s[2]) if ok else None

    def record(self) -> dict[str, Any]:
        """The manifest's ``graph`` record of a subnet."""
        return {"input_name": self.input_name, "input_shape": list(self.input_shape),
                "output_name": self.output_name, "classes": self.classes, "macs": self.macs,
                "params": self.params}


# ----------------------------------------------------------------------------- the walk

class _Walk:
    """Shapes, small constants and the running counts while visiting nodes in order."""

    def __init__(self, graph: Graph, source: str) -> None:
        self.source = source
        self.weights: dict[str, Shape] = {t.name: t.dims for t in graph.initializers}
        self.shapes: dict[str, Shape] = dict(self.weights)
        self.values: dict[str, np.ndarray] = {t.name: t.value for t in graph.initializers
                                              if t.value is not None}
        self.macs = 0
        self.params = 0

    def fail(self, node: Node, why: str) -> ManifestError:
        return ManifestError(f"{self.source}: cannot compute the graph identity at "
                             f"{node.op_type} node {node.name or node.outputs[0]!r}: {why}; "
                             "this is not a graph `mutualnet export` writes: re-export it")

    def shape(self, node: Node, i: int) -> Shape:
        if i >= len(node.inputs) or node.inputs[i] not in self.shapes:
            raise self.fail(node, f"input {i} has no known shape")
        return self.shapes[node.inputs[i]]

    def value(self, node: Node, i: int) -> np.ndarray:
        name = node.inputs[i] if i < len(node.inputs) else ""
        if name not in self.values:
            raise self.fail(node, f"input {i} is not a constant")
        return self.values[name]

    def spatial(self, node: Node, x: Shape) -> tuple[int, ...]:
        dims = x[2:]
        if len(x) < 3 or not all(isinstance(d, int) for d in dims):
            raise self.fail(node, f"input shape {list(x)} has no static spatial size")
        return tuple(int(d) for d in dims)


def _numel(shape: Sequence[Dim]) -> int:
    n = 1
    for d in shape:
        n *= int(d) if isinstance(d, int) else 1
    return n


def _broadcast(shapes: Iterable[Shape]) -> Shape:
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        named = [d for d in dims if isinstance(d, str)]
        ints = [d for d in dims if isinstance(d, int) and d != 1]
        out.append(named[0] if named else (max(ints) if ints else 1))
    return tuple(out)


def _window(size: int, k: int, s: int, d: int, pad: int, ceil: bool = False) -> int:
    span = size + pad - d * (k - 1) - 1
    return (-(-span // s) if ceil else span // s) + 1


def _pool_out(w: _Walk, node: Node, x: Shape, a: Mapping[str, Any],
              kernel: Sequence[int]) -> Shape:
    hw = w.spatial(node, x)
    if a.get("auto_pad", "NOTSET") != "NOTSET":
        raise w.fail(node, "auto_pad is not supported; export with explicit pads")
    n = len(hw)
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    pads = list(a.get("pads", [0] * (2 * n)))
    ceil = bool(a.get("ceil_mode", 0))
    out = [_window(hw[i], kernel[i], strides[i], dil[i], pads[i] + pads[i + n], ceil)
           for i in range(n)]
    return (*x[:2], *out)


def _conv(w: _Walk, node: Node) -> Shape:
    x, k = w.shape(node, 0), w.shape(node, 1)
    if node.inputs[1] not in w.weights:
        raise w.fail(node, "its weight is not an initializer")
    a = node.attrs
    out = _pool_out(w, node, x, a, list(a.get("kernel_shape", k[2:])))
    y = (x[0], k[0], *out[2:])
    w.macs += _numel(y[1:]) * _numel(k[1:])
    w.params += _numel(k)
    if len(node.inputs) > 2 and node.inputs[2]:
        w.params += FOLDED_BIAS_PARAMS * _numel(w.shape(node, 2))
    return y


def _gemm(w: _Walk, node: Node) -> Shape:
    a, b = w.shape(node, 0), w.shape(node, 1)
    at = node.attrs
    if len(a) != 2 or len(b) != 2:
        raise w.fail(node, "Gemm needs 2-d inputs")
    k_in = a[0] if at.get("transA", 0) else a[1]
    n_out = b[0] if at.get("transB", 0) else b[1]
    w.macs += _numel((k_in, n_out))
    w.params += _numel(b) if node.inputs[1] in w.weights else 0
    if len(node.inputs) > 2 and node.inputs[2] in w.weights:
        w.params += _numel(w.shape(node, 2))
    return (a[1] if at.get("transA", 0) else a[0], n_out)


def _matmul(w: _Walk, node: Node) -> Shape:
    a, b = w.shape(node, 0), w.shape(node, 1)
    if len(b) != 2 or len(a) < 2:
        raise w.fail(node, "MatMul needs a 2-d weight and an input of rank >= 2")
    w.macs += _numel(a[1:]) * _numel(b[1:])
    w.params += _numel(b) if node.inputs[1] in w.weights else 0
    return (*a[:-1], b[1])


def _affine(w: _Walk, node: Node) -> Shape:
    shapes = [w.shape(node, i) for i in range(len(node.inputs))]
    for name, s in zip(node.inputs, shapes, strict=True):
        if name in w.weights and _numel(s) > 1:
            w.params += _numel(s)
    return _broadcast(shapes)


def _avgpool(w: _Walk, node: Node) -> Shape:
    x = w.shape(node, 0)
    a = node.attrs
    y = _pool_out(w, node, x, a, list(a["kernel_shape"]))
    w.macs += _numel(y[1:]) * _numel(a["kernel_shape"])
    return y


def _maxpool(w: _Walk, node: Node) -> Shape:
    a = node.attrs
    return _pool_out(w, node, w.shape(node, 0), a, list(a["kernel_shape"]))


def _global_pool(w: _Walk, node: Node) -> Shape:
    x = w.shape(node, 0)
    if node.op_type == "GlobalAveragePool":
        w.macs += _numel(x[1:])
    return (*x[:2], *([1] * len(w.spatial(node, x))))


def _reduce_mean(w: _Walk, node: Node) -> Shape:
    x = w.shape(node, 0)
    a = node.attrs
    axes = a.get("axes") or (list(w.value(node, 1)) if len(node.inputs) > 1 else
                             list(range(len(x))))
    axes = sorted(int(i) % len(x) for i in axes)
    if 0 in axes:
        raise w.fail(node, "it reduces over the batch")
    w.macs += _numel(x[1:])
    keep = a.get("keepdims", 1)
    return tuple((1 if i in axes else d) for i, d in enumerate(x) if keep or i not in axes)


def _flatten(w: _Walk, node: Node) -> Shape:
    x = w.shape(node, 0)
    axis = int(node.attrs.get("axis", 1)) % max(1, len(x))
    return (x[0] if axis == 1 else _numel(x[:axis]), _numel(x[axis:]))


def _reshape(w: _Walk, node: Node) -> Shape:
    x, target = w.shape(node, 0), [int(v) for v in w.value(node, 1)]
    out: list[Dim] = [x[i] if v == 0 else v for i, v in enumerate(target)]
    if -1 in out:
        i = out.index(-1)
        known = _numel([d for j, d in enumerate(out) if j != i])
        if not isinstance(x[0], str) or any(isinstance(d, str) for d in out):
            out[i] = _numel(x) // max(1, known)
        elif known == _numel(x):
            out[i] = x[0]       # -1 stands for the (symbolic) batch
        else:
            raise w.fail(node, "it folds the batch into another dimension")
    return tuple(out)


def _unsqueeze(w: _Walk, node: Node) -> Shape:
    x = w.shape(node, 0)
    axes = node.attrs.get("axes") or [int(v) for v in w.value(node, 1)]
    out: list[Dim] = list(x)
    if node.op_type == "Squeeze":
        drop = {int(i) % len(x) for i in axes}
        return tuple(d for i, d in enumerate(x) if i not in drop)
    for i in sorted(int(i) % (len(x) + len(axes)) for i in axes):
        out.insert(i, 1)
    return tuple(out)


def _pad(w: _Walk, node: Node) -> Shape:
    x = w.shape(node, 0)
    pads = node.attrs.get("pads") or [int(v) for v in w.value(node, 1)]
    n = len(x)
    return tuple(d + pads[i] + pads[i + n] if isinstance(d, int) else d
                 for i, d in enumerate(x))


def _concat(w: _Walk, node: Node) -> Shape:
    shapes = [w.shape(node, i) for i in range(len(node.inputs))]
    axis = int(node.attrs["axis"]) % len(shapes[0])
    total = sum(int(s[axis]) for s in shapes)
    return (*shapes[0][:axis], total, *shapes[0][axis + 1:])


def _transpose(w: _Walk, node: Node) -> Shape:
    x = w.shape(node, 0)
    perm = node.attrs.get("perm") or list(reversed(range(len(x))))
    return tuple(x[int(p)] for p in perm)


_SHAPERS: dict[str, Callable[[_Walk, Any], Shape]] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "AveragePool": _avgpool,
    "MaxPool": _maxpool, "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool,
    "ReduceMean": _reduce_mean, "Flatten": _flatten, "Reshape": _reshape, "Pad": _pad,
    "Squeeze": _unsqueeze, "Unsqueeze": _unsqueeze, "Concat": _concat, "Transpose": _transpose,
    **{op: _affine for op in _AFFINE},
}


def _visit(w: _Walk, node: Node) -> None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        raise w.fail(node, f"operator domain {node.domain!r} is not understood")
    if op == "Constant":
        value = node.attrs.get("value")
        if value is None:
            raise w.fail(node, "only tensor constants are understood")
        if value.value is not None:
            w.values[node.outputs[0]] = value.value
        w.shapes[node.outputs[0]] = value.dims
        return
    if op == "Identity":
        src, dst = node.inputs[0], node.outputs[0]
        if src in w.weights:
            w.weights[dst] = w.weights[src]
        if src in w.values:
            w.values[dst] = w.values[src]
        w.shapes[dst] = w.shape(node, 0)
        return
    if op in _SHAPERS:
        out = _SHAPERS[op](w, node)
    elif op in _UNARY:
        out = w.shape(node, 0)
    elif op in _BINARY:
        out = _broadcast([w.shape(node, i) for i in range(len(node.inputs))])
    else:
        raise w.fail(node, "the operator is not known to export/graph_identity.py")
    w.shapes[node.outputs[0]] = out


# ----------------------------------------------------------------------------- reading

def _load(path: Path) -> tuple[Graph, dict[str, str]]:
    """Parse ``path`` through a read-only mmap: the pages of the weights are never read."""
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if \
                os.fstat(f.fileno()).st_size else b""
    except (OSError, ValueError) as e:
        raise ManifestError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    try:
        model = parse_model(data)
    except ProtoError as e:
        raise ManifestError(f"{path} is not an ONNX model ({e}); re-copy or re-export it") \
            from None
    if not model.graph.nodes:
        raise ManifestError(f"{path} holds no ONNX graph; re-copy or re-export it")
    return model.graph, model.metadata


def read_graph_identity(path: str | os.PathLike[str]) -> GraphIdentity:
    """The identity of the ONNX graph in ``path`` (one input, one output: a classifier)."""
    p = Path(path)
    graph, metadata = _load(p)
    weights = {t.name for t in graph.initializers}
    inputs = [i for i in graph.inputs if i.name not in weights]
    if len(inputs) != 1 or len(graph.outputs) != 1:
        raise ManifestError(f"{p}: expected one input and one output, got "
                            f"{[i.name for i in inputs]} -> {[o.name for o in graph.outputs]}; "
                            "this is not a subnet `mutualnet export` wrote")
    walk = _Walk(graph, str(p))
    walk.shapes[inputs[0].name] = inputs[0].shape
    for node in graph.nodes:
        _visit(walk, node)
    out = walk.shapes.get(graph.outputs[0].name)
    if out is None or len(out) != 2 or not isinstance(out[1], int):
        raise ManifestError(f"{p}: output shape {out} is not [N, classes]; this is not a "
                            "classifier `mutualnet export` wrote")
    meta = {k: v for k, v in metadata.items() if k.startswith(META_PREFIX)}
    return GraphIdentity(inputs[0].name, inputs[0].shape, graph.outputs[0].name, int(out[1]),
                         walk.macs, walk.params, meta)


def graph_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``graph`` record the export writes into a subnet's manifest entry."""
    return read_graph_identity(path).record()


# ----------------------------------------------------------------------------- export side

def identity_metadata(*, subnet_id: str, width: float, resolution: int, model: str,
                      classes: Sequence[str], preprocessing: Mapping[str, Any],
                      checkpoint_sha256: str) -> dict[str, str]:
    """The ``metadata_props`` the export writes into a subnet's model.onnx: who it is, so a
    copied file still says so (``mutualnet.subnet_id``, ``.width``, ``.resolution``,
    ``.model``, ``.num_classes``, ``.classes``, ``.preprocessing``,
    ``.source_checkpoint_sha256``; lists and objects as JSON)."""
    values: dict[str, Any] = {
        "subnet_id": subnet_id, "width": repr(float(width)), "resolution": int(resolution),
        "model": model, "num_classes": len(classes),
        "classes": json.dumps(list(classes), ensure_ascii=False),
        "preprocessing": json.dumps(dict(preprocessing), sort_keys=True),
        "source_checkpoint_sha256": checkpoint_sha256,
    }
    return {META_PREFIX + k: str(v) for k, v in values.items()}


def record_graphs(root: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    """Add the ``graph`` record to every subnet of the manifest document ``doc`` (files
    relative to ``root``); ExportError if a graph contradicts its entry (so the export never
    writes a manifest that ``verify`` refuses)."""
    num_classes, names = int(doc["model"]["num_classes"]), doc["model"]["classes"]
    if len(names) != num_classes:
        raise ExportError(f"the checkpoint names {len(names)} classes but the model has "
                          f"{num_classes} outputs; pass --data with the data the model was "
                          "trained on")
    for sn in doc["subnets"]:
        ident = read_graph_identity(Path(root) / sn["files"]["onnx"]["path"])
        diffs = identity_differences(sn, ident, num_classes=num_classes,
                                     checkpoint_sha256=doc["source_checkpoint"]["sha256"])
        if diffs:
            raise ExportError(f"subnet {sn['id']}: the exported graph contradicts its "
                              f"manifest entry ({'; '.join(diffs)}); this is a bug, please "
                              "report it")
        sn["graph"] = ident.record()


# ----------------------------------------------------------------------------- checking

def _fmt_shape(shape: Sequence[Any]) -> str:
    return "x".join(str(d) for d in shape)


def identity_differences(sn: Mapping[str, Any], ident: GraphIdentity, *, num_classes: int,
                         checkpoint_sha256: str | None = None) -> list[str]:
    """What differs between a subnet entry of a manifest and the graph its ONNX file holds."""
    diffs: list[str] = []
    meta_id = ident.metadata.get(META_PREFIX + "subnet_id")
    if meta_id is not None and meta_id != sn["id"]:
        diffs.append(f"its ONNX metadata names subnet {meta_id}")
    meta_sha = ident.metadata.get(META_PREFIX + "source_checkpoint_sha256")
    if meta_sha is not None and checkpoint_sha256 is not None and meta_sha != checkpoint_sha256:
        diffs.append(f"its ONNX metadata names checkpoint {meta_sha[:12]}..., the manifest "
                     f"{checkpoint_sha256[:12]}...")
    r = int(sn["resolution"])
    if ident.resolution != r:
        diffs.append(f"input {_fmt_shape(ident.input_shape)}, the entry's resolution is {r}")
    if ident.input_name != sn["input"]["name"]:
        diffs.append(f"input {ident.input_name!r}, the entry says {sn['input']['name']!r}")
    if ident.classes != num_classes:
        diffs.append(f"{ident.classes} output classes, the model has {num_classes}")
    recorded = sn.get("graph")
    if isinstance(recorded, Mapping):
        now = ident.record()
        for key, label in (("macs", "MACs"), ("params", "params"), ("output_name", "output")):
            if recorded.get(key) != now[key]:
                diffs.append(f"{label} {now[key]}, recorded {recorded.get(key)}")
    return diffs


def check_graph_identity(doc: Mapping[str, Any], resolve: Callable[[str], Path], *,
                         source: str = "<manifest>") -> None:
    """Recompute every subnet's graph identity and compare it with its manifest entry.

    ``resolve`` maps a manifest-relative path to the file (``manifest.safe_path``). Raises
    :class:`ManifestError` naming the subnet and what differs. A manifest written before
    graph records existed is checked for what needs no record (metadata id, input
    resolution, classes) and a warning says MACs and parameters were not compared.
    """
    model = doc["model"]
    num_classes, names = int(model["num_classes"]), list(model["classes"])
    if len(names) != num_classes:
        raise ManifestError(f"{source}: model.classes lists {len(names)} names but the model "
                            f"has {num_classes} classes; re-export, or fix the class list")
    sha = doc["source_checkpoint"]["sha256"]
    unrecorded = []
    for sn in doc["subnets"]:
        rel = sn["files"]["onnx"]["path"]
        try:
            ident = read_graph_identity(resolve(rel))
        except ManifestError as e:
            raise ManifestError(f"{source}: subnet {sn['id']}: {e}") from None
        diffs = identity_differences(sn, ident, num_classes=num_classes, checkpoint_sha256=sha)
        if diffs:
            raise ManifestError(f"{source}: subnet {sn['id']}: {rel} is not the graph the "
                                f"manifest describes ({'; '.join(diffs)}): a stale or copied "
                                "file; re-export, or copy the right model.onnx")
        if "graph" not in sn:
            unrecorded.append(sn["id"])
    if unrecorded:
        warnings.warn(f"{source} records no graph identity for {', '.join(unrecorded)} "
                      "(written before graph records existed): their MACs and parameters "
                      "were not compared with the ONNX graphs; re-export to record them",
                      stacklevel=3)
