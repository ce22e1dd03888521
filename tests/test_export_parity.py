"""The parity comparator and runners (torch, ONNX Runtime, the TensorRT hook)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export import parity
from export.errors import BackendUnavailableError, ExportUsageError, ParityError
from export.onnx_export import export_onnx
from export.parity import (
    OrtRunner,
    ParityGate,
    TorchRunner,
    available_backends,
    compare,
    make_runner,
    register_runner,
    run_parity,
)


def test_compare_reports_diff_agreement_accuracy_and_tolerance() -> None:
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.9, 0.0], [0.0, 5.0, 1.0]])
    cand = ref.copy()
    cand[2] = [0.9, 1.0, 0.0]  # flips the arg-max of image 2 (diff 0.1)
    labels = np.array([0, 2, 0, 0])
    r = compare(ref, cand, labels, gate=ParityGate(max_abs_diff=1e-4), backend="x")
    assert r.max_abs_diff == pytest.approx(0.1)
    assert r.tolerance_that_passes == pytest.approx(0.1)
    assert r.top1_agreement == 0.75
    assert r.reference_top1 == 75.0 and r.top1 == 50.0 and r.accuracy_drop_pt == 25.0
    assert not r.passed and "max_abs_diff <= 0.0001" in r.gate
    assert compare(ref, cand, labels, gate=ParityGate(max_abs_diff=0.1)).passed
    entry = r.manifest_entry()
    assert entry["passed"] is False and entry["images"] == 4 and entry["top1_agreement"] == 0.75


def test_low_precision_gate_uses_agreement_and_accuracy_drop() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 10))
    labels = ref.argmax(1)
    noisy = ref + rng.normal(scale=1e-3, size=ref.shape)
    r = compare(ref, noisy, labels, gate=ParityGate(precision="fp16"))
    assert r.max_abs_diff > 1e-4 and r.top1_agreement >= 0.99 and r.passed
    broken = ref.copy()
    broken[:10] = broken[:10, ::-1]  # 10 of 200 predictions change: 95% agreement
    r = compare(ref, broken, labels, gate=ParityGate(precision="fp16"))
    assert not r.passed and r.top1_agreement == 0.95


def test_compare_fails_on_nan_and_refuses_mismatched_shapes() -> None:
    ref = np.zeros((2, 3))
    bad = ref.copy()
    bad[0, 0] = np.nan
    r = compare(ref, bad, gate=ParityGate(max_abs_diff=1.0))
    assert not r.passed and r.manifest_entry()["max_abs_diff"] is None
    with pytest.raises(ParityError, match="cannot be compared"):
        compare(ref, np.zeros((2, 4)))


def test_torch_and_onnxruntime_runners_agree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(1),
                        nn.Linear(8 * 4 * 4, 5)).eval()
    info = export_onnx(net, 8, tmp_path / "m.onnx")
    batches = [np.random.default_rng(i).normal(size=(3, 3, 8, 8)).astype(np.float32)
               for i in range(2)]
    ref, results = run_parity(TorchRunner(net), {"onnxruntime": make_runner("onnxruntime",
                                                                              info.path)},
                              batches, np.array([0, 1, 2, 3, 4, 0]))
    assert ref.shape == (6, 5)
    r = results["onnxruntime"]
    assert r.passed and r.max_abs_diff < 1e-5 and r.images == 6 and r.reference == "pytorch"


def test_backends_and_the_tensorrt_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "onnxruntime" in available_backends()
    if not torch.cuda.is_available():
        assert available_backends(["CUDAExecutionProvider"]) == ["onnxruntime"]
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        make_runner("tensorrt", tmp_path / "x.engine")
    with pytest.raises(ExportUsageError, match="unknown backend"):
        make_runner("tflite", tmp_path / "x")
    with pytest.raises(BackendUnavailableError, match="NoSuchExecutionProvider"):
        OrtRunner(tmp_path / "x.onnx", provider="NoSuchExecutionProvider")

    class Fake:
        name = "tensorrt"

        def __init__(self, path: Path, **options: object) -> None:
            self.path = path

        def __call__(self, x: np.ndarray) -> np.ndarray:
            return np.zeros((len(x), 2), np.float32)

    monkeypatch.setattr(parity, "_FACTORIES", {})
    register_runner("tensorrt", Fake)
    runner = make_runner("tensorrt", tmp_path / "x.engine")
    assert runner(np.zeros((3, 3, 4, 4), np.float32)).shape == (3, 2)
