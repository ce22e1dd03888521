"""Faults of `mutualnet val`: bad input is exit 2 with one line, no traceback, and nothing
in the export or the data changed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from faultkit import assert_clean_failure, run_cli, snapshot

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from deploy_fixtures import make_export  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fp32-only export (no parity_images.npz: as written before they were stored)."""
    return make_export(tmp_path_factory.mktemp("faults_val") / "export")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(folder / f"p{i}.png")
    return folder


def _fails(args: list[str | Path], contains: str, *roots: Path) -> None:
    before = snapshot(*roots)
    r = run_cli(["val", *args, "--no-progress"])
    assert_clean_failure(r, 2, contains=contains, before=before, roots=list(roots))
    assert r.stdout == ""


def test_a_directory_without_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    _fails([tmp_path], "holds no manifest.json", tmp_path)


def test_missing_data(export_dir: Path, tmp_path: Path) -> None:
    _fails([export_dir, "--data", tmp_path / "nope"], "no such file or folder", export_dir)


def test_unreadable_data(export_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "images.npz"
    bad.write_text("not a zip archive")
    _fails([export_dir, "--data", bad], "is not an .npz file", export_dir, bad)


def test_a_folder_without_labels_points_at_export_parity(export_dir: Path,
                                                         photos: Path) -> None:
    _fails([export_dir, "--data", photos], "val needs labels", export_dir, photos)
    r = run_cli(["val", export_dir, "--data", photos, "--no-progress"])
    assert "mutualnet export CHECKPOINT --data DIR" in r.stderr


def test_an_npz_without_labels(export_dir: Path, tmp_path: Path) -> None:
    npz = tmp_path / "x.npz"
    np.savez(npz, images=np.zeros((4, 16, 16, 3), np.uint8))
    _fails([export_dir, "--data", npz], "without labels", export_dir, npz)


def test_labels_beyond_the_models_classes(export_dir: Path, tmp_path: Path) -> None:
    npz = tmp_path / "x.npz"
    np.savez(npz, images=np.zeros((4, 16, 16, 3), np.uint8), labels=np.array([0, 1, 2, 40]))
    _fails([export_dir, "--data", npz], "the model predicts 10 classes", export_dir, npz)


def test_no_stored_parity_images_and_no_data(export_dir: Path) -> None:
    _fails([export_dir], "holds no parity_images.npz", export_dir)


@pytest.mark.parametrize("precision, contains", [
    ("fp64", "unknown precision fp64"),
    ("int8", "the export holds no int8 artifacts (it has fp32)"),
    ("fp32,fp16", "the export holds no fp16 artifacts"),
])
def test_bad_precisions(export_dir: Path, precision: str, contains: str) -> None:
    _fails([export_dir, "--precision", precision], contains, export_dir)
