"""The parity comparator and gate, and the runners (torch, ONNX Runtime, TensorRT hook)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.backends import make_runner
from export.backends.onnxruntime import OrtRunner, available_backends
from export.errors import BackendUnavailableError, ExportUsageError, ParityError
from export.onnx_export import export_onnx
from export.parity import ParityGate, compare, run_parity
from export.profiles import load_profile
from export.torch_runner import TorchRunner


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
    assert not r.passed and "max_abs_diff <= 0.0001" in r.gate and "finite" in r.gate
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


def test_backends_and_the_tensorrt_hook(tmp_path: Path) -> None:
    assert "onnxruntime" in available_backends()
    if not torch.cuda.is_available():
        assert available_backends(["CUDAExecutionProvider"]) == ["onnxruntime"]
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        make_runner("tensorrt", tmp_path / "x.engine")
    with pytest.raises(ExportUsageError, match="unknown backend"):
        make_runner("tflite", tmp_path / "x")
    with pytest.raises(BackendUnavailableError, match="NoSuchExecutionProvider"):
        OrtRunner(tmp_path / "x.onnx", providers=["NoSuchExecutionProvider"])


def test_gate_from_profile_fails_nonfinite_even_in_low_precision() -> None:
    gate = ParityGate.from_profile(load_profile("server-a100"))     # fp16: agreement gate
    assert gate.precision == "fp16" and gate.min_top1_agreement == 0.99
    ref = np.eye(4, dtype=np.float32)
    inf = ref.copy()
    inf[0, 0] = np.inf                    # arg-max unchanged: agreement alone would pass
    r = compare(ref, inf, gate=gate)
    assert r.top1_agreement == 1.0 and not r.passed and not r.finite
    assert compare(ref, ref, gate=gate).passed


def test_ort_runner_cpu_fallback_is_a_parameter(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Parity refuses a session that fell back to the CPU; the runtime allows it."""
    import onnxruntime as ort

    net = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 4 * 4, 2)).eval()
    path = export_onnx(net, 4, tmp_path / "m.onnx").path
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["FakeExecutionProvider", "CPUExecutionProvider"])
    providers = ["FakeExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="fell back"):
        OrtRunner(path, providers=providers, allow_cpu_fallback=False)
    runner = OrtRunner(path, providers=providers, allow_cpu_fallback=True, threads=1)
    assert runner.providers[0] == "CPUExecutionProvider"
    assert runner.run(np.zeros((3, 3, 4, 4), np.float32)).shape == (3, 2)


def test_ort_threads_default_to_the_cores_this_process_may_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from export.backends import default_threads

    assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})    # pinned to one core
    assert default_threads() == 1
    net = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 4 * 4, 2)).eval()
    path = export_onnx(net, 4, tmp_path / "m.onnx").path
    runner = OrtRunner(path)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    assert OrtRunner(path, threads=2).session.get_session_options().intra_op_num_threads == 2
