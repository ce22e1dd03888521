"""`mutualnet export` end to end: grid, parity table, manifest, errors, atomicity."""

from __future__ import annotations

import errno
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


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small models on a shared 2-core CPU: one intra-op thread is far faster (no barriers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    assert "| subnet | MACs | PyTorch top-1 | ORT top-1 | agreement |" in result.output
    assert (out / "parity.md").read_text().count("| pass |") == 6
    report = json.loads((out / "parity.json").read_text())
    assert [s["status"] for s in report["subnets"]] == ["ok"] * 6
    manifest = load_manifest(out)  # schema + sha256 + sizes of every file
    subnets = manifest.subnets
    assert [s["id"] for s in subnets] == ["w0.25-r24", "w0.50-r24", "w0.25-r32", "w0.50-r32",
                                          "w1.00-r24", "w1.00-r32"]
    assert [s["macs"] for s in subnets] == sorted(s["macs"] for s in subnets)
    for s in subnets:
        assert s["status"] == "ok"
        assert set(s["parity"]) == {"pytorch_sliced", "onnxruntime"}
        assert s["parity"]["onnxruntime"]["max_abs_diff"] <= 1e-4
        assert s["parity"]["pytorch_sliced"]["max_abs_diff"] <= 1e-4
        assert s["accuracy"]["pytorch"]["top1"] == s["accuracy"]["onnxruntime"]["top1"]
        assert s["accuracy"]["pytorch"]["images"] == 100
    assert manifest.model["classes"][0] == "airplane"
    assert manifest.document["source_checkpoint"]["file"] == "checkpoint.safetensors"
    assert {"parity_md", "parity_json"} <= set(manifest.document["files"])
    assert not list(out.parent.glob(".deploy.*"))  # no temporary directory left behind


def test_manifest_subnets_reproduce_on_their_own(exported) -> None:
    """export -> load_manifest -> ONNX Runtime and the reloaded plain model, no supernet."""
    _, out = exported
    manifest = load_manifest(out)
    pre = manifest.preprocessing
    data = load_data(DataSpec(max_images=100), "val")
    x, y = next(data.batches(100, augment=False, shuffle=False))
    assert pre["crop"] == x.shape[-1] and pre["mean"] == list(DataSpec().mean)
    for entry in manifest.subnets:
        r = entry["resolution"]
        xr = resize_to(x, r)
        session = ort.InferenceSession(str(manifest.file(entry["files"]["onnx"]["path"])),
                                       providers=["CPUExecutionProvider"])
        logits = session.run(None, {"input": xr.numpy()})[0]
        top1 = float((logits.argmax(1) == y.numpy()).mean() * 100)
        assert top1 == pytest.approx(entry["accuracy"]["onnxruntime"]["top1"])
        plain = load_subnet(manifest.file(entry["files"]["arch"]["path"]))
        with torch.no_grad():
            assert np.abs(plain.module(xr).numpy() - logits).max() <= 1e-4


def test_pairs_and_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run(tiny_checkpoint, "--pairs", "0.25@20,1.0@32", "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    manifest = load_manifest(out)
    assert manifest.subnet_ids == ["w0.25-r20", "w1.00-r32"]
    assert manifest.subnets[0]["accuracy"]["pytorch"]["images"] == 32
    before = sha256_file(out / "manifest.json")
    r = run(tiny_checkpoint, "--pairs", "0.5@24", "--out", out, *FAST)
    assert r.exit_code == 2 and "--force" in r.output
    assert sha256_file(out / "manifest.json") == before
    (out / "stale.txt").write_text("old")
    r = run(tiny_checkpoint, "--pairs", "0.5@24", "--out", out, "--force", *FAST)
    assert r.exit_code == 0, r.output
    assert load_manifest(out).subnet_ids == ["w0.50-r24"]
    assert not (out / "stale.txt").exists() and not (out / "subnets" / "w0.25-r20").exists()


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

    def noisy(backend: str, path: Path, **options):
        runner = real(backend, path, **options)

        def run_noisy(x: np.ndarray) -> np.ndarray:
            return runner(x) + np.float32(1e-2)  # a broken backend: logits off by 0.01

        run_noisy.name = runner.name  # type: ignore[attr-defined]
        return run_noisy

    monkeypatch.setattr(pipeline, "make_runner", noisy)
    out = tmp_path / "out"
    r = run(tiny_checkpoint, "--pairs", "0.25@20,1.0@32", "--out", out, *FAST)
    assert r.exit_code == 1, r.output
    assert "2 of 2 subnets failed parity" in r.output and "FAIL (onnxruntime)" in r.output
    manifest = load_manifest(out)  # artifacts kept and verifiable
    for s in manifest.subnets:
        assert s["status"] == "parity_failed"
        assert s["parity"]["onnxruntime"]["passed"] is False
        assert s["parity"]["onnxruntime"]["tolerance_that_passes"] == pytest.approx(1e-2,
                                                                                   rel=1e-3)
        assert s["parity"]["pytorch_sliced"]["passed"] is True
