"""TensorRT side: trtexec script, engine parity gates, FP16 ONNX conversion, no-TensorRT exit;
and (marked ``tensorrt``: run where tensorrt imports and a GPU exists) real engine builds."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "data"))
from deploy_fixtures import make_export, marker_of  # noqa: E402

from export.backends.tensorrt import engine_relpath, trtexec_script  # noqa: E402
from export.errors import BackendUnavailableError, ExportUsageError  # noqa: E402
from export.manifest import load_manifest  # noqa: E402
from export.parity_images import load_parity_images  # noqa: E402
from export.profiles import load_profile, profile_from_dict  # noqa: E402
from export.tensorrt_build import engine_parity  # noqa: E402
from mutualnet.cli import cli  # noqa: E402

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
IDS = ["w0.25-r12", "w0.50-r12", "w0.50-r16", "w1.00-r16"]


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return make_export(tmp_path / "export")


# ------------------------------------------------------------------ trtexec script

def test_trtexec_script_tensorrt10_dla(export_dir: Path) -> None:
    """The AGX Orin DLA profile's trtexec lines build each subnet's Q/DQ model.int8.onnx,
    strongly typed with no precision flag, on DLA core 0 with GPU fallback."""
    _add_precision_files(export_dir, ("int8",))
    prof = load_profile("jetson-agx-orin")
    text = trtexec_script(load_manifest(export_dir), prof)
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert text.count('"$TRTEXEC"') == 4 and text.count("/model.int8.onnx") == 4
    assert text.count("--stronglyTyped") == 4
    for flag in ("--onnx=subnets/w0.25-r12/model.int8.onnx",
                 "--saveEngine=engines/jetson-agx-orin/w0.25-r12.int8.dla0.plan",
                 "--minShapes=input:1x3x12x12", "--optShapes=input:1x3x12x12",
                 "--maxShapes=input:1x3x12x12",
                 "--timingCacheFile=engines/jetson-agx-orin/timing.cache",
                 "--memPoolSize=workspace:2048M", "--useDLACore=0", "--allowGPUFallback",
                 "--profilingVerbosity=detailed"):
        assert flag in text, flag
    for flag in ("--fp16", "--int8", "--best", "modelopt"):
        assert flag not in text, flag
    assert "int8" in text.splitlines()[2] and "static batch" in text.splitlines()[2]


def test_trtexec_script_dla_fp16_when_asked(export_dir: Path) -> None:
    """fp16 on the DLA profile (``--precision fp16``): the exported model.fp16.onnx strongly
    typed, or, from an export without one, the fp32 ONNX with --fp16 (TensorRT 10)."""
    from export.profiles import with_engine_precision

    fp16 = with_engine_precision(load_profile("jetson-agx-orin"), "fp16")
    text = trtexec_script(load_manifest(export_dir), fp16)
    assert "--onnx=subnets/w0.25-r12/model.onnx" in text and text.count("--fp16") == 4
    assert "--saveEngine=engines/jetson-agx-orin/w0.25-r12.fp16.dla0.plan" in text
    assert "--stronglyTyped" not in text and "--useDLACore=0" in text
    _add_precision_files(export_dir, ("fp16",))
    text = trtexec_script(load_manifest(export_dir), fp16)
    assert text.count("/model.fp16.onnx") == 4 and text.count("--stronglyTyped") == 4
    assert "--fp16" not in text and "--allowGPUFallback" in text


def test_dla_with_dynamic_batch_and_int8_are_refused_by_script_and_builder(
        export_dir: Path) -> None:
    """Hand-made profiles (not validated from YAML) still cannot produce a dynamic-batch DLA
    engine or an --int8 line; both checks run before anything is written."""
    import dataclasses

    from export.backends.tensorrt import check_buildable
    from export.tensorrt_build import build_engines

    agx = load_profile("jetson-agx-orin")
    dynamic = dataclasses.replace(agx, max_batch=8)
    int8 = dataclasses.replace(load_profile("server-a100"), precision="int8")
    m = load_manifest(export_dir)
    with pytest.raises(ExportUsageError, match="static shape.*1/1/8"):
        trtexec_script(m, dynamic)
    with pytest.raises(ExportUsageError, match="Q/DQ"):
        trtexec_script(m, int8)
    for bad in (dynamic, int8):
        with pytest.raises(ExportUsageError):
            build_engines(export_dir, bad, progress=False)
    assert not (export_dir / "build_engines.sh").exists()
    check_buildable(agx)
    gpu = trtexec_script(m, load_profile("jetson-agx-orin-gpu"))
    assert "--maxShapes=input:8x3x12x12" in gpu and "--useDLACore" not in gpu
    assert "--int8" not in trtexec_script(m, load_profile("server-a100"))


def test_trtexec_script_tensorrt11_strongly_typed(export_dir: Path) -> None:
    prof = load_profile("server-h100")
    text = trtexec_script(load_manifest(export_dir), prof, timing_cache="/cache/trt.cache")
    assert "--stronglyTyped" in text and "--fp16" not in text
    assert "python3 -m modelopt.onnx.autocast --onnx_path subnets/w1.00-r16/model.onnx " \
           "--output_path engines/server-h100/w1.00-r16.fp16.onnx" in text
    assert "--onnx=engines/server-h100/w1.00-r16.fp16.onnx" in text
    assert "--maxShapes=input:128x3x16x16" in text and "--optShapes=input:32x3x16x16" in text
    assert "--timingCacheFile=/cache/trt.cache" in text and "--useDLACore" not in text


def test_engine_relpath() -> None:
    assert engine_relpath(load_profile("jetson-agx-orin"), "w0.50-r160") == \
        "engines/jetson-agx-orin/w0.50-r160.int8.dla0.plan"
    assert engine_relpath(load_profile("server-a100"), "w1.00-r224") == \
        "engines/server-a100/w1.00-r224.fp16.plan"


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_build_engines_without_tensorrt_writes_script_then_exits_1(export_dir: Path) -> None:
    before = (export_dir / "manifest.json").read_bytes()
    res = CliRunner().invoke(cli, ["build-engines", str(export_dir), "--profile",
                                   "jetson-orin-nano"])
    assert res.exit_code == 1
    assert "pip install tensorrt" in res.output and "build_engines.sh" in res.output
    assert "Traceback" not in res.output
    script = export_dir / "build_engines.sh"
    assert script.is_file() and script.stat().st_mode & 0o111
    assert "--saveEngine=engines/jetson-orin-nano/w0.25-r12.fp16.plan" in script.read_text()
    assert (export_dir / "manifest.json").read_bytes() == before   # no fake engine recorded
    assert not (export_dir / "engines").exists()


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_engine_runner_registers_lazily_and_build_engines_runs_without_torch(
        export_dir: Path) -> None:
    """make_runner("tensorrt") imports the TensorRT backend on demand, and build-engines (the
    device side) reaches its 'tensorrt missing' exit with torch unimportable."""
    code = f"""
