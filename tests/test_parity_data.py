"""Export without labels: an unlabelled folder, no data at all (synthetic, bundled), and the
TFLite MobileNet v1 0.25-128 import checked on the 8 photos as a plain folder."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from export.budget import candidates_from_manifest, choose
from export.manifest import load_manifest
from export.parity_data import NO_LABELS, plain_image_folder, synthetic_pixels
from export.parity_images import read_parity_images
from mutualnet.cli import cli

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mobilenet_v1_tflite"
PHOTOS = ("cat.bmp", "bird.bmp", "grace_hopper.bmp", "dragonfly.bmp", "parrot.jpg", "owl.jpg",
          "hot_dog.jpg", "pets.jpg")


def export(*args: str | Path) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["export", *map(str, args), "--no-progress"])
    return r.exit_code, r.output


def rows(output: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in output.splitlines() if line.startswith("| w")]


def assert_unlabelled_export(out: Path, output: str, images: int) -> None:
    """The table, parity.json, parity_images.npz and the manifest of an unlabelled export."""
    table = rows(output)
    assert table and "0.00" not in output
    for row in table:
        assert row[2:4] == [NO_LABELS, NO_LABELS] and row[4] == "100.0%" and row[-1] == "pass"
    report = json.loads((out / "parity.json").read_text())
    assert report["data"]["labelled"] is False and report["images"] == images
    for s in report["subnets"]:
        assert s["accuracy"] == NO_LABELS
        ort = s["parity"]["onnxruntime"]
        assert ort["top1_agreement"] == 1.0 and ort["accuracy_drop_pt"] is None
        assert ort["max_abs_diff"] <= report["gate"]["max_abs_diff"]
    stored = read_parity_images(out / "parity_images.npz")
    assert len(stored) == images and stored.labels is None
    manifest = load_manifest(out)
    for sn in manifest.subnets:
        assert all(a.top1 is None for a in sn.accuracy.values()) and sn.top1() is None
    # no accuracy recorded: the budget rule falls back on the largest within the budget
    choice = choose(candidates_from_manifest(manifest), mmacs=1e9)
    assert choice.subnet_id == manifest.subnets[-1].id and "no accuracy" in choice.message


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve bundled CIFAR test images saved as PNGs of mixed sizes in one plain folder."""
    from PIL import Image

    from mutualnet.data import BUNDLED_NPZ
    from mutualnet.data.readers import read_npz

    raw = read_npz(BUNDLED_NPZ, "val")
    folder = tmp_path_factory.mktemp("photos")
    for k, i in enumerate(np.linspace(0, len(raw) - 1, 12).astype(int)):
        size = 32 + 8 * (k % 3)
        Image.fromarray(raw.image(int(i))).resize((size, size + 4 * (k % 2))).save(
            folder / f"img{k:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_plain_image_folder_is_told_from_labelled_layouts(photo_folder: Path,
                                                          tmp_path: Path) -> None:
    assert plain_image_folder(str(photo_folder)) == photo_folder
    (tmp_path / "val" / "cat").mkdir(parents=True)
    shutil.copy(photo_folder / "img00.png", tmp_path / "val" / "cat")
    shutil.copy(photo_folder / "img01.png", tmp_path)
    assert plain_image_folder(str(tmp_path)) is None           # an ImageFolder root
    assert plain_image_folder(str(tmp_path / "val")) is None   # class folders only
    assert plain_image_folder(str(photo_folder / "img00.png")) is None


