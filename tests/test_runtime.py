"""The torch-free runtime on ONNX Runtime (CPU): loading, budgets, switching, failures, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "data"))
from deploy_fixtures import PREPROCESSING, make_export, marker_of  # noqa: E402

from export.errors import (  # noqa: E402
    BackendUnavailableError,
    BudgetError,
    ExportError,
    ExportUsageError,
    ManifestError,
)
from export.manifest import EngineRecord, file_entry, load_manifest, update_manifest  # noqa: E402
from export.runtime import (  # noqa: E402
    EngineEnvironment,
    SubnetRuntime,
    check_engine_record,
    preprocess_images,
)
from mutualnet.cli import cli  # noqa: E402

IDS = ["w0.25-r12", "w0.50-r12", "w0.50-r16", "w1.00-r16"]
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("rt") / "export")


@pytest.fixture
def fresh_export(tmp_path: Path) -> Path:
    return make_export(tmp_path / "export")


@pytest.fixture(scope="module")
def rt(export_dir: Path) -> SubnetRuntime:
    runtime = SubnetRuntime.load(export_dir, backend="onnxruntime", threads=1)
    yield runtime
    runtime.close()


def _images(n: int = 3, h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ import without torch

def test_runtime_imports_and_runs_without_torch(export_dir: Path) -> None:
    code = f"""
import sys
sys.modules['torch'] = None          # any 'import torch' now raises ImportError
import numpy as np
from export.runtime import SubnetRuntime
from export.latency import profile_manifest
from export.manifest import load_manifest
from export.profiles import load_profile
rt = SubnetRuntime.load({str(export_dir)!r}, backend='auto')
rt.select_budget(mflops=0.02)
r = rt.infer(np.zeros((2, 30, 30, 3), np.uint8))
assert r.subnet_id == 'w0.25-r12', r.subnet_id
bad = sorted(m for m in sys.modules if m == 'torch' and sys.modules[m] is not None
             or m.startswith('mutualnet'))
