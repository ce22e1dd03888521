"""FP16 and INT8 ONNX graphs of one subnet, as TensorRT (10 and 11, strongly typed) builds them.

- **FP16** (:func:`convert_fp16`): onnxconverter-common's ``convert_float_to_float16`` with
  ``keep_io_types=True``: weights and compute in fp16, a Cast at the input and the output,
  so the graph still takes and gives float32. Chosen over ModelOpt AutoCast because it
  installs beside the project's onnx / onnxruntime (``nvidia-modelopt[onnx]`` pins
  ``onnxruntime-gpu~=1.24`` and ``onnx 1.21`` and pulls cupy, which would downgrade the
  runtime everything else uses) and runs on any CPU; for a CNN of Conv / Relu / pool / Gemm
  both give a full fp16 graph.
- **INT8** (:func:`quantize_int8`): ONNX Runtime's ``quantize_static`` in QDQ format
  (chosen over ModelOpt's ONNX PTQ on measured accuracy, speed and environment:
  ``benchmarks/quantizer_compare.py``, docs/export.md "Which int8 quantizer"),
  TensorRT's scheme: symmetric int8 activations (one scale per tensor, zero point 0),
  symmetric per-output-channel int8 weights, Q/DQ on the inputs of every Conv and Gemm
  (and nowhere else: not on their outputs), biases kept float (TensorRT fuses them itself), MinMax ranges from the calibration images
  given: the subnet's own images at its own resolution, after its BN calibration (the
  pipeline passes them; :mod:`export.precisions`).

:func:`qdq_report` checks a graph: which Conv / Gemm inputs are not fed by a
DequantizeLinear. Torch-free (onnx + onnxruntime).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, ExportError, ExportUsageError

FP16_CONVERTER = "onnxconverter-common"
INT8_QUANTIZER = "onnxruntime.quantize_static (QDQ)"
#: activation range methods of quantize_static (``--int8-method``); minmax is the default
INT8_METHODS = ("minmax", "percentile", "entropy")
QUANTIZED_OPS = ("Conv", "Gemm")   # the linear ops TensorRT runs in int8 from Q/DQ inputs
FP16_HINT = ("fp16 ONNX conversion needs onnxconverter-common: `pip install "
             "onnxconverter-common` (or `pip install mutualnet[quant]`)")

__all__ = ["FP16_CONVERTER", "INT8_METHODS", "INT8_QUANTIZER", "QUANTIZED_OPS", "QdqReport", "convert_fp16",
           "qdq_report", "quantize_int8"]


def _write_model(model: Any, dst: Path) -> Path:
    from .manifest import atomic_write_bytes

    atomic_write_bytes(dst, model.SerializeToString())
    return dst


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write an fp16 copy of the fp32 ONNX ``src`` with float32 input and output to ``dst``."""
    import onnx

    try:
        float16 = importlib.import_module("onnxconverter_common.float16")
    except ImportError as e:
        raise BackendUnavailableError(FP16_HINT) from e
    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.checker.check_model(model)
    return _write_model(model, Path(dst))


class _Batches:
    """ONNX Runtime's CalibrationDataReader over float32 NCHW batches."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self._name = input_name
        self._batches = list(batches)
        self._it: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self._name: np.ascontiguousarray(x, np.float32)}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _split(images: np.ndarray | Sequence[np.ndarray], batch: int) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        return [images[i:i + batch] for i in range(0, len(images), batch)]
    return [b for x in images for b in _split(np.asarray(x), batch)]


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                  calibration: np.ndarray | Sequence[np.ndarray], *,
                  batch: int = 64, method: str = "minmax") -> Path:
    """Write the Q/DQ int8 graph of the fp32 ONNX ``src`` to ``dst``, with activation ranges
    from ``calibration`` (float32 NCHW at the subnet's resolution, preprocessed as the
    subnet expects; an array or a list of batches) by ``method`` (:data:`INT8_METHODS`:
    minmax, or ONNX Runtime's histogram methods percentile (99.999 %) and entropy)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in INT8_METHODS:
        raise ExportUsageError(f"unknown int8 calibration method {method!r}; use one of "
                               f"{', '.join(INT8_METHODS)}")
    batches = [b for b in _split(calibration, batch) if len(b)]
    if not batches:
        raise ExportUsageError("int8 calibration needs at least one image; give calibration "
                               "images (e.g. --calib-images N) or drop int8 from --precision")
    model = onnx.load(str(src))
    reader = _Batches(model.graph.input[0].name, batches)
    # Q/DQ on Conv / Gemm *inputs* only (TensorRT's placement): quantizing their outputs
    # too (ORT's default) re-quantizes pre-activations and the logits; on the tiny grid that
    # took the max logit error from 0.16 to 2.05 and agreement from 0.97 to 0.82
    options = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
               "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)}
    with tempfile.TemporaryDirectory(prefix="mutualnet-int8-") as tmp:
        out = Path(tmp) / "model.int8.onnx"
        try:
            quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=_METHODS[method](CalibrationMethod),
                            extra_options=options)
        except Exception as e:  # noqa: BLE001 - ORT raises many kinds
            raise ExportError(f"int8 quantization of {src} failed: {str(e).splitlines()[0]}; "
                              "export without int8 or report the model") from None
        quantized = onnx.load(str(out))
    return _write_model(quantized, Path(dst))


_METHODS = {"minmax": lambda c: c.MinMax, "percentile": lambda c: c.Percentile,
            "entropy": lambda c: c.Entropy}


@dataclass(frozen=True)
class QdqReport:
    """Q/DQ coverage of a graph: linear nodes and their inputs without a DequantizeLinear."""

    linear_nodes: int
    quantize_nodes: int
    dequantize_nodes: int
    missing: tuple[str, ...]    # "node_name:input_index" not fed by DequantizeLinear

    @property
    def complete(self) -> bool:
        return self.linear_nodes > 0 and not self.missing


def qdq_report(path: str | os.PathLike[str]) -> QdqReport:
    """Which data and weight inputs of the Conv / Gemm nodes of ``path`` lack a DQ in front."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    linear = [n for n in graph.node if n.op_type in QUANTIZED_OPS]
    missing = tuple(f"{n.name or n.op_type}:{i}" for n in linear for i in (0, 1)
                    if producer.get(n.input[i]) != "DequantizeLinear")
    ops = [n.op_type for n in graph.node]
    return QdqReport(len(linear), ops.count("QuantizeLinear"), ops.count("DequantizeLinear"),
                     missing)


def activation_scales(path: str | os.PathLike[str]) -> dict[str, float]:
    """The per-tensor activation scales of a Q/DQ graph, by QuantizeLinear input tensor."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    return {n.input[0]: float(numpy_helper.to_array(inits[n.input[1]]))
            for n in graph.node if n.op_type == "QuantizeLinear" and n.input[1] in inits}


def with_activation_scales(path: str | os.PathLike[str], dst: str | os.PathLike[str],
                           scales: dict[str, float]) -> Path:
    """Copy of the Q/DQ graph ``path`` whose activation scales are replaced by ``scales``
    (by tensor name; others kept): one calibration shared across subnets, which is what
    per-subnet calibration is measured against (the subnets of one supernet share tensor
    names, not ranges)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        tensor = node.input[0] if node.op_type == "QuantizeLinear" else \
            next((q.input[0] for q in model.graph.node if q.op_type == "QuantizeLinear"
                  and q.output[0] == node.input[0]), None)
        if tensor in scales and node.input[1] in inits:
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(
                np.asarray(scales[tensor], np.float32), node.input[1]))
    return _write_model(model, Path(dst))