import sys
sys.modules['torch'] = None            # any 'import torch' now raises ImportError
from export.errors import BackendUnavailableError
from export.backends import make_runner
assert 'export.backends.tensorrt' not in sys.modules and 'tensorrt' not in sys.modules
try:
    make_runner('tensorrt', {str(export_dir / "manifest.json")!r})
except BackendUnavailableError as e:
    print('hint:', e)
from mutualnet.cli import main
sys.argv = ['mutualnet', 'build-engines', {str(export_dir)!r}, '--profile', 'jetson-orin-nano']
main()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], timeout=120)
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith("hint: the TensorRT backend needs the tensorrt package")
    assert "ImportError" not in out.stderr and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "pip install tensorrt" in errors[0], out.stderr
    assert (export_dir / "build_engines.sh").is_file()


class _FakeShared:
    def __init__(self, device_index: int) -> None:
        self.allocations: list[int] = []
        self.activation_ptr = self.activation_bytes = 0
        self.closed = False

    def malloc(self, nbytes: int) -> int:
        self.allocations.append(nbytes)
        return 1000 + len(self.allocations)

    def share_activations(self, runners: list) -> None:
        self.activation_bytes = max(r.device_memory for r in runners)
        self.activation_ptr = self.malloc(self.activation_bytes)
        for r in runners:
            r.attach(self.activation_ptr, self.activation_bytes)

    def close(self) -> None:
        self.closed = True


class _FakeTrtRunner:
    """Stands in for export.runtime's engine runner: logits = per-image mean, 3 classes."""

    def __init__(self, shared: _FakeShared, path: Path, resolution: int, classes: int,
                 max_batch: int, dla_core: int | None = None) -> None:
        self.shared, self.max_batch, self.device_memory = shared, max_batch, 4096
        self.calls: list[int] = []
        self.attached: tuple[int, int] | None = None

    def attach(self, ptr: int, size: int) -> None:
        self.attached = (ptr, size)

    def run(self, x: np.ndarray) -> np.ndarray:
        assert self.attached is not None and len(x) <= self.max_batch
        self.calls.append(len(x))
        return np.repeat(x.mean(axis=(1, 2, 3))[:, None], 3, 1).astype(np.float32)

    def close(self) -> None:
        pass


