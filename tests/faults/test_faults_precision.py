"""Faults of `mutualnet export --precision` (issue 14): exit 2, one line, no traceback,
nothing written. All are caught before the checkpoint is read, so a placeholder checkpoint
file is enough (reading it would be a different error)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import assert_clean_failure, run_cli, snapshot


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "checkpoint.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"not read: the usage error comes first")
    return path


def _export(ckpt: Path, *args: str | Path):
    return run_cli(["export", ckpt, "--out", ckpt.parent / "out", "--no-progress", *args])


@pytest.mark.parametrize("value, message", [
    ("fp32,int4", "unknown precision 'int4'"),
    ("bf16", "unknown precision 'bf16'"),
    (",", "--precision needs at least one"),
])
def test_unknown_precision(ckpt: Path, value: str, message: str) -> None:
    before = snapshot(ckpt.parent)
    r = _export(ckpt, "--precision", value)
    assert_clean_failure(r, 2, contains=message, before=before, roots=[ckpt.parent])
    assert not (ckpt.parent / "out").exists()


def test_int8_on_a_profile_whose_device_cannot_run_it(ckpt: Path, tmp_path: Path) -> None:
    prof = tmp_path / "pascal.yml"
    prof.write_text("name: pascal\nruntime: onnxruntime\nprecision: fp32\n"
                    "device_precisions: [fp32, fp16]\nprecisions: [fp32]\n")
    before = snapshot(ckpt.parent, prof)
    r = _export(ckpt, "--profile", prof, "--precision", "int8")
    assert_clean_failure(r, 2, contains="deploy profile pascal cannot run int8", before=before,
                         roots=[ckpt.parent, prof])


def test_fp32_on_the_dla_profile(ckpt: Path) -> None:
    r = _export(ckpt, "--profile", "jetson-agx-orin", "--precision", "fp32,int8")
    assert_clean_failure(r, 2, contains="jetson-agx-orin cannot run fp32")


def test_calibration_folder_with_no_images(ckpt: Path, tmp_path: Path) -> None:
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here\n")
    before = snapshot(ckpt.parent, empty)
    r = _export(ckpt, "--precision", "int8", "--calib-data", empty)
    assert_clean_failure(r, 2, contains=f"--calib-data {empty} holds no images",
                         before=before, roots=[ckpt.parent, empty])


def test_calibration_path_that_is_a_file(ckpt: Path) -> None:
    r = _export(ckpt, "--precision", "int8", "--calib-data", ckpt)
    assert_clean_failure(r, 2, contains="not a folder")