print('OK', rt.backend, bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK onnxruntime []"


def test_cli_runs_without_torch(export_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(_images(1, 20, 20)[0]).save(img)
    code = f"""
import sys
sys.modules['torch'] = None
sys.modules['torchvision'] = None
from mutualnet.cli import main
sys.argv = ['mutualnet', 'run', {str(export_dir)!r}, {str(img)!r}, '--budget-mflops', '0.02']
main()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{img}: airplane (100.0%)"


# ------------------------------------------------------------------ preprocessing

def _torch_preprocess(img: np.ndarray, pre: dict, resolution: int) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from mutualnet.data.transforms import resize_center_crop, resize_to

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / pre["input_scale"]
    x = resize_center_crop(x, pre["resize"], pre["crop"], pre.get("resize_mode", "shorter_side"))
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    return resize_to((x - mean) / std, resolution).numpy()


@pytest.mark.parametrize("shape, resize, crop, res, mode", [
    ((16, 16), None, 16, 12, None),             # CIFAR-style: only the subnet resize
    ((40, 30), None, 16, 12, None),             # larger than crop: center crop
    ((10, 13), None, 16, 16, None),             # smaller than crop: upscale first
    ((50, 70), 24, 20, 14, None),               # ImageNet-style: shorter side, crop, then r
    ((50, 70), 24, 20, 14, "shorter_side"),     # the same, spelled out
    ((50, 70), 20, 20, 20, "stretch"),          # whole image to 20 x 20, no crop
    ((31, 57), 24, 20, 14, "stretch"),          # stretch to 24 x 24, crop 20, then r
    ((9, 12), None, 16, 12, "stretch"),         # upscaled to crop x crop
])
def test_preprocessing_matches_training_side(shape, resize, crop, res, mode) -> None:
    pytest.importorskip("mutualnet.data.transforms")
    pre = dict(PREPROCESSING, resize=resize, crop=crop)
    if mode is not None:
        pre["resize_mode"] = mode
    img = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = preprocess_images(img[None], pre, res)
    ref = _torch_preprocess(img, pre, res)
    assert ours.shape == ref.shape == (1, 3, res, res)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("shape", [(343, 512), (600, 512), (70, 45)])
def test_stretch_equals_a_pil_resize_of_the_whole_image(shape) -> None:
    """``resize_mode: stretch`` (resize = crop) is what TFLite users feed the interpreter:
    PIL's bilinear resize of the whole image; PIL rounds to uint8, hence the tolerance."""
    from PIL import Image

    pre = dict(PREPROCESSING, resize=40, crop=40, resize_mode="stretch", mean=[0.0] * 3,
               std=[1.0] * 3)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / max(shape)
    noise = np.random.default_rng(2).normal(0, 8, (*shape, 3))
    img = np.stack([xx * 200, yy * 200, 120 + 100 * np.sin(9 * xx * yy)], axis=2) + noise
    img = img.clip(0, 255).astype(np.uint8)
    ours = preprocess_images([img], pre, 40)[0].transpose(1, 2, 0) * 255.0
    pil = np.asarray(Image.fromarray(img).resize((40, 40), Image.Resampling.BILINEAR))
    assert np.abs(ours - pil).max() <= 1.0
    assert np.abs(ours - pil).mean() < 0.5  # uint8 rounding: about 0.25
    shorter = preprocess_images([img], dict(pre, resize_mode="shorter_side"), 40)[0]
    assert np.abs(shorter.transpose(1, 2, 0) * 255.0 - pil).mean() > 2  # the crop differs


def test_unknown_resize_mode_is_a_usage_error() -> None:
    with pytest.raises(ExportUsageError, match="unknown preprocessing resize_mode 'fit'"):
        preprocess_images(_images(1), dict(PREPROCESSING, resize_mode="fit"), 12)


def test_preprocess_accepts_lists_of_any_size_and_rejects_bad_images() -> None:
    imgs = [_images(1, 20, 20)[0], _images(1, 33, 17)[0], _images(1, 8, 8)[0][:, :, 0]]
    out = preprocess_images(imgs, PREPROCESSING, 12)
    assert out.shape == (3, 3, 12, 12) and out.dtype == np.float32
    with pytest.raises(ExportUsageError, match="expected H x W x 3"):
        preprocess_images([np.zeros((4, 4, 5), np.uint8)], PREPROCESSING, 12)
    with pytest.raises(ExportUsageError, match="no images"):
        preprocess_images([], PREPROCESSING, 12)


# ------------------------------------------------------------------ inference / selection

def test_load_preloads_every_subnet(rt: SubnetRuntime) -> None:
    assert [s.id for s in rt.subnets] == IDS
    assert rt.backend == "onnxruntime" and rt.providers == ("CPUExecutionProvider",)
    assert rt.failed == {}
    assert rt.current == IDS[-1]          # the largest until told otherwise


def test_each_subnet_computes_its_own_result(rt: SubnetRuntime) -> None:
    for sid in IDS:
        rt.select(sid)
        res = rt.infer(_images())
        assert res.subnet_id == sid
        assert res.logits.shape == (3, 10)
        assert (res.top1 == marker_of(IDS, sid)).all()
        r = int(sid.split("-r")[1])
        res2 = rt.infer_tensor(np.zeros((2, 3, r, r), np.float32))
        assert res2.subnet_id == sid and (res2.top1 == marker_of(IDS, sid)).all()
    with pytest.raises(ExportUsageError, match=r"\[N, 3, 16, 16\]"):
        rt.infer_tensor(np.zeros((1, 3, 12, 12), np.float32))
    with pytest.raises(ExportUsageError, match="no subnet 'w9.00-r1'"):
        rt.select("w9.00-r1")


def test_batches_larger_than_max_batch_are_split(rt: SubnetRuntime) -> None:
    rt.select(IDS[0])
    res = rt.infer(_images(n=19))      # cpu profile max_batch is 8
    assert res.logits.shape == (19, 10)


def test_select_budget_mmacs(rt: SubnetRuntime) -> None:
    macs = {s.id: s.mmacs for s in rt.subnets}
    choice = rt.select_budget(mmacs=macs["w0.50-r16"] + 1e-6)
    assert choice.fits and choice.subnet_id == "w0.50-r16" == rt.current
    choice = rt.select_budget(mflops=1e6)
    assert choice.subnet_id == "w1.00-r16"
    # between two subnets: the most accurate that fits, not merely the largest
    assert rt.choose_budget(mmacs=macs["w0.50-r12"]).subnet_id == "w0.50-r12"
    # mflops= stays accepted as the deprecated alias of the same budget
    assert rt.choose_budget(mflops=macs["w0.50-r12"]).subnet_id == "w0.50-r12"
    with pytest.raises(ExportUsageError, match="not both"):
        rt.choose_budget(mmacs=1.0, mflops=1.0)


def test_budget_below_smallest_selects_smallest_and_warns(rt: SubnetRuntime) -> None:
    with pytest.warns(UserWarning, match="below the smallest subnet w0.25-r12"):
        choice = rt.select_budget(mflops=1e-6)
    assert not choice.fits and rt.current == "w0.25-r12"
    rt.select("w1.00-r16")
    with pytest.raises(BudgetError, match="below the smallest subnet w0.25-r12"):
        rt.select_budget(mmacs=1e-6, strict=True)
    assert rt.current == "w1.00-r16"          # a refused budget changes nothing
    with pytest.raises(ExportUsageError, match="exactly one budget"):
        rt.select_budget()
    with pytest.raises(ExportUsageError, match="positive"):
        rt.select_budget(mflops=-1)


def test_most_accurate_within_budget_uses_accuracy(fresh_export: Path) -> None:
    def worse_big(doc: dict) -> None:     # the largest subnet is now less accurate
        doc["subnets"][3]["accuracy"]["onnxruntime"]["top1"] = 10.0

    update_manifest(fresh_export, worse_big)
    with SubnetRuntime.load(fresh_export, threads=1) as rt2:
        assert rt2.select_budget(mflops=1e6).subnet_id == "w0.50-r16"


def test_latency_budget_needs_profiling_then_works(fresh_export: Path) -> None:
    with SubnetRuntime.load(fresh_export, threads=1) as rt2:
        with pytest.raises(ManifestError, match="mutualnet profile"):
            rt2.select_budget(latency_ms=5)
    from export.latency import profile_manifest

    before = {p: p.read_bytes() for p in fresh_export.rglob("*.onnx")}
    stats = profile_manifest(fresh_export, duration_s=0.05, batches=[1, 2], progress=False,
                             threads=1)
    assert {(s.subnet_id, s.batch) for s in stats} == {(i, b) for i in IDS for b in (1, 2)}
    assert all(s.runs >= 10 and s.p50_ms <= s.p90_ms <= s.p99_ms for s in stats)
    assert {p: p.read_bytes() for p in fresh_export.rglob("*.onnx")} == before
    m = load_manifest(fresh_export)       # still verifies: nothing else changed
    entry = next(iter(m.subnets[0].latency.values()))
    assert entry.backend == "onnxruntime" and entry.top.batch == 1
    assert [r.batch for r in entry.by_batch] == [1, 2]
    with SubnetRuntime.load(fresh_export, threads=1) as rt2:
        lat = {s.id: s.latency_ms for s in rt2.subnets}
        assert all(v is not None and v > 0 for v in lat.values())
        choice = rt2.select_budget(latency_ms=1e6)
        assert choice.fits and choice.subnet_id == "w1.00-r16"
        with pytest.warns(UserWarning, match="below the smallest"):
            rt2.select_budget(latency_ms=1e-9)
        assert rt2.current == min(lat, key=lambda k: (lat[k], IDS.index(k)))

    def elsewhere(doc: dict) -> None:       # figures from another device do not count
        for sn in doc["subnets"]:
            sn["latency"] = {f"Jetson [{k}]": dict(v, device="Jetson")
                             for k, v in sn["latency"].items()}

    update_manifest(fresh_export, elsewhere)
    with SubnetRuntime.load(fresh_export, threads=1) as rt2:
        with pytest.raises(ManifestError, match="measured only as: Jetson"):
            rt2.select_budget(latency_ms=5)


# ------------------------------------------------------------------ concurrency

def test_concurrent_switching_never_fails_or_misroutes(export_dir: Path) -> None:
    runtime = SubnetRuntime.load(export_dir, threads=1)
    errors: list[BaseException] = []
    served: list[tuple[str, np.ndarray]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        imgs = _images(n=2, seed=seed)
        try:
            for _ in range(60):
                res = runtime.infer(imgs)
                with lock:
                    served.append((res.subnet_id, res.top1))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def switcher() -> None:
        rng = np.random.default_rng(0)
        while not stop.is_set():
            runtime.select(IDS[int(rng.integers(len(IDS)))])

    clients = [threading.Thread(target=client, args=(i,)) for i in range(5)]
    sw = threading.Thread(target=switcher)
    sw.start()
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    stop.set()
    sw.join()
    runtime.close()
    assert errors == []
    assert len(served) == 300
    for sid, top1 in served:                  # logits computed by the subnet reported
        assert (top1 == marker_of(IDS, sid)).all()
    assert len({sid for sid, _ in served}) > 1   # switching really happened


def test_request_in_flight_finishes_on_its_subnet(export_dir: Path) -> None:
    runtime = SubnetRuntime.load(export_dir, threads=1)
    runtime.select("w0.50-r12")
    slot = runtime._state.slots["w0.50-r12"]
    started, release = threading.Event(), threading.Event()
    real = slot.runner

    class Slow:
        max_batch = real.max_batch

        def run(self, x):
            started.set()
            release.wait(10)
            return real.run(x)

        def close(self):
            real.close()

    slot.runner = Slow()
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("res", runtime.infer(_images())))
    t.start()
    assert started.wait(10)
    runtime.select("w1.00-r16")               # switch while the request is in flight
    assert runtime.current == "w1.00-r16"
    release.set()
    t.join()
    assert out["res"].subnet_id == "w0.50-r12"
    assert (out["res"].top1 == marker_of(IDS, "w0.50-r12")).all()
    assert runtime.infer(_images()).subnet_id == "w1.00-r16"
    runtime.close()


# ------------------------------------------------------------------ failures

def test_failing_subnet_is_reported_and_others_keep_serving(export_dir: Path) -> None:
    runtime = SubnetRuntime.load(export_dir, threads=1)
    runtime.select("w0.50-r16")

    class Broken:
        max_batch = 8

        def run(self, x):
            raise RuntimeError("device lost")

        def close(self):
            pass

    runtime._state.slots["w0.50-r16"].runner = Broken()
    with pytest.warns(UserWarning, match="w0.50-r16 failed to run"):
        res = runtime.infer(_images())
    assert res.subnet_id == "w1.00-r16"        # same resolution, nearest MACs
    assert (res.top1 == marker_of(IDS, "w1.00-r16")).all()
    assert "device lost" in runtime.failed["w0.50-r16"]
    assert "w0.50-r16" not in [s.id for s in runtime.subnets]
    assert runtime.current != "w0.50-r16"
    assert runtime.infer(_images()).subnet_id == runtime.current
    with pytest.raises(ExportError, match="unavailable"):
        runtime.select("w0.50-r16")
    runtime.close()


def test_subnet_failing_to_load_does_not_stop_the_others(fresh_export: Path) -> None:
    import onnx

    bad = fresh_export / "subnets" / "w0.50-r12" / "model.onnx"
    model = onnx.load(str(bad))             # the graph verify checks, weights ORT refuses
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    bad.write_bytes(model.SerializeToString())

    def rehash(doc: dict) -> None:          # a consistent manifest around a broken model
        doc["subnets"][1]["files"]["onnx"] = file_entry(fresh_export, bad)

    update_manifest(fresh_export, rehash)
    with pytest.warns(UserWarning, match="w0.50-r12 failed to load"):
        runtime = SubnetRuntime.load(fresh_export, threads=1)
    assert [s.id for s in runtime.subnets] == [i for i in IDS if i != "w0.50-r12"]
    assert "failed to load" in runtime.failed["w0.50-r12"]
    assert runtime.select_budget(mflops=0.04).subnet_id == "w0.25-r12"
    runtime.close()


def test_tampered_files_are_rejected_at_load(fresh_export: Path) -> None:
    onnx = fresh_export / "subnets" / "w1.00-r16" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[100] ^= 1
    onnx.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        SubnetRuntime.load(fresh_export)


# ------------------------------------------------------------------ stale engines

ENV = EngineEnvironment("10.3.0", "Orin", "8.7")


def _record(**kw) -> EngineRecord:
    rec = {"path": "engines/x.plan", "sha256": "0" * 64, "size": 1, "tensorrt_version": "10.3.0",
           "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16",
           "dla_core": None, "built": "2026-01-01T00:00:00Z"}
    rec.update(kw)
    return EngineRecord.parse(rec)


def test_check_engine_record() -> None:
    assert check_engine_record(_record(), ENV) is None
    assert "TensorRT 10.0.1" in check_engine_record(_record(tensorrt_version="10.0.1"), ENV)
    assert "NVIDIA A100" in check_engine_record(_record(gpu_name="NVIDIA A100"), ENV)
    assert "compute capability 7.2" in check_engine_record(_record(compute_capability="7.2"),
                                                           ENV)


def _with_engine_records(root: Path, version: str) -> None:
    """Record an engine per subnet. The files are placeholders, NOT engines: these tests
    check that stale records are refused before any engine would be deserialized."""
    def mutate(doc: dict) -> None:
        for sn in doc["subnets"]:
            p = root / "engines" / "test" / f"{sn['id']}.fp16.plan"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"placeholder, never deserialized: " + sn["id"].encode())
            sn["engines"] = [{**file_entry(root, p), "tensorrt_version": version,
                              "gpu_name": "Orin", "compute_capability": "8.7",
                              "precision": "fp16", "dla_core": None,
                              "built": "2026-01-01T00:00:00Z"}]

    update_manifest(root, mutate)


def test_stale_engine_records_are_rejected_or_fall_back(fresh_export: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import export.runtime as mod

    _with_engine_records(fresh_export, "10.0.1")
    monkeypatch.setattr(mod, "tensorrt_environment", lambda index=0: ENV)
    with pytest.raises(ManifestError, match=r"stale TensorRT engine for w0.25-r12 \(built "
                                            r"with TensorRT 10.0.1, this is 10.3.0\)"):
        SubnetRuntime.load(fresh_export, backend="tensorrt")
    with pytest.raises(ManifestError, match="stale"):
        SubnetRuntime.load(fresh_export, backend="auto")
    with pytest.warns(UserWarning, match="falling back to ONNX Runtime"):
        runtime = SubnetRuntime.load(fresh_export, backend="tensorrt", on_stale="fallback")
    assert runtime.backend == "onnxruntime"
    assert runtime.infer(_images()).subnet_id == runtime.current
    runtime.close()


def test_cli_on_stale_error_by_default_or_fallback(fresh_export: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` and `profile` refuse stale engines (exit 1) unless --on-stale fallback, which
    notes it on stderr and runs ONNX Runtime."""
    import export.runtime as mod
    from export.runtime import resolve_backend

    _with_engine_records(fresh_export, "10.0.1")
    monkeypatch.setattr(mod, "tensorrt_environment", lambda index=0: ENV)
    img = _png(tmp_path / "a.png", 12, 12)
    runner = CliRunner()
    for cmd in (["run", str(fresh_export), str(img)],
                ["profile", str(fresh_export), "--duration", "0.01", "--batch", "1"]):
        res = runner.invoke(cli, cmd)
        assert res.exit_code == 1 and "stale TensorRT engine" in res.output, res.output
        assert "Traceback" not in res.output
        res = runner.invoke(cli, [*cmd, "--on-stale", "fallback", "--backend", "tensorrt"])
        assert res.exit_code == 0, res.output
        assert "note: stale TensorRT engine" in res.output and "falling back" in res.output
        res = runner.invoke(cli, [*cmd, "--on-stale", "ignore"])
        assert res.exit_code == 2
    assert resolve_backend(fresh_export, "onnxruntime") == "onnxruntime"
    with pytest.raises(ManifestError, match="stale"):
        resolve_backend(fresh_export)
    with pytest.raises(ExportUsageError, match="on_stale"):
        resolve_backend(fresh_export, on_stale="maybe")


def test_tampered_engine_file_is_rejected(fresh_export: Path) -> None:
    _with_engine_records(fresh_export, "10.3.0")
    eng = next((fresh_export / "engines" / "test").glob("*.plan"))
    eng.write_bytes(eng.read_bytes() + b"!")
    with pytest.raises(ManifestError, match="engines"):
        SubnetRuntime.load(fresh_export, backend="onnxruntime")


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here")
def test_tensorrt_backend_without_tensorrt(fresh_export: Path) -> None:
    _with_engine_records(fresh_export, "10.3.0")
    with pytest.raises(BackendUnavailableError, match="pip install tensorrt"):
        SubnetRuntime.load(fresh_export, backend="tensorrt")
    with SubnetRuntime.load(fresh_export, backend="auto") as runtime:   # auto: quietly ORT
        assert runtime.backend == "onnxruntime"
    with pytest.raises(ExportUsageError, match="backend must be"):
        SubnetRuntime.load(fresh_export, backend="tflite")


# ------------------------------------------------------------------ controller

def test_latency_controller_steps_down_under_load_and_back_up(rt: SubnetRuntime) -> None:
    rt.select("w1.00-r16")
    ctl = rt.controller(10.0, window=5, cooldown=5)
    for _ in range(5):
        ctl.observe(25.0)                      # overloaded
    assert rt.current == "w0.50-r16"
    for _ in range(10):
        ctl.observe(25.0)
    assert rt.current == "w0.25-r12"
    for _ in range(5):
        ctl.observe(25.0)                      # already the smallest: stays
    assert rt.current == "w0.25-r12"
    for _ in range(5):
        ctl.observe(1.0)                       # load gone: the next one fits again
    assert rt.current == "w0.50-r12"
    for _ in range(5):
        ctl.observe(6.5)                       # above headroom: hold
    assert rt.current == "w0.50-r12"
    assert ctl.switches[0] == ("w1.00-r16", "w0.50-r16")
    res = ctl.infer(_images())
    assert res.subnet_id == rt.current
    with pytest.raises(ExportUsageError):
        rt.controller(0)


# ------------------------------------------------------------------ CLI

def _png(path: Path, h: int, w: int) -> Path:
    from PIL import Image

    Image.fromarray(_images(1, h, w)[0]).save(path)
    return path


def test_run_cli_prints_labels(export_dir: Path, tmp_path: Path) -> None:
    a, b = _png(tmp_path / "a.png", 30, 40), _png(tmp_path / "b.png", 12, 12)
    res = CliRunner().invoke(cli, ["run", str(export_dir), str(a), str(b),
                                   "--budget-mflops", "0.04"])
    assert res.exit_code == 0, res.output
    assert f"{a}: automobile" in res.output    # w0.50-r12 -> marker 1
    assert f"{b}: automobile" in res.output
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing{i}" for i in range(10)))
    res = CliRunner().invoke(cli, ["run", str(export_dir), str(a), "--subnet", "w1.00-r16",
                                   "--labels", str(labels), "--top", "2"])
    assert res.exit_code == 0 and f"{a}: thing3" in res.output


def test_run_cli_takes_files_directories_and_globs_sorted_with_json(
        export_dir: Path, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("b.png", "a.png", "c.jpg"):
        _png(pics / name, 16, 16)
    (pics / "notes.txt").write_text("not an image")
    single = _png(tmp_path / "z.png", 10, 10)
    res = CliRunner().invoke(cli, ["run", str(export_dir), str(single), str(pics),
                                   str(tmp_path / "pics" / "*.png"), "--subnet", "w0.50-r16",
                                   "--json", "--top", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    # argument order, each expansion sorted, each file once (the glob repeats a and b)
    assert [Path(r["path"]).name for r in rows] == ["z.png", "a.png", "b.png", "c.jpg"]
    for r in rows:
        assert r["subnet"] == "w0.50-r16" and len(r["top"]) == 2
        assert r["top"][0] == {"label": "bird", "index": 2, "probability": 1.0}
    for args, message in (([str(tmp_path / "none*.png")], "no file matches"),
                          ([str(tmp_path / "empty")], "holds no images")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        res = CliRunner().invoke(cli, ["run", str(export_dir), *args])
        assert res.exit_code == 2 and message in res.output, res.output


def test_run_cli_strict_budget_and_labels_count(export_dir: Path, tmp_path: Path) -> None:
    a = _png(tmp_path / "a.png", 8, 8)
    res = CliRunner().invoke(cli, ["run", str(export_dir), str(a), "--budget-mmacs", "1e-6",
                                   "--strict"])
    assert res.exit_code == 1 and "below the smallest subnet w0.25-r12" in res.output
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    res = CliRunner().invoke(cli, ["run", str(export_dir), str(a), "--labels", str(labels)])
    assert res.exit_code == 2 and "2 class names but the model predicts 10" in res.output


def test_run_cli_bad_input(export_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["run", str(export_dir), str(tmp_path / "missing.png")])
    assert res.exit_code == 2 and "does not exist" in res.output
    txt = tmp_path / "x.png"
    txt.write_text("hello")
    res = runner.invoke(cli, ["run", str(export_dir), str(txt)])
    assert res.exit_code == 2 and "not an image" in res.output
    a = _png(tmp_path / "a.png", 8, 8)
    res = runner.invoke(cli, ["run", str(export_dir), str(a), "--budget-mflops", "1",
                              "--latency-ms", "1"])
    assert res.exit_code == 2
    res = runner.invoke(cli, ["run", str(export_dir), str(a), "--budget-mflops", "0.000001"])
    assert res.exit_code == 0 and "below the smallest" in res.output
    assert "Traceback" not in res.output
    binary = tmp_path / "labels.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    for labels, message in ((binary, "not a UTF-8 text file"), (empty, "no class names")):
        res = runner.invoke(cli, ["run", str(export_dir), str(a), "--labels", str(labels)])
        assert res.exit_code == 2 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_profile_cli(fresh_export: Path) -> None:
    res = CliRunner().invoke(cli, ["profile", str(fresh_export), "--duration", "0.02",
                                   "--batch", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "p99 ms" in res.output and "w1.00-r16" in res.output
    assert all(sn.latency for sn in load_manifest(fresh_export).subnets)
    res = CliRunner().invoke(cli, ["profile", str(fresh_export), "--duration", "0.02",
                                   "--batch", "1", "--no-progress"])
    assert res.exit_code == 0 and "profile:" not in res.output   # no tqdm bar
    res = CliRunner().invoke(cli, ["profile", str(fresh_export), "--batch", "x"])
    assert res.exit_code == 2

