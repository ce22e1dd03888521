"""`mutualnet val`: the exported artifacts themselves on labelled images (export/val.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from export.backends.onnxruntime import OrtRunner
from export.manifest import file_entry, load_manifest, update_manifest
from export.parity_images import model_inputs, read_parity_images
from export.val import ValOptions, evaluate_export, write_val_report
from mutualnet.cli import cli

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "mutualnet" / "data" / "bundled" / "cifar10_subset.npz"
OPTS = ValOptions(progress=False, threads=1)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("val") / "export"
    r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--pairs",
                                 "0.25@24,0.5@32,1.0@32", "--calib-images", "128",
                                 "--eval-images", "100", "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_top1_equals_the_exports_own_ort_top1_on_its_parity_images(exported: Path) -> None:
    report = evaluate_export(exported, OPTS)
    parity = {s["id"]: s for s in json.loads((exported / "parity.json").read_text())["subnets"]}
    assert [r.subnet for r in report.rows] == load_manifest(exported).subnet_ids
    assert report.images == 100 and "parity_images.npz" in report.source
    for row in report.rows:
        assert row.precision == "fp32" and row.images == 100
        assert row.top1 == pytest.approx(parity[row.subnet]["accuracy"]["onnxruntime"], abs=1e-9)
        assert row.agreement == 1.0                     # fp32 against itself
        assert row.top1 <= row.top5 <= 100.0 and row.top5 > row.top1
        assert 0 < row.latency_mean_ms and 0 < row.latency_p90_ms
        assert row.backend == "onnxruntime"


def _with_fp16_copy(exported: Path, tmp: Path, sid: str) -> Path:
    """A copy of the export whose ``sid`` also lists its fp32 file as an "fp16" artifact."""
    root = tmp / "export"
    shutil.copytree(exported, root)
    src = root / "subnets" / sid / "model.onnx"
    dst = src.with_name("model.fp16.onnx")
    shutil.copy(src, dst)

    def add(doc: dict) -> None:
        entry = next(s for s in doc["subnets"] if s["id"] == sid)
        entry["files"]["onnx_fp16"] = file_entry(root, dst)

    update_manifest(root, add)
    load_manifest(root)   # hashes and sizes verify
    return root


def test_a_second_precision_is_a_second_row(exported: Path, tmp_path: Path) -> None:
    root = _with_fp16_copy(exported, tmp_path, "w0.50-r32")
    report = evaluate_export(root, OPTS)
    keys = [(r.subnet, r.precision) for r in report.rows]
    assert keys == [("w0.25-r24", "fp32"), ("w0.50-r32", "fp32"), ("w0.50-r32", "fp16"),
                    ("w1.00-r32", "fp32")]
    fp32, fp16 = report.rows[1], report.rows[2]
    assert fp16.agreement == 1.0 and (fp16.top1, fp16.top5) == (fp32.top1, fp32.top5)
    assert report.notes == ("w0.25-r24 has no fp16 artifact (left out at export)",
                            "w1.00-r32 has no fp16 artifact (left out at export)")
    only = evaluate_export(root, ValOptions(precisions=("fp16",), progress=False, threads=1))
    assert [(r.subnet, r.precision) for r in only.rows] == [("w0.50-r32", "fp16")]


def test_cli_prints_and_writes_the_table(exported: Path, tmp_path: Path) -> None:
    root = _with_fp16_copy(exported, tmp_path, "w1.00-r32")
    before = (root / "manifest.json").read_bytes()
    r = CliRunner().invoke(cli, ["val", str(root), "--batch", "25", "--limit", "50",
                                 "--no-progress", "--threads", "1"])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if line.startswith("| w")]
    assert len(rows) == 4 and "| w1.00-r32 | fp16 |" in r.output and "100.0%" in rows[-1]
    assert "50 labelled images" in r.output and "batch 25" in r.output
    assert rows == [ln for ln in (root / "val.md").read_text().splitlines()
                    if ln.startswith("| w")]
    doc = json.loads((root / "val.json").read_text())
    assert doc["images"] == 50 and len(doc["rows"]) == 4
    assert (root / "manifest.json").read_bytes() == before   # val changes no export file
    r = CliRunner().invoke(cli, ["val", str(root), "--precision", "fp32", "--json",
                                 "--no-progress", "--out", str(tmp_path / "elsewhere")])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output[r.output.index("{"):])
    assert [row["precision"] for row in printed["rows"]] == ["fp32"] * 3
    assert (tmp_path / "elsewhere" / "val.json").is_file()


def test_image_folder_classes_map_by_name(exported: Path, tmp_path: Path) -> None:
    """A folder with only cat/ and ship/ labels them 3 and 8 (the model's classes), as an
    independent ONNX Runtime run on the same pixels confirms."""
    from PIL import Image

    stored = read_parity_images(exported / "parity_images.npz")
    assert stored.labels is not None
    folder, picked = tmp_path / "imgs", []
    for k, name in ((3, "cat"), (8, "ship")):
        (folder / "val" / name).mkdir(parents=True)
        for j in np.flatnonzero(stored.labels == k):
            Image.fromarray(stored.images[j]).save(folder / "val" / name / f"{j:03d}.png")
            picked.append(j)
    report = evaluate_export(exported, ValOptions(data=str(folder), progress=False, threads=1))
    manifest = load_manifest(exported)
    images = np.asarray(stored.images)[sorted(picked, key=lambda j: (stored.labels[j], j))]
    labels = np.sort(stored.labels[picked])
    for row, sn in zip(report.rows, manifest.subnets, strict=True):
        x = model_inputs(manifest, list(images), sn.resolution, cropped=False)
        logits = OrtRunner(manifest.file(sn.onnx), threads=1).run(x)
        assert row.images == len(labels) == 20
        assert row.top1 == pytest.approx(np.mean(logits.argmax(1) == labels) * 100.0)


def test_cifar_jpeg_npz_is_read_without_torch(exported: Path, tmp_path: Path) -> None:
    """The shared CIFAR JPEG format (here the bundled subset, same format), torch blocked."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from export.val import ValOptions, evaluate_export\n"
            f"r = evaluate_export({str(exported)!r}, ValOptions(data={str(BUNDLED)!r}, "
            "limit=60, batch=16, progress=False, threads=1))\n"
            "assert 'mutualnet' not in sys.modules\n"
            "print(r.images, [round(x.top1, 2) for x in r.rows])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    images, top1 = p.stdout.split(" ", 1)
    assert images == "60" and len(json.loads(top1)) == 3
    assert all(0.0 <= t <= 100.0 for t in json.loads(top1))


def test_write_val_report_refuses_a_file_as_out(exported: Path, tmp_path: Path) -> None:
    from export.errors import ExportUsageError

    report = evaluate_export(exported, ValOptions(limit=8, progress=False, threads=1))
    (tmp_path / "f").write_text("")
    with pytest.raises(ExportUsageError, match="is a file"):
        write_val_report(report, tmp_path / "f")


def test_tensorrt_engines_are_rows_of_their_precision(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fake TensorRT: each subnet's recorded fp16 engine (built from the fp32 ONNX)
    is an fp16 row run by TensorRT; fp32, without an engine, runs in ONNX Runtime."""
    sys.path.insert(0, str(REPO / "tests" / "data"))
    import fake_tensorrt
    from deploy_fixtures import make_export

    root = make_export(tmp_path / "export")
    trt = fake_tensorrt.install(monkeypatch)
    fake_tensorrt.record_engines(root)
    npz = tmp_path / "labelled.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, images=rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8),
             labels=np.zeros(10, np.int64))
    report = evaluate_export(root, ValOptions(data=str(npz), backend="tensorrt", batch=4,
                                              progress=False, threads=1))
    ids = load_manifest(root).subnet_ids
    assert [(r.subnet, r.precision, r.backend) for r in report.rows] == [
        (sid, p, b) for sid in ids for p, b in (("fp32", "onnxruntime"), ("fp16", "tensorrt"))]
    assert all(r.agreement == 1.0 for r in report.rows)     # engines compute what ONNX does
    # every fixture subnet predicts its own marker class: only the first matches label 0
    assert [r.top1 for r in report.rows] == [100.0, 100.0] + [0.0] * 6
    assert report.device.startswith("tensorrt 10.3.0 on FakeGPU")
    assert len(trt.deserialized_on_core) >= 4          # the four engines were loaded
    r = CliRunner().invoke(cli, ["val", str(root), "--data", str(npz), "--backend",
                                 "tensorrt", "--precision", "int8", "--no-progress"])
    assert r.exit_code == 2 and "no int8 artifacts (it has fp32, fp16)" in r.output
