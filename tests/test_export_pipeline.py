"""`mutualnet export` end to end: grid, parity table, manifest, errors, atomicity."""

from __future__ import annotations

import errno
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import export.pipeline as pipeline
from export.manifest import load_manifest, sha256_file
from export.slicing import load_subnet
from mutualnet.cli import cli
from mutualnet.data import DataSpec, load_data, resize_to

GRID = ("--calib-images", "128", "--eval-images", "100", "--no-progress")
FAST = ("--calib-images", "0", "--eval-images", "32", "--no-progress")  # keep stored BN stats


def run(*args: str | Path):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export") / "deploy"
    result = run(tiny_checkpoint, "--widths", "0.25,0.5,1.0", "--resolutions", "32,24",
                 "--out", out, *GRID)
    return result, out


def test_export_grid_prints_parity_table_and_writes_manifest(exported) -> None:
    result, out = exported
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| w")]
    assert len(rows) == 6 and all(line.endswith("| pass |") for line in rows)
    assert "| subnet | MACs | PyTorch top-1 | ORT top-1 | agreement | precision |" in result.output
    assert (out / "parity.md").read_text().count("| pass |") == 6
    report = json.loads((out / "parity.json").read_text())
    assert [s["status"] for s in report["subnets"]] == ["ok"] * 6
    manifest = load_manifest(out)  # schema + sha256 + sizes of every file
    subnets = manifest.subnets
    assert [s.id for s in subnets] == ["w0.25-r24", "w0.50-r24", "w0.25-r32", "w0.50-r32",
                                       "w1.00-r24", "w1.00-r32"]
    assert [s.macs for s in subnets] == sorted(s.macs for s in subnets)
    for s in subnets:
        assert s.status == "ok"
        assert set(s.parity) == {"pytorch_sliced", "onnxruntime"}
        assert (s.parity["onnxruntime"].max_abs_diff or 1.0) <= 1e-4
        assert (s.parity["pytorch_sliced"].max_abs_diff or 1.0) <= 1e-4
        assert s.accuracy["pytorch"].top1 == s.accuracy["onnxruntime"].top1
        assert s.accuracy["pytorch"].images == 100
        # no eval/eval.json in this run: selection falls back on parity's accuracy
        assert s.selection_accuracy is not None and s.selection_accuracy.source == "parity"
        assert s.top1() == s.accuracy["onnxruntime"].top1
    assert manifest.model.classes[0] == "airplane"
    assert manifest.source_checkpoint.file == "checkpoint.safetensors"
    assert {"parity_md", "parity_json", "parity_images"} <= set(manifest.files)
    assert not list(out.parent.glob(".deploy.*"))  # no temporary directory or lock left


def test_manifest_subnets_reproduce_on_their_own(exported) -> None:
    """export -> load_manifest -> ONNX Runtime and the reloaded plain model, no supernet."""
    _, out = exported
    manifest = load_manifest(out)
    pre = manifest.preprocessing
    data = load_data(DataSpec(max_images=100), "val")
    x, y = next(data.batches(100, augment=False, shuffle=False))
    assert pre.crop == x.shape[-1] and list(pre.mean) == list(DataSpec().mean)
    for entry in manifest.subnets:
        r = entry.resolution
        xr = resize_to(x, r)
        session = ort.InferenceSession(str(manifest.file(entry.onnx)),
                                       providers=["CPUExecutionProvider"])
        logits = session.run(None, {"input": xr.numpy()})[0]
        top1 = float((logits.argmax(1) == y.numpy()).mean() * 100)
        assert top1 == pytest.approx(entry.accuracy["onnxruntime"].top1)
        plain = load_subnet(manifest.file(entry.files["arch"]))
        with torch.no_grad():
            assert np.abs(plain.module(xr).numpy() - logits).max() <= 1e-4


def test_parity_images_are_stored_and_reproduce_the_eval_inputs(exported) -> None:
    """parity_images.npz holds the held-out images parity used (uint8 at the crop, labels):
    through the runtime's preprocessing they give the exported inputs, and ONNX Runtime on
    them reproduces the recorded accuracy; build-engines reads them by default."""
    from export.parity_images import stored_parity_images
    from export.runtime import preprocess_images

    _, out = exported
    manifest = load_manifest(out)
    entry = manifest.files["parity_images"]
    assert entry.path == "parity_images.npz" and entry.size < 400_000   # 100 x 32 px
    stored = stored_parity_images(manifest, limit=1000)
    assert stored is not None and stored.cropped and len(stored) == 100
    assert stored.images.dtype == np.uint8 and stored.images.shape == (100, 32, 32, 3)
    data = load_data(DataSpec(max_images=100), "val")
    x, y = next(data.batches(100, augment=False, shuffle=False))
    assert (stored.labels == y.numpy()).all()
    pre = {**manifest.preprocessing.as_dict(), "resize": None}
    for sn in manifest.subnets[:2] + manifest.subnets[-1:]:
        r = sn.resolution
        mine = preprocess_images(stored.images, pre, r)
        np.testing.assert_allclose(mine, resize_to(x, r).numpy(), atol=2e-5)
        session = ort.InferenceSession(str(manifest.file(sn.onnx)),
                                       providers=["CPUExecutionProvider"])
        top1 = float((session.run(None, {"input": mine})[0].argmax(1) == stored.labels).mean())
        assert top1 * 100 == pytest.approx(sn.accuracy["onnxruntime"].top1)


