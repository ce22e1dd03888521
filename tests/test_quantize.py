"""fp16 / int8 artifacts: the converters on small graphs, and the tiny grid end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from export.backends import make_runner
from export.errors import ExportUsageError, ManifestError
from export.manifest import load_manifest
from export.parity import collect
from export.parity_images import stored_parity_images
from export.preprocess import preprocess_images
from export.quantize import (
    activation_scales,
    convert_fp16,
    qdq_report,
    quantize_int8,
    with_activation_scales,
)
from export.runtime import SubnetRuntime
from mutualnet.cli import cli
from tests.data.deploy_fixtures import make_onnx

RNG = np.random.default_rng(0)


@pytest.fixture
def fp32_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    make_onnx(path, 1.0, 16, marker=3)
    return path


def _inputs(n: int = 32, r: int = 16) -> np.ndarray:
    return RNG.standard_normal((n, 3, r, r)).astype(np.float32)


def test_fp16_keeps_float32_io_and_computes_in_fp16(fp32_onnx: Path, tmp_path: Path) -> None:
    out = convert_fp16(fp32_onnx, tmp_path / "model.fp16.onnx")
    g = onnx.load(str(out)).graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_w = next(i for i in g.initializer if i.name.startswith("w"))
    assert conv_w.data_type == TensorProto.FLOAT16
    x = _inputs()
    ref, half = (collect(make_runner("onnxruntime", p), [x]) for p in (fp32_onnx, out))
    assert half.dtype == np.float32 and np.abs(ref - half).max() < 0.5   # logits ~1000
    assert not np.array_equal(ref, half)    # it really ran in fp16


def test_int8_is_symmetric_per_channel_qdq_on_every_conv_and_gemm_input(
        fp32_onnx: Path, tmp_path: Path) -> None:
    out = quantize_int8(fp32_onnx, tmp_path / "model.int8.onnx", _inputs(64))
    report = qdq_report(out)
    assert report.linear_nodes == 2 and report.complete, report.missing
    assert report.quantize_nodes == 2          # activations only; outputs not quantized
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [v for k, v in inits.items() if k.endswith("zero_point")]
    assert zero_points and all(v.dtype == np.int8 and not v.any() for v in zero_points)
    w_scale = next(v for k, v in inits.items() if k.startswith("w_") and k.endswith("scale"))
    assert w_scale.shape == (16,)              # one scale per output channel
    assert all(i.data_type == TensorProto.FLOAT for i in model.graph.initializer
               if i.name in ("b", "fcb"))      # biases stay float for TensorRT
    x = _inputs()
    ref, q = (collect(make_runner("onnxruntime", p), [x]) for p in (fp32_onnx, out))
    assert np.array_equal(ref.argmax(1), q.argmax(1))


def test_qdq_report_finds_an_unquantized_input(fp32_onnx: Path) -> None:
    report = qdq_report(fp32_onnx)
    assert not report.complete and len(report.missing) == 4


def test_int8_without_calibration_images_is_a_usage_error(fp32_onnx: Path,
                                                         tmp_path: Path) -> None:
    with pytest.raises(ExportUsageError, match="at least one image"):
        quantize_int8(fp32_onnx, tmp_path / "q.onnx", np.zeros((0, 3, 16, 16), np.float32))
    assert not (tmp_path / "q.onnx").exists()


# ------------------------------------------------------------------ the tiny grid

GRID = ("--widths", "0.25,1.0", "--resolutions", "24,32")


@pytest.fixture(scope="module")
def quantized(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("quant") / "export"
    res = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), *GRID, "--out", str(out),
                                   "--precision", "fp32,fp16,int8", "--no-progress"])
    return res, out


def test_every_subnet_passes_int8_and_fp16_gates_on_the_bundled_split(quantized) -> None:
    res, out = quantized
    assert res.exit_code == 0, res.output
    assert res.output.count("| int8 |") == 4 and res.output.count("| fp16 |") == 4
    m = load_manifest(out)
    for sn in m.subnets:
        assert sn.precisions == ("fp32", "fp16", "int8")
        assert sn.files["onnx_int8"].path == f"subnets/{sn.id}/model.int8.onnx"
        assert sn.files["onnx_fp16"].path == f"subnets/{sn.id}/model.fp16.onnx"
        for p, limit in (("fp16", 0.3), ("int8", 1.0)):
            rec = sn.precision_records[p]
            assert rec.parity.passed and rec.parity.images == 500
            assert rec.parity.accuracy_drop_pt is not None and rec.parity.accuracy_drop_pt <= limit
        cal = sn.precision_records["int8"].calibration
        assert cal is not None and cal["per_subnet"] and cal["resolution"] == sn.resolution
        assert cal["images"] == 256 and cal["source"] == "train"
        assert qdq_report(m.file(sn.files["onnx_int8"])).complete
    doc = json.loads((out / "parity.json").read_text())
    assert all(s["precisions"]["int8"]["passed"] for s in doc["subnets"])


def test_runtime_loads_the_precision_asked_for(quantized) -> None:
    _, out = quantized
    m = load_manifest(out)
    images = stored_parity_images(m, 16)
    assert images is not None
    with SubnetRuntime.load(out, backend="onnxruntime", precision="int8") as rt:
        assert rt.precision == "int8" and len(rt.subnets) == 4
        sn = m.subnets[0]
        rt.select(sn.id)
        got = rt.infer(images.images).logits
    pre = {**m.preprocessing.as_dict(), "resize": None}
    x = preprocess_images(images.images, pre, sn.resolution)
    want = collect(make_runner("onnxruntime", m.file(sn.files["onnx_int8"])), [x])
    fp32 = collect(make_runner("onnxruntime", m.file(sn.onnx)), [x])
    assert np.allclose(got, want, atol=1e-5) and not np.allclose(got, fp32, atol=1e-5)


def test_per_subnet_calibration_ranges_differ_between_subnets(quantized) -> None:
    """The MutualNet twist: each (w, r) has its own activation ranges, so the same tensor
    gets a different scale per subnet (calibration really is per subnet; a shared one would
    give equal scales), and another subnet's scales change the int8 result. On this ReLU6
    model most ranges saturate at 6, so they differ by a few percent only (1.06x measured)."""
    _, out = quantized
    m = load_manifest(out)
    scales = [activation_scales(m.file(sn.files["onnx_int8"])) for sn in m.subnets]
    assert len({frozenset(s) for s in scales}) == 1          # same tensors everywhere
    ratio = [max(s[k] for s in scales) / min(s[k] for s in scales) for k in scales[0]
             if k != "input"]
    assert max(ratio) > 1.02
    small, big = m.subnets[0], m.subnets[-1]
    shared = with_activation_scales(m.file(small.files["onnx_int8"]), out.parent / "s.onnx",
                                    activation_scales(m.file(big.files["onnx_int8"])))
    x = _inputs(8, small.resolution)
    own = collect(make_runner("onnxruntime", m.file(small.files["onnx_int8"])), [x])
    assert not np.allclose(own, collect(make_runner("onnxruntime", shared), [x]))


def test_runtime_without_that_precision_says_which_exist(tmp_path: Path) -> None:
    from tests.data.deploy_fixtures import make_export

    root = make_export(tmp_path / "e")
    with pytest.raises(ManifestError, match=r"no int8 subnet.*precisions: fp32"):
        SubnetRuntime.load(root, backend="onnxruntime", precision="int8")


def _strict_profile(tmp_path: Path, precisions: str) -> Path:
    """The cpu profile with an int8 agreement gate no int8 graph meets (1.0)."""
    import yaml

    from export.profiles import load_profile

    data = load_profile("cpu").to_dict()
    data.update(name="strict", precisions=precisions.split(","), int8_min_top1_agreement=1.0)
    path = tmp_path / "strict.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("explicit", [True, False])
def test_a_failed_precision_is_left_out_and_fails_the_run_only_when_asked_for(
        tiny_checkpoint: Path, tmp_path: Path, explicit: bool) -> None:
    prof = _strict_profile(tmp_path, "fp32,int8")
    out = tmp_path / "export"
    args = ["export", str(tiny_checkpoint), "--pairs", "0.25@24", "--eval-images", "200",
            "--profile", str(prof), "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(cli, args + (["--precision", "int8"] if explicit else []))
    assert res.exit_code == (1 if explicit else 0), res.output
    assert "FAIL (int8 agreement" in res.output and "< 1; left out" in res.output
    assert "left out of the manifest: w0.25-r24: int8 agreement" in res.output
    sn = load_manifest(out).subnets[0]
    assert sn.precisions == ("fp32",) and "onnx_int8" not in sn.files
    assert not (out / "subnets" / sn.id / "model.int8.onnx").exists()
    doc = json.loads((out / "parity.json").read_text())
    assert doc["subnets"][0]["precisions"]["int8"]["failed"].startswith("int8 agreement")


def test_int8_histogram_methods_give_qdq_graphs_and_unknown_is_a_usage_error(
        fp32_onnx: Path, tmp_path: Path) -> None:
    for method in ("percentile", "entropy"):
        out = quantize_int8(fp32_onnx, tmp_path / f"{method}.onnx", _inputs(16), method=method)
        assert qdq_report(out).complete, method
    with pytest.raises(ExportUsageError, match="minmax, percentile, entropy"):
        quantize_int8(fp32_onnx, tmp_path / "q.onnx", _inputs(16), method="kl")