def test_engine_runner_splits_batches_and_frees_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import export.backends.tensorrt as bt
    from export.backends import make_runner

    monkeypatch.setattr(bt, "TrtShared", _FakeShared)
    monkeypatch.setattr(bt, "TrtRunner", _FakeTrtRunner)
    monkeypatch.setattr(bt, "engine_io", lambda shared, path: (8, 3, 4))  # max batch 4
    engine = tmp_path / "w1.00-r8.fp16.plan"
    engine.write_bytes(b"engine")
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    with make_runner("tensorrt", engine) as runner:
        assert isinstance(runner, bt.EngineRunner) and runner.name == "tensorrt"
        out = runner.run(x)
        inner = runner._runner
        assert inner.calls == [4, 4, 2] and inner.attached == (1001, 4096)
        np.testing.assert_allclose(out[:, 0], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    assert runner._shared.closed
    with make_runner("tensorrt", engine, max_batch=3) as small:
        small.run(x)
        assert small._runner.calls == [3, 3, 3, 1]
    with pytest.raises(ExportUsageError, match="does not exist"):
        make_runner("tensorrt", tmp_path / "missing.plan")


def test_build_engines_rejects_non_tensorrt_profile(export_dir: Path) -> None:
    res = CliRunner().invoke(cli, ["build-engines", str(export_dir), "--profile", "cpu"])
    assert res.exit_code == 2 and "not TensorRT" in res.output


# ------------------------------------------------------------------ parity gates

def _logits(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 10)).astype(np.float32)


def test_engine_parity_fp16_gates() -> None:
    prof = load_profile("server-a100")           # fp16: >= 99 % agreement, <= 0.5 pt drop
    ref = _logits(1000, 0)
    labels = ref.argmax(1).copy()
    labels[:200] = (labels[:200] + 1) % 10      # reference top-1 80 %
    close = ref + np.float32(1e-3) * _logits(1000, 1)
    p = engine_parity(ref, close, labels, prof, "s")
    assert p.passed and p.top1_agreement >= 0.99 and abs(p.accuracy_drop_pt) < 0.5
    d = p.manifest_entry()
    assert d["tolerance_that_passes"] == pytest.approx(p.max_abs_diff)
    assert 0 < d["tolerance_that_passes"] < 0.01
    assert d["agreement_that_passes"] == pytest.approx(p.top1_agreement)

    flipped = ref.copy()
    flipped[200:230] = np.roll(flipped[200:230], 1, axis=1)   # 3 % disagree, all were right
    p = engine_parity(ref, flipped, labels, prof, "s")
    assert not p.passed and p.top1_agreement < 0.99
    assert p.accuracy_drop_pt == pytest.approx(3.0, abs=0.11)
    assert p.manifest_entry()["drop_that_passes_pt"] == pytest.approx(p.accuracy_drop_pt)


def test_engine_parity_fp32_uses_elementwise_tolerance() -> None:
    data = load_profile("server-a100").to_dict()
    data["precision"] = "fp32"
    prof = profile_from_dict(data)
    ref = _logits(50, 0)
    assert engine_parity(ref, ref + 5e-5, None, prof, "s").passed
    worse = engine_parity(ref, ref + 5e-4, None, prof, "s")
    assert not worse.passed and worse.manifest_entry()["tolerance_that_passes"] == \
        pytest.approx(5e-4, rel=1e-3)
    assert worse.accuracy_drop_pt is None


# ------------------------------------------------------------------ parity images

def test_load_parity_images_npz(tmp_path: Path) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(20) % 10
    np.savez(tmp_path / "held.npz", images=imgs, labels=labels)
    got, lab = load_parity_images(tmp_path / "held.npz", limit=5)
    assert len(got) == 5 and lab is not None and len(lab) == 5
    assert (got[0] == imgs[0]).all() and (got[-1] == imgs[-1]).all() and lab[-1] == 9


def test_load_parity_images_shared_jpeg_format(tmp_path: Path) -> None:
    from PIL import Image

    blobs = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.full((6, 6, 3), i * 60, np.uint8)).save(buf, format="JPEG")
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    off = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(tmp_path / "j.npz", test_jpeg=np.concatenate(blobs), test_offsets=off,
             test_labels=np.array([0, 1, 2, 3]))
    got, lab = load_parity_images(tmp_path / "j.npz", limit=10)
    assert len(got) == 4 and got[2].shape == (6, 6, 3) and list(lab) == [0, 1, 2, 3]
    assert abs(int(got[3].mean()) - 180) <= 3
    with pytest.raises(ExportUsageError, match="neither"):
        np.savez(tmp_path / "x.npz", foo=np.zeros(1))
        load_parity_images(tmp_path / "x.npz")


def test_read_parity_images_rejects_unreadable_files(tmp_path: Path,
                                                    export_dir: Path) -> None:
    from export.parity_images import read_parity_images

    junk = tmp_path / "junk.npz"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ExportUsageError, match="not an .npz file"):
        read_parity_images(junk)
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ExportUsageError, match="obj.npz"):
        read_parity_images(pickled)
    for args in (["--images", str(junk)], ["--timing-cache", str(tmp_path)]):
        res = CliRunner().invoke(cli, ["build-engines", str(export_dir), "--profile",
                                       "jetson-orin-nano", *args])
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


# ------------------------------------------------------------------ layer datatypes

