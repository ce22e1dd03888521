"""ONNX export of sliced subnets: graph rules, dynamic batch, ONNX Runtime == PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.errors import ExportError, ExportUsageError
from export.onnx_export import FORBIDDEN_OPS, check_graph, export_onnx
from export.slicing import slice_subnet
from mutualnet.calibrate import calibrate_bn
from mutualnet.data import DataSpec, load_data, resize_to
from mutualnet.models import create_model


@pytest.fixture(scope="module")
def calib_data():
    return load_data(DataSpec(max_images=32), "train")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    data = load_data(DataSpec(max_images=16), "val")
    return next(data.batches(16, augment=False, shuffle=False))[0]


def _sliced(name: str, width: float, resolution: int, data, **kwargs):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kwargs)
    calibrate_bn(model, width, resolution, data, num_images=32, batch_size=32)
    return model, slice_subnet(model, width, resolution, model_kwargs=kwargs)


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


CASES = [("tiny_mobilenet", {}, 0.5, 24), ("mobilenet_v1", {}, 0.25, 64),
         ("mobilenet_v1", {"padding": "tf_same"}, 0.5, 64), ("mobilenet_v2", {}, 0.7, 64),
         ("wrn", {"depth": 10, "widen_factor": 1}, 0.9, 32)]


@pytest.mark.parametrize(("name", "kwargs", "width", "resolution"), CASES,
                         ids=[f"{c[0]}{'-tf_same' if c[1].get('padding') else ''}"
                              f"-{c[2]}@{c[3]}" for c in CASES])
def test_onnx_matches_pytorch_and_has_no_bn_or_slicing(tmp_path: Path, name, kwargs, width,
                                                       resolution, calib_data, images) -> None:
    model, sliced = _sliced(name, width, resolution, calib_data, **kwargs)
    info = export_onnx(sliced.module, resolution, tmp_path / "model.onnx")
    graph = onnx.load(str(info.path))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & FORBIDDEN_OPS, ops
    assert "BatchNormalization" not in ops and "Slice" not in ops
    assert "Conv" in ops and "Gemm" in ops
    assert info.opset == 17 and graph.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, resolution, resolution]
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert info.num_classes == 10
    if kwargs.get("padding") == "tf_same":
        assert "Pad" in ops  # static: check_graph verified the pads are constants
    if name == "wrn":
        assert "Mul" in ops and "Add" in ops  # pre-activation BN as a per-channel affine
    x = resize_to(images, resolution)
    for batch in (1, 5):  # dynamic batch
        with torch.no_grad(), model.subnet(width):
            ref = model(x[:batch]).numpy()
        got = _ort(info.path, x[:batch])
        assert got.shape == (batch, 10)
        assert np.abs(got - ref).max() <= 1e-4
        assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_graph_rules(tmp_path: Path, calib_data, images) -> None:
    model, sliced = _sliced("tiny_mobilenet", 0.25, 20, calib_data)
    info = export_onnx(sliced.module, 20, tmp_path / "d.onnx", exporter="dynamo")
    assert info.exporter == "dynamo" and info.opset == 17
    x = resize_to(images, 20)
    with torch.no_grad():
        ref = sliced.module(x).numpy()
    assert np.abs(_ort(info.path, x) - ref).max() <= 1e-5
    _, padded = _sliced("mobilenet_v1", 0.25, 64, calib_data, padding="tf_same")
    with pytest.raises(ExportError, match="use the torchscript exporter"):
        export_onnx(padded.module, 64, tmp_path / "p.onnx", exporter="dynamo")
    assert not (tmp_path / "p.onnx").exists()


def test_check_graph_rejects_batchnorm_and_leaves_no_file(tmp_path: Path) -> None:
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(1), nn.Linear(3 * 8 * 8, 4)).eval()
    target = tmp_path / "bn.onnx"
    with pytest.raises(ExportError, match="BatchNormalization"):
        export_onnx(net, 8, target)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, nothing at target


def test_check_graph_rejects_a_fixed_batch(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(1), nn.Linear(4 * 6 * 6, 2)).eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"])
    with pytest.raises(ExportError, match="dynamic batch"):
        check_graph(path, 8)
    with pytest.raises(ExportError, match="ONNX check failed"):
        (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
        check_graph(tmp_path / "junk.onnx")


def test_unknown_exporter_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ExportUsageError, match="unknown ONNX exporter"):
        export_onnx(nn.Linear(2, 2), 8, tmp_path / "x.onnx", exporter="magic")