def test_export_with_an_unlabelled_folder_calibrates_and_checks_on_it(
        tiny_checkpoint: Path, photo_folder: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mutualnet.calibrate

    seen: list[int] = []
    real = mutualnet.calibrate.calibrate_bn

    def counting(model, width, resolution, data, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(len(data))
        return real(model, width, resolution, data, **kwargs)

    monkeypatch.setattr(mutualnet.calibrate, "calibrate_bn", counting)
    out = tmp_path / "out"
    code, output = export(tiny_checkpoint, "--pairs", "0.5@32,1.0@24", "--data", photo_folder,
                          "--calib-images", "12", "--eval-images", "10", "--out", out)
    assert code == 0, output
    assert seen == [12, 12]                       # BN calibrated on the unlabelled folder
    assert "note: no labels: parity compares the artifacts with the supernet on 10 " \
           "unlabelled images" in output
    assert_unlabelled_export(out, output, 10)
    assert "10 unlabelled images from" in (out / "parity.md").read_text()


def test_export_with_no_data_at_all_runs_on_synthetic_images(tiny_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = export(tiny_checkpoint, "--pairs", "0.25@24,1.0@32", "--data", "synthetic",
                          "--calib-images", "0", "--eval-images", "24", "--out", out)
    assert code == 0, output
    assert "24 synthetic images" in output
    assert_unlabelled_export(out, output, 24)
    # parity ran on exactly these images (CIFAR preprocessing: no resize, round trip exact)
    stored = read_parity_images(out / "parity_images.npz")
    assert np.array_equal(stored.images, synthetic_pixels(24, 32, seed=0))


def test_synthetic_images_are_seeded_and_varied() -> None:
    a, b = synthetic_pixels(6, 20, seed=3), synthetic_pixels(6, 20, seed=3)
    assert a.dtype == np.uint8 and a.shape == (6, 20, 20, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, synthetic_pixels(6, 20, seed=4))
    assert a.reshape(6, -1).std(1).min() > 10 and len({int(m) for m in a.mean((1, 2, 3))}) > 3


def test_synthetic_images_cannot_calibrate_bn(tiny_checkpoint: Path, tmp_path: Path) -> None:
    code, output = export(tiny_checkpoint, "--pairs", "1.0@32", "--data", "synthetic",
                          "--calib-images", "8", "--out", tmp_path / "out")
    assert code == 2 and "--calib-images 0" in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def dataless_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny_mobilenet saved as import-weights saves one without --dataset-dir: an
    ImageFolder data set with no folder, BN folded."""
    from mutualnet.checkpoint import build_model, save_checkpoint
    from mutualnet.config import TrainConfig

    cfg = TrainConfig(dataset="imagefolder")
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("dataless"), build_model(cfg).eval(), cfg,
                           extra_meta={"imported": {"format": "tflite", "bn_stats": "folded"}})


def test_checkpoint_without_data_falls_back_on_bundled_images(dataless_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = export(dataless_checkpoint, "--pairs", "1.0@32", "--eval-images", "20",
                          "--out", out)
    assert code == 0, output
    assert "records no data set" in output and "20 bundled CIFAR-10 test images" in output
    assert_unlabelled_export(out, output, 20)
    # preprocessing stays the checkpoint's (ImageNet statistics of an ImageFolder config)
    assert load_manifest(out).preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared TFLite data not found at {DATA}")
@pytest.mark.skipif(importlib.util.find_spec("tflite") is None,
                    reason="needs the tflite parser: pip install tflite")
def test_tflite_import_exports_on_a_plain_folder_of_photos(tmp_path: Path) -> None:
    """The README's pretrained example without an ImageFolder: the 8 photos as they are."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in PHOTOS:
        shutil.copy(DATA / p, photos / p)
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(cli, ["import-weights", str(DATA / "mobilenet_v1_0.25_128_quant.tflite"),
                                 "--model", "mobilenet_v1", "--classes", "1000", "--labels",
                                 str(DATA / "imagenet_labels.txt"), "--out", str(run_dir)])
    assert r.exit_code == 0, r.output
    out = run_dir / "export"
    code, output = export(run_dir, "--pairs", "0.25@128", "--data", photos, "--eval-images",
                          "8", "--out", out)
    assert code == 0, output
    assert_unlabelled_export(out, output, 8)
    assert load_manifest(out).preprocessing.resize_mode == "stretch"