def test_layer_precisions_from_inspector_json() -> None:
    from export.backends.tensorrt import layer_precisions

    info = {"Layers": [
        {"Name": "in", "LayerType": "Reformat",
         "Outputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Outputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution", "Outputs": [{"Format/Datatype": "Half"}]},
        {"Name": "fc", "LayerType": "CaskGemm",
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "q", "LayerType": "Scale", "Outputs": [{"Format/Datatype": "Int8"}]},
    ], "Bindings": ["input", "logits"]}
    assert layer_precisions(json.dumps(info)) == {"fp16": 2, "fp32": 1, "int8": 1}
    names_only = {"Layers": ["conv1 + relu", "fc"], "Bindings": ["input", "logits"]}
    assert layer_precisions(json.dumps(names_only)) is None      # built without DETAILED
    assert layer_precisions("not json") is None


# ------------------------------------------------------------------ default engine parity

class _FakeTrt:
    __version__ = "10.3.0"


def _store_parity_images(root: Path, n: int = 40, crop: int = 16) -> np.ndarray:
    from export.manifest import file_entry, update_manifest
    from export.parity_images import write_parity_images

    imgs = np.random.default_rng(1).integers(0, 256, (n, crop, crop, 3), dtype=np.uint8)
    path = write_parity_images(root / "parity_images.npz", imgs, np.arange(n) % 10, crop=crop)

    def mutate(doc: dict) -> None:
        doc.setdefault("files", {})["parity_images"] = file_entry(root, path)

    update_manifest(root, mutate)
    return imgs