def test_parity_images_are_capped_evenly(tmp_path: Path) -> None:
    pre = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "input_scale": 255.0,
           "crop": 8, "channel_order": "RGB"}
    u8 = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    mean, std = np.array(pre["mean"]), np.array(pre["std"])
    x = ((u8 / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    assert (pipeline.to_uint8_images([x[:6], x[6:]], pre) == u8).all()   # exact round trip
    bgr = pipeline.to_uint8_images([x[:, ::-1]], {**pre, "mean": mean[::-1].tolist(),
                                                  "std": std[::-1].tolist(),
                                                  "channel_order": "BGR"})
    assert (bgr == u8).all()                                   # stored as RGB
    entry, kept = pipeline.write_parity_images_file(tmp_path, [x], np.arange(10), pre,
                                                    max_bytes=4 * 8 * 8 * 3)
    assert kept == 4
    with np.load(tmp_path / entry["path"]) as z:
        assert (z["images"] == u8[[0, 3, 6, 9]]).all() and list(z["labels"]) == [0, 3, 6, 9]
        assert str(z["stage"]) == "cropped" and int(z["crop"]) == 8


def test_selection_accuracy_is_the_full_eval_when_the_run_has_one(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The manifest records the accuracy `best` reads: the run's eval/eval.json top-1 for
    the (w, r) it evaluated (for this very checkpoint), else parity's."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent, run_dir)
    ckpt = run_dir / tiny_checkpoint.name
    (run_dir / "eval").mkdir(exist_ok=True)
    point = {"width": 0.25, "resolution": 20, "macs": 1, "params": 1, "top1": 12.5,
             "top5": 50.0, "images": 10000}
    (run_dir / "eval" / "eval.json").write_text(json.dumps(
        {"label": "run", "sha256": sha256_file(ckpt), "points": [point]}))
    out = tmp_path / "out"
    r = run(ckpt, "--pairs", "0.25@20,1.0@32", "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    small, big = load_manifest(out).subnets
    assert small.selection_accuracy is not None and big.selection_accuracy is not None
    assert (small.selection_accuracy.source, small.top1()) == ("eval", 12.5)
    assert small.selection_accuracy.images == 10000
    assert big.selection_accuracy.source == "parity"
    assert big.top1() == big.accuracy["onnxruntime"].top1
    # an eval.json of other weights is not this checkpoint's accuracy
    (run_dir / "eval" / "eval.json").write_text(json.dumps(
        {"label": "run", "sha256": "0" * 64, "points": [point]}))
    r = run(ckpt, "--pairs", "0.25@20", "--out", out, "--force", *FAST)
    assert r.exit_code == 0, r.output
    assert load_manifest(out).subnets[0].selection_accuracy.source == "parity"


def test_pairs_and_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run(tiny_checkpoint, "--pairs", "0.25@20,1.0@32", "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    manifest = load_manifest(out)
    assert manifest.subnet_ids == ["w0.25-r20", "w1.00-r32"]
    assert manifest.subnets[0].accuracy["pytorch"].images == 32
    before = sha256_file(out / "manifest.json")
    r = run(tiny_checkpoint, "--pairs", "0.5@24", "--out", out, *FAST)
    assert r.exit_code == 2 and "--force" in r.output
    assert sha256_file(out / "manifest.json") == before
    (out / "notes.txt").write_text("mine")  # --force replaces only what the export wrote
    r = run(tiny_checkpoint, "--pairs", "0.5@24", "--out", out, "--force", *FAST)
    assert r.exit_code == 2 and "notes.txt" in r.output
    assert sha256_file(out / "manifest.json") == before
    (out / "notes.txt").unlink()
    r = run(tiny_checkpoint, "--pairs", "0.5@24", "--out", out, "--force", *FAST)
    assert r.exit_code == 0, r.output
    assert load_manifest(out).subnet_ids == ["w0.50-r24"]
    assert not (out / "subnets" / "w0.25-r20").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("args", "message"), [
    (("--widths", "0.1"), "outside the trained width range [0.25, 1]"),
    (("--widths", "1.5"), "outside the trained width range"),
    (("--resolutions", "2"), "below the model's minimum of 4 px"),
    (("--pairs", "0.5-24"), "write WIDTH@RESOLUTION"),
    (("--widths", "a"), "'a' is not a number"),
    (("--profile", "no-such-device"), "unknown deploy profile"),
    (("--data", "/no/such/file.npz"), "no such file or folder"),
])
def test_bad_input_is_a_one_line_usage_error(tiny_checkpoint: Path, tmp_path: Path, args,
                                             message: str) -> None:
    r = run(tiny_checkpoint, *args, "--out", tmp_path / "out", *FAST)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint_and_output_that_is_a_file(tmp_path: Path, tiny_checkpoint: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello")
    r = run(junk, "--out", tmp_path / "out", *FAST)
    assert r.exit_code == 2 and "not a readable safetensors checkpoint" in r.output
    r = run(tmp_path / "missing", "--out", tmp_path / "out", *FAST)
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "file").write_text("x")
    r = run(tiny_checkpoint, "--out", tmp_path / "file", *FAST)
    assert r.exit_code == 2 and "not a directory" in r.output


def test_disk_full_mid_export_leaves_nothing_half_written(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert run(tiny_checkpoint, "--pairs", "0.25@20", "--out", out, *FAST).exit_code == 0
    before = sha256_file(out / "manifest.json")
    real = pipeline.export_onnx
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "export_onnx", failing)
    for target, extra in ((tmp_path / "fresh", ()), (out, ("--force",))):
        calls.clear()
        r = run(tiny_checkpoint, "--pairs", "0.25@20,0.5@24", "--out", target, *extra, *FAST)
        assert r.exit_code == 1, r.output
        assert "disk full" in r.output and "nothing was written" in r.output
        assert "Traceback" not in r.output
    assert not (tmp_path / "fresh").exists()  # no half-written export, no manifest
    assert sha256_file(out / "manifest.json") == before  # --force kept the old one intact
    assert load_manifest(out).subnet_ids == ["w0.25-r20"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left


def test_parity_failure_exits_1_and_marks_the_manifest(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline.make_runner

    class Noisy:                          # a broken backend: logits off by 0.01
        max_batch = 0

        def __init__(self, runner) -> None:
            self.runner, self.name = runner, runner.name

        def run(self, x: np.ndarray) -> np.ndarray:
            return self.runner.run(x) + np.float32(1e-2)

        def close(self) -> None:
            self.runner.close()

    def noisy(backend: str, path: Path, **options):
        return Noisy(real(backend, path, **options))

    monkeypatch.setattr(pipeline, "make_runner", noisy)
    out = tmp_path / "out"
    r = run(tiny_checkpoint, "--pairs", "0.25@20,1.0@32", "--out", out, *FAST)
    assert r.exit_code == 1, r.output
    assert "2 of 2 subnets failed parity" in r.output and "FAIL (onnxruntime)" in r.output
    manifest = load_manifest(out)  # artifacts kept and verifiable
    for s in manifest.subnets:
        assert s.status == "parity_failed"
        assert s.parity["onnxruntime"].passed is False
        assert s.parity["onnxruntime"].tolerance_that_passes == pytest.approx(1e-2, rel=1e-3)
        assert s.parity["pytorch_sliced"].passed is True


# --------------------------------------------------------------------------- --engines

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_engines_without_tensorrt_keeps_export_writes_script_exits_1(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--pairs", "0.25@20",
                                 "--profile", "jetson-orin-nano", "--engines", "--out", str(out),
                                 *FAST])
    assert r.exit_code == 1, r.output
    assert "| w0.25-r20 |" in r.output and "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "pip install tensorrt" in errors[0]
    assert "build_engines.sh" in errors[0]
    script = out / "build_engines.sh"
    assert script.is_file() and script.stat().st_mode & 0o111
    assert "--saveEngine=engines/jetson-orin-nano/w0.25-r20.fp16.plan" in script.read_text()
    manifest = load_manifest(out)  # the export itself is whole and verifies
    assert manifest.subnet_ids == ["w0.25-r20"] and manifest.subnets[0].engines == ()
    assert manifest.profile.name == "jetson-orin-nano"


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
@pytest.mark.parametrize("precision, onnx, engine", [
    (None, "model.int8.onnx", "int8"), ("fp16", "model.fp16.onnx", "fp16")])
def test_dla_export_engines_build_the_int8_files_or_fp16_when_asked(
        tiny_checkpoint: Path, tmp_path: Path, precision: str | None, onnx: str,
        engine: str) -> None:
    """export --engines on the AGX Orin DLA profile: its engines come from each subnet's own
    Q/DQ model.int8.onnx (the profile's default), strongly typed; with --precision fp16 from
    model.fp16.onnx, and the manifest records fp16 as the engine precision."""
    out = tmp_path / "out"
    extra = ("--precision", precision) if precision else ()
    r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--pairs", "0.25@20",
                                 "--profile", "jetson-agx-orin", "--engines", "--out", str(out),
                                 "--gate", "int8_min_top1_agreement=0", "--gate",
                                 "int8_max_accuracy_drop_pt=100", *extra, *FAST])
    assert r.exit_code == 1 and "pip install tensorrt" in r.output, r.output
    text = (out / "build_engines.sh").read_text()
    assert f"--onnx=subnets/w0.25-r20/{onnx}" in text and "--stronglyTyped" in text
    assert f"--saveEngine=engines/jetson-agx-orin/w0.25-r20.{engine}.dla0.plan" in text
    assert "--useDLACore=0" in text and "--allowGPUFallback" in text
    assert "--fp16" not in text and "--int8" not in text
    assert load_manifest(out).profile.data["precision"] == engine


def test_engines_needs_a_tensorrt_profile(tiny_checkpoint: Path, tmp_path: Path) -> None:
    r = run(tiny_checkpoint, "--pairs", "0.25@20", "--engines", "--out", tmp_path / "out", *FAST)
    assert r.exit_code == 2 and "--engines needs a TensorRT deploy profile" in r.output
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- --data, BN stats

def test_data_override_applies_before_the_config_is_read(tmp_path: Path) -> None:
    from mutualnet.config import TrainConfig
    from mutualnet.errors import UsageError

    cfg = TrainConfig(dataset="imagefolder")  # as import-weights writes it: no dataset_dir
    with pytest.raises(UsageError, match="needs a root"):
        pipeline.resolve_data_spec(cfg, None)
    spec = pipeline.resolve_data_spec(cfg, f"imagefolder:{tmp_path}")
    assert (spec.dataset, spec.root) == ("imagefolder", str(tmp_path))
    assert pipeline.resolve_data_spec(cfg, str(tmp_path)).root == str(tmp_path)
    spec = pipeline.resolve_data_spec(TrainConfig(), "cifar10_bundled")
    assert (spec.dataset, spec.root) == ("cifar10_bundled", None)
    npz = tmp_path / "x.npz"
    npz.write_bytes(b"")
    spec = pipeline.resolve_data_spec(cfg, str(npz))
    assert (spec.dataset, spec.root) == ("npz", str(npz))


@pytest.fixture(scope="module")
def folded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny_mobilenet saved as an import whose BN is folded (as TFLite's is)."""
    from mutualnet.checkpoint import build_model, save_checkpoint
    from mutualnet.config import TrainConfig

    cfg = TrainConfig()
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("folded"), build_model(cfg).eval(), cfg,
                           extra_meta={"imported": {"format": "tflite", "bn_stats": "folded"}})


def test_folded_bn_import_keeps_stored_statistics_by_default(
        folded_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mutualnet.calibrate

    calls: list[int] = []
    real = mutualnet.calibrate.calibrate_bn

    def counting(*args, **kwargs):
        calls.append(kwargs["num_images"])
        return real(*args, **kwargs)

    monkeypatch.setattr(mutualnet.calibrate, "calibrate_bn", counting)
    args = ("export", str(folded_checkpoint), "--pairs", "1.0@32", "--eval-images", "16",
            "--no-progress")
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "note: BN statistics kept as stored (--calib-images 0)" in r.output
    assert calls == []
    r = CliRunner().invoke(cli, [*args, "--calib-images", "16", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "BN statistics kept" not in r.output and calls == [16]
    assert not pipeline.bn_stats_folded({}) and \
        not pipeline.bn_stats_folded({"imported": {"bn_stats": "file"}})


def test_export_refuses_more_subnets_than_a_dla_core_loads(tiny_checkpoint: Path,
                                                          tmp_path: Path) -> None:
    """A DLA core loads at most 16 engines: 17 pairs for a DLA profile are refused before
    any work (exit 2, the limit named), not at build-engines or at load on the device."""
    pairs = ",".join(f"{w}@{r}" for w in (0.25, 0.5, 0.75, 1.0) for r in (20, 24, 28, 32))
    out = tmp_path / "out"
    r = run(tiny_checkpoint, "--pairs", pairs + ",0.3@32", "--profile", "jetson-agx-orin",
            "--out", out, *FAST)
    assert r.exit_code == 2, r.output
    assert "17 subnets on DLA core 0" in r.output and "at most 16" in r.output
    assert not out.exists() and "Traceback" not in r.output
