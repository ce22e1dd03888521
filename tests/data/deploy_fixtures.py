"""Tiny exports for the deploy-side tests, made without the export pipeline or torch.

Each subnet is a real ONNX model built with ``onnx.helper``: Conv 3x3 -> ReLU -> global
average pool -> Gemm. Its Gemm bias carries a large "marker" on one class, so every subnet
predicts its own class index whatever the input: a test can tell which subnet computed a
result from the logits alone (routing checks). Costs grow with width and resolution like a
real grid so budget selection has something to choose from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.graph_identity import identity_metadata, record_graphs
from export.manifest import file_entry, subnet_id, write_manifest
from export.profiles import load_profile

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
PREPROCESSING = {"resize": None, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                 "channel_order": "RGB", "input_scale": 255.0, "interpolation": "bilinear",
                 "layout": "NCHW"}
# (width, resolution, top1) of the default grid
GRID = ((0.25, 12, 40.0), (0.5, 12, 50.0), (0.5, 16, 55.0), (1.0, 16, 65.0))
MARKER = 1000.0
MODEL = "tiny_test"
CHECKPOINT_SHA256 = "0" * 64


def channels(width: float) -> int:
    return max(2, int(round(16 * width)))


def macs(width: float, resolution: int, num_classes: int = 10) -> int:
    c = channels(width)
    return 27 * c * resolution * resolution + c * num_classes


def make_onnx(path: Path, width: float, resolution: int, marker: int, *,
              num_classes: int = 10, seed: int = 0, metadata: dict[str, str] | None = None
              ) -> None:
    """Write a small real classifier ONNX (opset 17, dynamic batch) whose top-1 is ``marker``;
    ``metadata`` goes into its metadata_props (as the export writes the subnet's identity)."""
    rng = np.random.default_rng(seed)
    c = channels(width)
    w = numpy_helper.from_array((rng.standard_normal((c, 3, 3, 3)) * 0.2).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(c, np.float32), "b")
    fc = numpy_helper.from_array((rng.standard_normal((num_classes, c)) * 0.2).astype(np.float32),
                                 "fc")
    bias = np.zeros(num_classes, np.float32)
    bias[marker] = MARKER
    fcb = numpy_helper.from_array(bias, "fcb")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, f"tiny_w{width}_r{resolution}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, resolution, resolution])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        initializer=[w, b, fc, fcb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="mutualnet-tests")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def subnet_entry(root: Path, width: float, resolution: int, top1: float,
                 num_classes: int = 10) -> dict[str, Any]:
    sid = subnet_id(width, resolution)
    base = root / "subnets" / sid
    arch = base / "arch.json"
    arch.parent.mkdir(parents=True, exist_ok=True)
    arch.write_text(f'{{"width": {width}, "resolution": {resolution}, "channels": '
                    f'{channels(width)}}}\n')
    return {
        "id": sid, "width": width, "resolution": resolution,
        "macs": macs(width, resolution, num_classes),
        "params": channels(width) * 28 + channels(width) * num_classes + num_classes,
        "input": {"name": "input", "shape": ["N", 3, resolution, resolution], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["N", num_classes], "dtype": "float32"},
        "files": {"onnx": file_entry(root, base / "model.onnx"), "arch": file_entry(root, arch)},
        "accuracy": {"pytorch": {"top1": top1, "images": 100},
                     "onnxruntime": {"top1": top1, "images": 100}},
        "parity": {"onnxruntime": {"max_abs_diff": 1e-6, "top1_agreement": 1.0, "passed": True,
                                   "tolerance_that_passes": 1e-6, "images": 100}},
        "engines": [], "latency": {}, "status": "ok",
    }


def make_export(root: Path, grid: Sequence[tuple[float, int, float]] = GRID, *,
                profile: str = "cpu", created: str = "2026-01-01T00:00:00Z",
                graph: bool = True) -> Path:
    """Write a complete export directory (ONNX files + manifest.json); returns ``root``.

    ``graph``: as the export does, write each subnet's identity into its model.onnx's
    metadata and a ``graph`` record per subnet; False: a manifest from before those existed.
    """
    root.mkdir(parents=True, exist_ok=True)
    order = sorted(grid, key=lambda g: macs(g[0], g[1]))
    subnets = []
    for marker, (w, r, top1) in enumerate(order):
        meta = identity_metadata(subnet_id=subnet_id(w, r), width=w, resolution=r,
                                 model=MODEL, classes=CLASSES, preprocessing=PREPROCESSING,
                                 checkpoint_sha256=CHECKPOINT_SHA256) if graph else None
        make_onnx(root / "subnets" / subnet_id(w, r) / "model.onnx", w, r, marker, seed=marker,
                  metadata=meta)
        subnets.append(subnet_entry(root, w, r, top1))
    doc = {
        "schema_version": 1, "created": created, "generator": "mutualnet 0.1.0",
        "model": {"name": MODEL, "num_classes": 10, "classes": CLASSES,
                  "width_range": [0.25, 1.0], "model_kwargs": {}},
        "source_checkpoint": {"file": "checkpoint.safetensors", "sha256": CHECKPOINT_SHA256},
        "preprocessing": dict(PREPROCESSING),
        "profile": load_profile(profile).to_dict(),
        "selection": {"order": "macs", "policy": "most_accurate_within_budget"},
        "subnets": subnets,
    }
    if graph:
        record_graphs(root, doc)
    write_manifest(root, doc)
    return root


def marker_of(subnet_ids: Sequence[str], sid: str) -> int:
    """The class every input is predicted as by subnet ``sid`` (its index by MACs)."""
    return list(subnet_ids).index(sid)