def _fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Everything TensorRT would do, faked: 'engines' are placeholder files, and the
    'tensorrt' runner of engine parity is ONNX Runtime (so parity agrees exactly).
    Returns the (ONNX file name, strongly typed) of each build, in order."""
    import export.tensorrt_build as tb
    from export.backends.onnxruntime import OrtRunner

    built: list[tuple[str, bool]] = []

    def build_one(trt, major, onnx_path, engine_path, cache_path, profile, name, r,
                  typed=False):
        built.append((onnx_path.name, typed))
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        engine_path.write_bytes(b"placeholder engine " + onnx_path.read_bytes()[:64])

    def ort_as_trt(manifest, sn, record):
        return OrtRunner(manifest.file(sn.onnx), threads=1)

    monkeypatch.setattr(tb, "_tensorrt", lambda script: (_FakeTrt, 10))
    monkeypatch.setattr(tb, "gpu_identity", lambda index=0: ("Orin", "8.7"))
    monkeypatch.setattr(tb, "build_one", build_one)
    monkeypatch.setattr(tb, "engine_layer_precisions", lambda *a: {"fp16": 5, "fp32": 1})
    monkeypatch.setattr(tb, "engine_runner", ort_as_trt)
    return built


def test_build_engines_runs_parity_on_the_stored_images_by_default(
        export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _add_precision_files(export_dir, ("int8",))
    _store_parity_images(export_dir, n=40)
    built = _fake_tensorrt(monkeypatch)
    res = CliRunner().invoke(cli, ["build-engines", str(export_dir), "--profile",
                                   "jetson-agx-orin", "--parity-images", "30"])
    assert res.exit_code == 0, res.output
    assert "engine parity on 30 held-out images from parity_images.npz" in res.output
    assert res.output.count("PASS agreement 1.0000") == 4
    assert built == [("model.int8.onnx", True)] * 4     # the DLA builds the int8 files
    m = load_manifest(export_dir)            # engines and parity images verified
    for sn in m.subnets:
        rec = sn.engines[-1]
        assert rec.precision == rec.precision_requested == "int8"
        assert rec.path.endswith(".int8.dla0.plan")
        assert rec.layer_precisions == {"fp16": 5, "fp32": 1}
        assert rec.dla_core == 0 and rec.gpu_fallback is True
        assert (rec.min_batch, rec.opt_batch, rec.max_batch) == (1, 1, 1)
        assert sn.parity["tensorrt"].passed and sn.parity["tensorrt"].images == 30


def test_build_engines_without_stored_images_says_parity_not_run(
        export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export.tensorrt_build import build_engines, describe

    _fake_tensorrt(monkeypatch)
    report = build_engines(export_dir, "jetson-orin-nano", progress=False)
    assert report.parity == {} and report.parity_source is None
    assert "not run (no stored parity images; pass --images)" in describe(report)
    rec = load_manifest(export_dir).subnets[0].engines[-1]
    assert rec.dla_core is None and rec.gpu_fallback is False


def test_stored_parity_images_must_match_the_crop(export_dir: Path) -> None:
    from export.errors import ExportError
    from export.parity_images import stored_parity_images

    _store_parity_images(export_dir, n=5, crop=12)       # the manifest's crop is 16
    with pytest.raises(ExportError, match="crop 16x16x3"):
        stored_parity_images(load_manifest(export_dir))


# ------------------------------------------------------------------ FP16 ONNX (TensorRT 11)

def test_fp16_conversion_keeps_io_types(export_dir: Path, tmp_path: Path) -> None:
    from export.backends.tensorrt import convert_onnx_fp16

    src = export_dir / "subnets" / "w0.50-r16" / "model.onnx"
    if importlib.util.find_spec("onnxconverter_common") is None and \
            importlib.util.find_spec("modelopt") is None:
        with pytest.raises(BackendUnavailableError, match="onnxconverter-common"):
            convert_onnx_fp16(src, tmp_path / "fp16.onnx")
        return
    import onnx
    import onnxruntime as ort

    dst = convert_onnx_fp16(src, tmp_path / "fp16.onnx")
    model = onnx.load(str(dst))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    out = sess.run(None, {"input": x})[0]
    assert out.dtype == np.float32
    assert (out.argmax(1) == ref.run(None, {"input": x})[0].argmax(1)).all()


# ------------------------------------------------------------------ real TensorRT

def _trt_profile(tmp_path: Path, precision: str) -> Path:
    import tensorrt as trt

    data = load_profile("server-a100").to_dict()
    data.update(name=f"test-{precision}", precision=precision, max_batch=8, opt_batch=2,
                workspace_mb=256, tensorrt_major=int(trt.__version__.split(".")[0]))
    path = tmp_path / f"test-{precision}.yml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engines_and_run_them(export_dir: Path, tmp_path: Path, precision: str) -> None:
    from export.runtime import SubnetRuntime
    from export.tensorrt_build import build_engines

    imgs = np.random.default_rng(0).integers(0, 256, (64, 20, 20, 3), dtype=np.uint8)
    profile = str(_trt_profile(tmp_path, precision))
    report = build_engines(export_dir, profile, parity_data=(list(imgs), None), progress=False)
    assert set(report.engines) == set(IDS)
    assert report.passed, {k: v.to_dict() for k, v in report.parity.items()}
    m = load_manifest(export_dir)          # engines verified by checksum
    for sn in m.subnets:
        rec = sn.engines[-1]
        assert rec.precision == precision and rec.compute_capability.count(".") == 1
        assert rec.precision_requested == precision
        layers = rec.layer_precisions              # what the engine inspector reports
        assert layers is None or (precision != "fp32" or "fp16" not in layers), layers
        assert sn.parity["tensorrt"].passed
    assert (tmp_path / "export" / "engines" / f"test-{precision}" / "timing.cache").is_file()
    with SubnetRuntime.load(export_dir, backend="tensorrt") as rt:
        assert rt.backend == "tensorrt"
        mem = rt.memory_report()
        assert mem["activation_shared_bytes"] <= mem["activation_unshared_bytes"]
        for sid in IDS:
            rt.select(sid)
            res = rt.infer(imgs[:3])
            assert res.subnet_id == sid and (res.top1 == marker_of(IDS, sid)).all()
        assert rt.infer(imgs[:20]).logits.shape == (20, 10)   # > max_batch: split


@pytest.mark.tensorrt
def test_make_runner_runs_built_engines(export_dir: Path, tmp_path: Path) -> None:
    """The parity hook runs the engines build-engines wrote, splitting large batches."""
    from export.backends import make_runner
    from export.tensorrt_build import build_engines

    report = build_engines(export_dir, str(_trt_profile(tmp_path, "fp32")), progress=False)
    x = np.random.default_rng(0).standard_normal((20, 3, 16, 16)).astype(np.float32)
    for sid, rec in report.engines.items():
        r = int(sid.rsplit("-r", 1)[1])
        with make_runner("tensorrt", export_dir / rec["path"]) as runner:
            assert runner.max_batch == 8
            logits = runner.run(x[:, :, :r, :r])
        assert logits.shape == (20, 10) and (logits.argmax(1) == marker_of(IDS, sid)).all()


@pytest.mark.tensorrt
def test_profile_with_tensorrt(export_dir: Path, tmp_path: Path) -> None:
    from export.latency import profile_manifest
    from export.tensorrt_build import build_engines

    build_engines(export_dir, str(_trt_profile(tmp_path, "fp16")), progress=False)
    stats = profile_manifest(export_dir, backend="tensorrt", duration_s=0.2, batches=[1],
                             progress=False)
    assert len(stats) == 4
    entry = next(iter(load_manifest(export_dir).subnets[0].latency.values()))
    assert entry.backend == "tensorrt" and entry.p90_at(1) is not None


# ------------------------------------------------------------------ TensorRT details (fakes)
# tests/data/fake_tensorrt.py stands in for tensorrt + cuda-python; each test below pins one
# detail checked against NVIDIA's docs (the wording is in the code's comments).

def test_layer_precisions_reads_tensorrt11_split_datatype_field() -> None:
    """TensorRT 11 split "Format/Datatype" into "DataType" + "Format" (and replaced
    "Bindings" with "I/O Tensors"); the 10.x reader counted nothing there."""
    from export.backends.tensorrt import layer_precisions

    info = {"I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float"}],
            "Layers": [
                {"Name": "in", "LayerType": "Reformat",
                 "Outputs": [{"Name": "x", "DataType": "Half", "Format": "Channel major"}]},
                {"Name": "conv1", "LayerType": "CaskConvolution",
                 "Outputs": [{"Name": "c1", "DataType": "Half", "Format": "Channel major"}]},
                {"Name": "conv2", "LayerType": "CaskConvolution",
                 "Outputs": [{"Name": "c2", "DataType": "BFloat16", "Format": "Row major"}]},
                {"Name": "fc", "LayerType": "CaskGemm",
                 "Outputs": [{"Name": "logits", "DataType": "Float",
                              "Format": "Row major linear FP32 format (kLINEAR)"}]}]}
    assert layer_precisions(json.dumps(info)) == {"bf16": 1, "fp16": 1, "fp32": 1}


def _many_subnets(root: Path, n: int) -> None:
    """Grow the export to ``n`` subnets (extra widths at 12 px sharing one ONNX file)."""
    from export.manifest import subnet_id, update_manifest

    def mutate(doc: dict) -> None:
        first = doc["subnets"][0]
        extra = []
        for i in range(n - len(doc["subnets"])):
            w = round(0.26 + 0.01 * i, 2)
            extra.append({**first, "id": subnet_id(w, 12), "width": w,
                          "macs": first["macs"] + 1 + i})
        doc["subnets"] = doc["subnets"][:1] + extra + doc["subnets"][1:]
        doc["subnets"].sort(key=lambda s: s["macs"])

    update_manifest(root, mutate)


def test_dla_core_loads_at_most_16_engines(export_dir: Path) -> None:
    """'Each DLA core can load at most 16 loadables': a DLA profile with more subnets is
    refused before any build (exit 2, the limit in the message); a GPU profile is not."""
    from export.backends.tensorrt import DLA_MAX_LOADABLES, check_buildable

    agx = load_profile("jetson-agx-orin")
    check_buildable(agx, DLA_MAX_LOADABLES)
    with pytest.raises(ExportUsageError, match="at most 16"):
        check_buildable(agx, DLA_MAX_LOADABLES + 1)
    check_buildable(load_profile("jetson-agx-orin-gpu"), 100)
    _many_subnets(export_dir, 17)
    before = (export_dir / "manifest.json").read_bytes()
    res = CliRunner().invoke(cli, ["build-engines", str(export_dir), "--profile",
                                   "jetson-agx-orin"])
    assert res.exit_code == 2 and "17 subnets on DLA core 0" in res.output, res.output
    assert "at most 16" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (export_dir / "build_engines.sh").exists()
    assert (export_dir / "manifest.json").read_bytes() == before


def test_runtime_sets_dla_core_and_selects_the_gpu_per_serving_thread(
        export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IRuntime.DLA_core is set from the engine record before each engine is deserialized
    (else an engine built for core 1 runs on core 0), and cudaSetDevice, which is per host
    thread, is called by every thread that serves on cuda:N."""
    import threading

    import fake_tensorrt

    from export.runtime import SubnetRuntime

    trt = fake_tensorrt.install(monkeypatch)
    fake_tensorrt.record_engines(export_dir, dla_core=1)
    with SubnetRuntime.load(export_dir, backend="tensorrt", device="cuda:1") as rt:
        assert rt.backend == "tensorrt" and rt.device == "cuda:1"
        assert trt.deserialized_on_core == [1] * 4
        main = threading.get_ident()
        results: dict[str, str] = {}
        alive = threading.Barrier(2)          # both alive at once: distinct thread ids

        def serve(sid: str) -> None:
            alive.wait(timeout=30)
            results[sid] = rt.infer_tensor(np.zeros((2, 3, 16, 16), np.float32),
                                           subnet=sid).subnet_id
            alive.wait(timeout=30)

        threads = [threading.Thread(target=serve, args=(sid,)) for sid in IDS[2:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {sid: sid for sid in IDS[2:]}
        serving = {tid for tid, dev in trt.cuda.set_device if dev == 1 and tid != main}
        assert len(serving) == 2                        # each serving thread set cuda:1
        assert all(dev == 1 for _, dev in trt.cuda.set_device)
        out = rt.infer_tensor(np.zeros((3, 3, 16, 16), np.float32), subnet="w1.00-r16")
        assert (out.top1 == marker_of(IDS, "w1.00-r16")).all()


def test_engine_runner_passes_the_dla_core(export_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import fake_tensorrt

    from export.backends import make_runner

    trt = fake_tensorrt.install(monkeypatch)
    path = export_dir / "e.plan"
    path.write_bytes(fake_tensorrt.engine_bytes(8, 10, marker=3, max_batch=4))
    with make_runner("tensorrt", path, dla_core=1) as runner:
        assert runner.max_batch == 4
        assert runner.run(np.zeros((10, 3, 8, 8), np.float32)).argmax(1).tolist() == [3] * 10
    assert trt.deserialized_on_core[-1] == 1


class _FakeBuilder:
    """tensorrt.Builder and friends, enough for build_one; the timing cache is optional."""

    def __init__(self, cache: object | None) -> None:
        self.cache, self.flags, self.dla = cache, [], None

    def create_network(self, flags: int) -> object:
        return object()

    def create_builder_config(self) -> _FakeBuilder:
        return self

    def set_memory_pool_limit(self, pool: object, size: int) -> None:
        pass

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def create_timing_cache(self, data: bytes) -> object:
        return object()

    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> None:
        pass

    def create_optimization_profile(self) -> _FakeBuilder:
        return self

    def set_shape(self, *shapes: object) -> None:
        pass

    def add_optimization_profile(self, profile: object) -> None:
        pass

    def build_serialized_network(self, network: object, config: object) -> bytes:
        return b"engine"

    def get_timing_cache(self) -> object | None:
        return self.cache


def _fake_builder_trt(builder: _FakeBuilder) -> object:
    import types

    class Parser:
        num_errors = 0

        def __init__(self, network: object, logger: object) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            return True

    class Logger:
        WARNING = 0

        def __init__(self, level: int = 0) -> None:
            pass

    ns = types.SimpleNamespace
    return ns(Logger=Logger, Builder=lambda logger: builder,
              NetworkDefinitionCreationFlag=ns(), OnnxParser=Parser,
              MemoryPoolType=ns(WORKSPACE=0), BuilderFlag=ns(FP16="fp16",
                                                             GPU_FALLBACK="gpu_fallback"),
              ProfilingVerbosity=ns(DETAILED=2), DeviceType=ns(DLA="dla"))


def test_build_survives_get_timing_cache_returning_none(tmp_path: Path) -> None:
    """get_timing_cache() 'returns ... nullptr if no timing cache was set': after a good
    build with a rejected cache (another device) the engine is kept, no cache is written."""
    from export.backends.tensorrt import build_one

    onnx_path, engine, cache = tmp_path / "m.onnx", tmp_path / "e.plan", tmp_path / "t.cache"
    onnx_path.write_bytes(b"onnx")
    cache.write_bytes(b"from another GPU")
    builder = _FakeBuilder(cache=None)
    from export.profiles import with_engine_precision

    fp16_dla = with_engine_precision(load_profile("jetson-agx-orin"), "fp16")
    with pytest.warns(UserWarning, match="no timing cache"):
        build_one(_fake_builder_trt(builder), 10, onnx_path, engine, cache, fp16_dla,
                  "input", 16)
    assert engine.read_bytes() == b"engine" and cache.read_bytes() == b"from another GPU"
    assert builder.flags == ["fp16", "gpu_fallback"]

    class Cache:
        def serialize(self) -> bytes:
            return b"new cache"

    build_one(_fake_builder_trt(_FakeBuilder(Cache())), 10, onnx_path, engine, cache,
              load_profile("server-a100"), "input", 16)
    assert cache.read_bytes() == b"new cache"


@pytest.mark.parametrize("version, wanted", [("10.3.0", "'cuda-python>=12,<13'"),
                                             ("11.1.0", "'cuda-python>=13'")])
def test_cuda_python_hint_follows_the_tensorrt_major(
        monkeypatch: pytest.MonkeyPatch, version: str, wanted: str) -> None:
    """TensorRT 10 (JetPack 6, CUDA 12) wants cuda-python 12; TensorRT 11 packages are CUDA 13,
    and cuda-python's major follows CUDA's."""
    import fake_tensorrt

    from export.backends.tensorrt import cuda_python_requirement, import_cudart

    assert cuda_python_requirement(int(version[:2])) == wanted
    fake_tensorrt.install(monkeypatch, version)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(BackendUnavailableError) as err:
        import_cudart()
    assert f"pip install {wanted}" in str(err.value)


# ------------------------------------------------------------------ int8 / fp16 artifacts

def _add_precision_files(root: Path, precisions: tuple[str, ...] = ("int8", "fp16")) -> None:
    """Give every subnet of a fixture export real model.int8.onnx / model.fp16.onnx files."""
    from export.manifest import file_entry, update_manifest
    from export.quantize import convert_fp16, quantize_int8

    m = load_manifest(root)
    made = {}
    for sn in m.subnets:
        src = m.file(sn.onnx)
        x = np.random.default_rng(0).standard_normal((16, 3, sn.resolution, sn.resolution))
        if "int8" in precisions:
            made[(sn.id, "int8")] = quantize_int8(src, src.with_name("model.int8.onnx"),
                                                  x.astype(np.float32))
        if "fp16" in precisions:
            made[(sn.id, "fp16")] = convert_fp16(src, src.with_name("model.fp16.onnx"))

    def mutate(doc: dict) -> None:
        for sn in doc["subnets"]:
            sn["precisions"] = {}
            for p in precisions:
                key = f"onnx_{p}"
                sn["files"][key] = file_entry(root, made[(sn["id"], p)])
                sn["precisions"][p] = {"file": key, "parity": {"passed": True}}

    update_manifest(root, mutate)


@pytest.mark.parametrize("major", [10, 11])
def test_int8_script_builds_the_qdq_onnx_strongly_typed(export_dir: Path, major: int) -> None:
    import dataclasses

    _add_precision_files(export_dir)
    prof = dataclasses.replace(load_profile("server-a100"), precision="int8",
                               tensorrt_major=major)
    text = trtexec_script(load_manifest(export_dir), prof)
    assert text.count("--onnx=subnets/") == 4 and text.count("/model.int8.onnx") == 4
    assert text.count("--stronglyTyped") == 4
    for flag in ("--int8", "--fp16", "--best", "modelopt"):
        assert flag not in text, flag
    assert "--saveEngine=engines/server-a100/w0.25-r12.int8.plan" in text


def test_dla_int8_and_fp16_files_build_strongly_typed_with_the_fakes(
        export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AGX Orin DLA profile builds the exported int8 files by default (TensorRT 10,
    strongly typed, no precision flag); --precision fp16 builds model.fp16.onnx the same way,
    as an fp16 GPU profile does."""
    from export.tensorrt_build import build_engines

    _add_precision_files(export_dir)
    built = _fake_tensorrt(monkeypatch)
    report = build_engines(export_dir, "jetson-agx-orin", progress=False)
    assert built == [("model.int8.onnx", True)] * 4
    m = load_manifest(export_dir)
    assert all(sn.engines[-1].precision == "int8" and sn.engines[-1].dla_core == 0
               and sn.engines[-1].gpu_fallback for sn in m.subnets)
    assert report.passed and "--useDLACore=0" in report.script.read_text()
    built.clear()
    res = CliRunner().invoke(cli, ["build-engines", str(export_dir), "--profile",
                                   "jetson-agx-orin", "--precision", "fp16", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert built == [("model.fp16.onnx", True)] * 4
    recs = [sn.engines[-1] for sn in load_manifest(export_dir).subnets]
    assert all(r.precision == "fp16" and r.path.endswith(".fp16.dla0.plan") for r in recs)
    built.clear()
    build_engines(export_dir, "jetson-orin-nano", progress=False)
    assert built == [("model.fp16.onnx", True)] * 4


def test_build_engines_precision_the_device_cannot_run_is_exit_2(
        export_dir: Path, tmp_path: Path) -> None:
    """build-engines --precision fp32 on the DLA (fp16 / int8 only), or int8 on a profile
    whose device lacks it: exit 2, one line, nothing written."""
    prof = tmp_path / "pascal.yml"
    prof.write_text("name: pascal\nruntime: tensorrt\ntensorrt_major: 10\nprecision: fp16\n"
                    "device_precisions: [fp32, fp16]\nprecisions: [fp32]\n")
    before = (export_dir / "manifest.json").read_bytes()
    for profile, precision, message in (("jetson-agx-orin", "fp32", "cannot run fp32 engines"),
                                        (str(prof), "int8", "pascal cannot run int8 engines")):
        res = CliRunner().invoke(cli, ["build-engines", str(export_dir), "--profile", profile,
                                       "--precision", precision])
        assert res.exit_code == 2 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (export_dir / "build_engines.sh").exists()
    assert (export_dir / "manifest.json").read_bytes() == before


def test_int8_engines_need_the_qdq_onnx(export_dir: Path) -> None:
    from export.tensorrt_build import build_engines

    with pytest.raises(ExportUsageError, match="re-export with --precision int8"):
        build_engines(export_dir, "jetson-agx-orin", progress=False)
    assert not (export_dir / "build_engines.sh").exists()


def test_builder_flags_for_typed_onnx() -> None:
    """build_one's network flags: strongly typed for a typed ONNX on 10, FP16 flag only for
    an fp32 ONNX on 10."""
    from export.backends.tensorrt import _network

    calls: dict[str, list] = {"flags": [], "set_flag": []}

    class Enum:
        STRONGLY_TYPED, EXPLICIT_BATCH = 5, 0

    class Net:
        pass

    class Parser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            return True

    class Builder:
        def create_network(self, flags: int) -> Net:
            calls["flags"].append(flags)
            return Net()

    import types

    trt = types.SimpleNamespace(NetworkDefinitionCreationFlag=Enum, OnnxParser=Parser)
    onnx_path = Path(__file__)
    _network(trt, 10, Builder(), None, onnx_path, True)
    _network(trt, 10, Builder(), None, onnx_path, False)
    assert calls["flags"] == [1 << 5, 1 << 0]
