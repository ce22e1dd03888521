"""Hostile and unusual image files through ``mutualnet run`` on a tiny export.

Bad files end in exit 2 with one line that names the problem, before any model is loaded,
and change nothing; 16-bit and float images, once read as near-white or black, are now
scaled by their bit depth and classified exactly like their 8-bit versions.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faultkit import assert_clean_failure, run_cli, snapshot
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from deploy_fixtures import make_export  # noqa: E402
from image_files import write_huge_png, write_png16  # noqa: E402

from export.preprocess import read_image  # noqa: E402
from export.runtime import SubnetRuntime  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("faults_images") / "export")


def _gray(h: int = 24, w: int = 20) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 11 + yy * 5) % 256).astype(np.uint8)


def _refused(export_dir: Path, tmp_path: Path, image: Path, contains: str,
             *extra: str) -> None:
    before = snapshot(export_dir, tmp_path)
    r = run_cli(["run", export_dir, image, *extra])
    assert_clean_failure(r, 2, contains=contains, before=before, roots=[export_dir, tmp_path])


def _prediction(export_dir: Path, image: Path) -> str:
    r = run_cli(["run", export_dir, image, "--top", "3"])
    assert r.code == 0, r.stderr
    return r.stdout.split(": ", 1)[1]


@pytest.mark.parametrize("kind", ["png16-gray", "png16-rgb", "tiff-float"])
def test_high_bit_depth_images_classify_like_their_8_bit_versions(
        export_dir: Path, tmp_path: Path, kind: str) -> None:
    gray = _gray()
    eight = tmp_path / "eight.png"
    if kind == "png16-rgb":
        rgb = np.stack([gray, 255 - gray, gray // 2], axis=2)
        Image.fromarray(rgb).save(eight)
        deep = write_png16(tmp_path / "deep.png", rgb.astype(np.uint16) * 257)
    else:
        Image.fromarray(gray).save(eight)
        deep = tmp_path / ("deep.png" if kind == "png16-gray" else "deep.tif")
        pixels = gray.astype(np.uint16) * 257 if kind == "png16-gray" \
            else gray.astype(np.float32) / 255.0
        Image.fromarray(pixels).save(deep)
    assert _prediction(export_dir, deep) == _prediction(export_dir, eight)
    with SubnetRuntime.load(export_dir, backend="onnxruntime", threads=1) as rt:
        same = rt.infer([read_image(deep)]).logits
        ref = rt.infer([read_image(eight)]).logits
        white = rt.infer([np.full((24, 20, 3), 255, np.uint8)]).logits   # the old reading
    np.testing.assert_array_equal(same, ref)
    assert not np.allclose(white, ref)


def test_float_tiff_outside_0_1_is_refused(export_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "f255.tif"
    Image.fromarray(_gray().astype(np.float32)).save(f)
    _refused(export_dir, tmp_path, f, "outside 0..1")


def test_huge_dimension_png_is_refused_from_its_header(export_dir: Path, tmp_path: Path) -> None:
    huge = write_huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 200_000
    t0 = time.perf_counter()
    _refused(export_dir, tmp_path, huge, "144,000,000 pixels, over the limit")
    assert time.perf_counter() - t0 < 15   # the process itself; decoding would take 20 s+


def test_max_pixels_option(export_dir: Path, tmp_path: Path) -> None:
    img = tmp_path / "small.png"
    Image.fromarray(_gray()).save(img)
    _refused(export_dir, tmp_path, img, "over the limit of 100", "--max-pixels", "100")
    r = run_cli(["run", export_dir, img, "--max-pixels", str(24 * 20)])
    assert r.code == 0, r.stderr


def test_truncated_jpeg(export_dir: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    Image.fromarray(np.stack([_gray(64, 64)] * 3, axis=2)).save(full, quality=90)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _refused(export_dir, tmp_path, bad, "truncated or corrupt")


def test_corrupt_png(export_dir: Path, tmp_path: Path) -> None:
    ok = tmp_path / "ok.png"
    Image.fromarray(_gray(64, 64)).save(ok)
    data = ok.read_bytes()
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(data[:60] + bytes(64) + data[124:])
    _refused(export_dir, tmp_path, bad, "truncated or corrupt")


@pytest.mark.parametrize("name, content, message", [
    ("notes.jpg", b"just some text\n", "not an image file"),
    ("random.png", bytes(range(256)) * 8, "not an image file"),
    ("empty.png", b"", "empty file"),
    ("header-only.png", b"\x89PNG\r\n\x1a\n", "not an image file"),
])
def test_files_that_are_not_images(export_dir: Path, tmp_path: Path, name: str,
                                   content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    _refused(export_dir, tmp_path, path, message)


def test_missing_path(export_dir: Path, tmp_path: Path) -> None:
    _refused(export_dir, tmp_path, tmp_path / "no_such.png", "does not exist")


def test_a_directory_without_images(export_dir: Path, tmp_path: Path) -> None:
    """A directory where an image is expected (and none inside it) is refused."""
    folder = tmp_path / "folder.png"
    folder.mkdir()
    before = snapshot(export_dir, tmp_path)
    r = run_cli(["run", export_dir, folder])
    assert_clean_failure(r, 2, before=before, roots=[export_dir, tmp_path])


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root reads unreadable files")
def test_unreadable_file(export_dir: Path, tmp_path: Path) -> None:
    img = tmp_path / "locked.png"
    Image.fromarray(_gray()).save(img)
    img.chmod(0)
    try:
        _refused(export_dir, tmp_path, img, "permission denied")
    finally:
        img.chmod(0o644)
