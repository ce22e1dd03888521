"""One ONNX file per subnet: opset 17, input ``input`` [N, 3, r, r], output ``logits``.

The exported model is the plain sliced model (``export.slicing``): the graph holds ordinary
Conv / Gemm nodes with the active channels, BatchNorm already folded, no weight slicing.
:func:`check_graph` enforces that (no ``BatchNormalization``, no ``Slice``, static ``Pad``
pads, a dynamic batch dimension) after ``onnx.checker``.

Exporter choice (measured by ``benchmarks/export_latency.py``, see docs/export.md): the
TorchScript-based exporter (``dynamo=False``) takes tens of milliseconds per subnet and
emits opset 17 directly; the dynamo exporter takes one to a few seconds per subnet
(``torch.export``, then an opset-18 graph converted down to 17) for the same ops. The
default is therefore ``"torchscript"``; ``"dynamo"`` stays selectable (``exporter=``) for
torch versions that drop the old exporter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mutualnet.fileio import atomic_path

from .errors import ExportError, ExportUsageError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"
#: Ops that must never appear in an exported subnet.
FORBIDDEN_OPS = frozenset({"BatchNormalization", "Slice", "Gather", "DynamicSlice"})


@dataclass(frozen=True)
class OnnxInfo:
    """What :func:`export_onnx` wrote and checked."""

    path: Path
    resolution: int
    num_classes: int
    opset: int
    exporter: str
    ops: dict[str, int] = field(default_factory=dict)
    size: int = 0


def export_onnx(model: nn.Module, resolution: int, path: str | os.PathLike[str], *,
                exporter: str = DEFAULT_EXPORTER, opset: int = OPSET,
                metadata: Mapping[str, str] | None = None) -> OnnxInfo:
    """Export ``model`` (plain, eval mode) for ``resolution`` to ``path`` atomically, then check.

    ``metadata`` goes into the model's ``metadata_props`` (the subnet's identity, see
    :func:`export.graph_identity.identity_metadata`) before the file is checked and moved
    into place, so a hash taken of ``path`` afterwards covers it. The file is written to a
    temporary name in the same directory and moved into place only after
    :func:`check_graph` accepted it.
    """
    if exporter not in EXPORTERS:
        raise ExportUsageError(f"unknown ONNX exporter {exporter!r}; use one of "
                               f"{', '.join(EXPORTERS)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, 3, resolution, resolution, device=device)
    with atomic_path(out) as tmp:
        if exporter == "torchscript":
            _export_torchscript(model, x, tmp, opset)
        else:
            _export_dynamo(model, x, tmp, opset)
        if metadata:
            write_metadata(tmp, metadata)
        ops, num_classes = check_graph(tmp, resolution)
        size = tmp.stat().st_size
    return OnnxInfo(out, resolution, num_classes, opset, exporter, ops, size)


def write_metadata(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Set ``metadata`` (key -> text) in the ONNX file's ``metadata_props``, in place."""
    import onnx

    model = onnx.load(str(path))
    keep = [e for e in model.metadata_props if e.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, str(path))


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            do_constant_folding=True, export_params=True,
        )


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    from torch.export import Dim

    with torch.no_grad(), warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, external_data=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: Dim("N", min=1, max=65536)},), optimize=True,
            verbose=False,
        )
        assert program is not None
        program.save(str(path), external_data=False)
    got = _opset(path)
    if got != opset:
        raise ExportError(f"the dynamo exporter produced opset {got}, not {opset}, for this "
                          "model (its down-conversion failed, e.g. on Pad); use the "
                          "torchscript exporter")


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporters' own prints and log warnings (progress, opset conversion)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_graph(path: str | os.PathLike[str], resolution: int | None = None
                ) -> tuple[dict[str, int], int]:
    """``onnx.checker`` plus the project's rules; returns (op counts, number of classes).

    Raises :class:`ExportError` naming the problem: a forbidden op (BatchNormalization,
    Slice, Gather), a Pad whose pads are not constant, wrong input/output names, shapes
    or types, or a batch dimension that is not dynamic.
    """
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types
        raise ExportError(f"{path}: ONNX check failed: {e}") from None
    graph = model.graph
    ops = Counter(node.op_type for node in graph.node)
    bad = sorted(set(ops) & FORBIDDEN_OPS)
    if bad:
        raise ExportError(f"{path}: the graph still contains {', '.join(bad)} nodes; the "
                          "sliced model should have folded BatchNorm and no slicing")
    _check_static_pads(graph, path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != OPSET:
        raise ExportError(f"{path}: opset {opset}, expected {OPSET}")
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != \
            [OUTPUT_NAME]:
        raise ExportError(f"{path}: expected one input {INPUT_NAME!r} and one output "
                          f"{OUTPUT_NAME!r}, got {[i.name for i in inputs]} -> "
                          f"{[o.name for o in graph.output]}")
    in_dims = _dims(inputs[0])
    out_dims = _dims(graph.output[0])
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"{path}: input must be float32")
    if len(in_dims) != 4 or not isinstance(in_dims[0], str) or in_dims[1] != 3:
        raise ExportError(f"{path}: input shape {in_dims}, expected [N, 3, r, r] with a "
                          "dynamic batch N")
    if resolution is not None and in_dims[2:] != [resolution, resolution]:
        raise ExportError(f"{path}: input shape {in_dims}, expected [N, 3, {resolution}, "
                          f"{resolution}]")
    if len(out_dims) != 2 or not isinstance(out_dims[0], str) or not isinstance(out_dims[1], int):
        raise ExportError(f"{path}: output shape {out_dims}, expected [N, classes]")
    return dict(sorted(ops.items())), int(out_dims[1])


def _opset(path: str | os.PathLike[str]) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _dims(value_info: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def _check_static_pads(graph: Any, path: str | os.PathLike[str]) -> None:
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for node in graph.node:
        if node.op_type == "Pad" and len(node.input) > 1 and node.input[1] not in constants:
            raise ExportError(f"{path}: Pad node {node.name!r} has computed pads; the sliced "
                              "model should pad with constants")


def onnx_ops(path: str | os.PathLike[str]) -> dict[str, int]:
    """Op type -> count of an ONNX file (for tests and reports)."""
    import onnx

    model = onnx.load(str(path))
    return dict(Counter(node.op_type for node in model.graph.node))
