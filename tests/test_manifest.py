"""Manifest: schema, golden file, atomic write, checksum/path verification, `mutualnet verify`."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "data"))
from deploy_fixtures import make_export  # noqa: E402

from export.errors import ManifestError  # noqa: E402
from export.manifest import (  # noqa: E402
    MANIFEST_FILE,
    SCHEMA_VERSION,
    file_entry,
    load_manifest,
    load_schema,
    subnet_id,
    update_manifest,
    write_manifest,
)
from mutualnet.cli import cli  # noqa: E402

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_manifest"
GOLDEN_GRID = ((0.25, 12, 40.0), (1.0, 16, 65.0))
# sha256 of export/manifest.schema.json for schema_version 1. A change to the schema that
# old manifests may not satisfy needs SCHEMA_VERSION bumped; then update this pin.
SCHEMA_V1_SHA256 = (DATA / "manifest_schema_v1.sha256").read_text().split()[0]


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return make_export(tmp_path / "export")


def _doc(root: Path) -> dict:
    return json.loads((root / MANIFEST_FILE).read_text())


def _mask_hashes(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for sn in doc["subnets"]:
        for entry in sn["files"].values():
            entry["sha256"], entry["size"] = "<sha256>", "<size>"
    return doc


# ------------------------------------------------------------------ golden / schema

def test_schema_is_pinned_for_version_1() -> None:
    text = (Path(__file__).parents[1] / "export" / "manifest.schema.json").read_bytes()
    assert SCHEMA_VERSION == 1
    assert hashlib.sha256(text).hexdigest() == SCHEMA_V1_SHA256, (
        "export/manifest.schema.json changed: if old manifests can fail it, bump SCHEMA_VERSION; "
        "then update tests/data/manifest_schema_v1.sha256 and the golden manifest")
    assert load_schema()["properties"]["schema_version"] == {"const": 1}


def test_golden_manifest_loads_and_verifies() -> None:
    m = load_manifest(GOLDEN)
    assert m.schema_version == 1
    assert m.subnet_ids == ["w0.25-r12", "w1.00-r16"]
    assert m.classes[0] == "airplane" and len(m.classes) == 10
    assert m.preprocessing.crop == 16 and m.preprocessing.resize is None
    assert m.profile.name == "cpu" and m.profile.max_batch == 8
    sn = m.subnet("w0.25-r12")
    assert sn.onnx.path == "subnets/w0.25-r12/model.onnx" and sn.onnx.size == 1536
    assert sn.input.shape == ("N", 3, 12, 12) and sn.output.name == "logits"
    assert sn.accuracy["onnxruntime"].top1 == 40.0 and sn.parity["onnxruntime"].passed
    assert sn.top1() == 40.0 and sn.selection_accuracy is None and sn.engines == ()
    assert m.file("subnets/w0.25-r12/model.onnx").is_file()


def test_written_document_matches_golden_shape(tmp_path: Path) -> None:
    fresh = make_export(tmp_path / "fresh", grid=GOLDEN_GRID)
    assert _mask_hashes(_doc(fresh)) == _mask_hashes(_doc(GOLDEN))
    # key order is part of the pinned shape (a human reads this file)
    assert list(_doc(fresh)) == list(_doc(GOLDEN))
    assert list(_doc(fresh)["subnets"][0]) == list(_doc(GOLDEN)["subnets"][0])


def test_subnet_id_format() -> None:
    assert subnet_id(0.5, 160) == "w0.50-r160"
    assert subnet_id(1, 224) == "w1.00-r224"
    assert subnet_id(0.25, 32) == "w0.25-r32"


# ------------------------------------------------------------------ write

def test_roundtrip_and_summary(export_dir: Path) -> None:
    m = load_manifest(export_dir / MANIFEST_FILE)
    assert m.root == export_dir.resolve()
    assert [s.macs for s in m.subnets] == sorted(s.macs for s in m.subnets)
    line = m.summary()
    assert "\n" not in line and "4 subnets" in line and "8 files verified" in line


@pytest.mark.parametrize("mode", ["shorter_side", "stretch", None])
def test_resize_mode_is_optional_in_schema_version_1(export_dir: Path, mode: str | None) -> None:
    """``preprocessing.resize_mode`` was added to schema 1 as an optional key: manifests
    written before it (no key, as the golden one) and after it both load."""
    doc = _doc(export_dir)
    doc["preprocessing"].pop("resize_mode", None)
    if mode is not None:
        doc["preprocessing"]["resize_mode"] = mode
    write_manifest(export_dir, doc)
    assert load_manifest(export_dir).preprocessing.resize_mode == mode
    assert "resize_mode" not in load_manifest(GOLDEN).preprocessing.as_dict()


def test_write_sorts_subnets_by_macs(export_dir: Path) -> None:
    doc = _doc(export_dir)
    doc["subnets"].reverse()
    write_manifest(export_dir, doc)
    macs = [s["macs"] for s in _doc(export_dir)["subnets"]]
    assert macs == sorted(macs)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("preprocessing"), "preprocessing"),
    (lambda d: d["subnets"][0].update(status="great"), "status"),
    (lambda d: d["subnets"][0]["files"]["onnx"].update(sha256="abc"), "sha256"),
    (lambda d: d["subnets"][0]["files"]["onnx"].update(extra=1), "extra"),
    (lambda d: d["subnets"][1].update(id=d["subnets"][0]["id"]), "does not match|twice"),
    (lambda d: d["subnets"][0].update(id="w0.99-r12"), "does not match"),
    (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
    (lambda d: d["subnets"][0]["files"]["onnx"].update(path="/etc/passwd"), "path"),
    (lambda d: d["subnets"][0]["files"]["onnx"].update(path="a/../../x"), "path"),
    (lambda d: d["preprocessing"].update(resize_mode="crop"), "resize_mode"),
])
def test_write_rejects_invalid_documents(export_dir: Path, mutate, match: str) -> None:
    before = (export_dir / MANIFEST_FILE).read_bytes()
    doc = _doc(export_dir)
    mutate(doc)
    with pytest.raises(ManifestError, match=match):
        write_manifest(export_dir, doc)
    assert (export_dir / MANIFEST_FILE).read_bytes() == before


def test_crash_during_write_leaves_old_manifest(export_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = (export_dir / MANIFEST_FILE).read_bytes()
    doc = _doc(export_dir)
    doc["generator"] = "changed"

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ManifestError, match="No space left"):
        write_manifest(export_dir, doc)
    monkeypatch.undo()
    assert (export_dir / MANIFEST_FILE).read_bytes() == before
    assert [p.name for p in export_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_update_manifest_rehashes_nothing(export_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import export.manifest as mod

    def no_hash(*a, **k):
        raise AssertionError("update_manifest must not hash files")

    monkeypatch.setattr(mod, "sha256_file", no_hash)
    m = update_manifest(export_dir, lambda d: d["subnets"][0]["latency"].update(
        {"x [onnxruntime]": {"backend": "onnxruntime", "batch": 1, "p50_ms": 1.0,
                             "p90_ms": 1.0, "p99_ms": 1.0, "throughput_ips": 1000.0,
                             "power_mode": None, "measured": "2026-01-01T00:00:00Z"}}))
    rec = m.subnets[0].latency["x [onnxruntime]"]
    assert rec.backend == "onnxruntime" and rec.p90_at(1) == 1.0 and rec.p90_at(8) is None


def test_file_entry(export_dir: Path, tmp_path: Path) -> None:
    e = file_entry(export_dir, export_dir / "subnets" / "w0.25-r12" / "model.onnx")
    assert e["path"] == "subnets/w0.25-r12/model.onnx" and len(e["sha256"]) == 64
    assert file_entry(export_dir, "subnets/w0.25-r12/model.onnx") == e
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    with pytest.raises(ManifestError, match="not inside"):
        file_entry(export_dir, outside)


# ------------------------------------------------------------------ load / tamper

def test_tampered_file_is_detected(export_dir: Path) -> None:
    onnx = export_dir / "subnets" / "w0.50-r12" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-5] ^= 0xFF                      # same size, different content
    onnx.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"sha256 of subnets/w0.50-r12/model.onnx"):
        load_manifest(export_dir)
    load_manifest(export_dir, verify_files=False)   # schema-only load still works


def test_truncated_and_missing_files(export_dir: Path) -> None:
    arch = export_dir / "subnets" / "w0.25-r12" / "arch.json"
    arch.write_text(arch.read_text()[:-3])
    with pytest.raises(ManifestError, match="bytes, the manifest records"):
        load_manifest(export_dir)
    arch.unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(export_dir)


def _rewrite_path(root: Path, new_path: str) -> None:
    doc = _doc(root)
    doc["subnets"][0]["files"]["arch"]["path"] = new_path
    (root / MANIFEST_FILE).write_text(json.dumps(doc))   # a hand edit, bypassing the writer


@pytest.mark.parametrize("bad", ["/etc/hostname", "../outside.json",
                                 "subnets/../../outside.json", "subnets\\w0.25-r12\\arch.json"])
def test_paths_escaping_the_directory_are_rejected(export_dir: Path, bad: str) -> None:
    _rewrite_path(export_dir, bad)
    with pytest.raises(ManifestError):
        load_manifest(export_dir)


def test_symlink_escaping_the_directory_is_rejected(export_dir: Path, tmp_path: Path) -> None:
    arch = export_dir / "subnets" / "w0.25-r12" / "arch.json"
    outside = tmp_path / "secret.json"
    shutil.copy(arch, outside)              # identical bytes: only the link is wrong
    arch.unlink()
    arch.symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the manifest's directory"):
        load_manifest(export_dir)


def test_symlink_inside_the_directory_is_fine(export_dir: Path) -> None:
    arch = export_dir / "subnets" / "w0.25-r12" / "arch.json"
    real = export_dir / "arch-real.json"
    shutil.move(arch, real)
    arch.symlink_to(real)
    load_manifest(export_dir)


def test_misordered_hand_edit_and_bad_json(export_dir: Path) -> None:
    doc = _doc(export_dir)
    doc["subnets"].reverse()
    (export_dir / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="ordered by MACs"):
        load_manifest(export_dir)
    (export_dir / MANIFEST_FILE).write_text('{"schema_version": 1, "subnets": [')
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(export_dir)


# ------------------------------------------------------------------ CLI

def test_verify_cli_ok(export_dir: Path) -> None:
    res = CliRunner().invoke(cli, ["verify", str(export_dir)])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("OK ") and "4 subnets" in lines[0]


def test_verify_cli_reports_tamper(export_dir: Path) -> None:
    (export_dir / "subnets" / "w1.00-r16" / "model.onnx").write_bytes(b"not an onnx")
    res = CliRunner().invoke(cli, ["verify", str(export_dir)])
    assert res.exit_code == 1
    assert "w1.00-r16" in res.output and "Traceback" not in res.output


def test_verify_cli_missing_dir(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["verify", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "no manifest" in res.output


def test_records_parse_engines_latency_and_selection_accuracy(export_dir: Path) -> None:
    """Every reader goes through the typed records: engine, latency by batch, selection."""
    def mutate(doc: dict) -> None:
        sn = doc["subnets"][1]
        sn["selection_accuracy"] = {"top1": 77.5, "source": "eval", "images": 10000}
        sn["engines"].append({**sn["files"]["onnx"], "tensorrt_version": "10.3.0",
                              "gpu_name": "Orin", "compute_capability": "8.7",
                              "precision": "fp16", "dla_core": 1, "built": "2026-01-01",
                              "layer_precisions": {"fp16": 3}, "max_batch": 1,
                              "parity": {"passed": True, "top1_agreement": 1.0}})
        sn["latency"]["Orin [tensorrt]"] = {
            "device": "Orin", "backend": "tensorrt", "batch": 2, "p50_ms": 1.0, "p90_ms": 1.5,
            "p99_ms": 2.0, "throughput_ips": 1.0, "power_mode": "MAXN", "measured": "x",
            "by_batch": [{"batch": 1, "p50_ms": 0.5, "p90_ms": 0.75, "p99_ms": 1.0,
                          "throughput_ips": 2.0}]}

    m = update_manifest(export_dir, mutate)
    sn = m.subnets[1]
    assert sn.top1() == 77.5 and sn.selection_accuracy is not None
    assert sn.selection_accuracy.source == "eval"
    eng = sn.engines[0]
    assert eng.dla_core == 1 and eng.path == sn.onnx.path and eng.layer_precisions == {"fp16": 3}
    assert eng.parity is not None and eng.parity.passed and eng.max_batch == 1
    lat = sn.latency["Orin [tensorrt]"]
    assert lat.p90_at(2) == 1.5 and lat.p90_at(1) == 0.75 and lat.power_mode == "MAXN"
    with pytest.raises(TypeError):
        sn.files["x"] = sn.onnx  # type: ignore[index]  # records are read-only


def test_wrongly_typed_field_is_a_manifest_error(export_dir: Path) -> None:
    from export.manifest import parse_manifest

    doc = _doc(export_dir)
    doc["subnets"][0]["files"]["onnx"]["size"] = "many"   # the schema would refuse it too
    with pytest.raises(ManifestError, match="wrong type"):
        parse_manifest(doc, export_dir / MANIFEST_FILE)
