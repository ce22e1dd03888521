"""Faults of `mutualnet run` (issue 12): bad input is exit 2, a refused budget exit 1; one
line each, no traceback, nothing in the export changed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from faultkit import assert_clean_failure, run_cli, snapshot

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from deploy_fixtures import make_export  # noqa: E402

from export.backends.onnxruntime import has_nvidia_device  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("faults_run") / "export")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("count", [3, 11])
def test_labels_with_another_line_count_than_the_classes(export_dir: Path, image: Path,
                                                          tmp_path: Path, count: int) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"name{i}\n" for i in range(count)))
    before = snapshot(export_dir, labels)
    r = run_cli(["run", export_dir, image, "--labels", labels])
    assert_clean_failure(r, 2, contains=f"{count} class names but the model predicts 10",
                         before=before, roots=[export_dir, labels])
    assert r.stdout == ""


@pytest.mark.skipif(has_nvidia_device(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_cuda_without_a_gpu_is_refused(export_dir: Path, image: Path,
                                              device: str) -> None:
    """As `train --device cuda` refuses; before, `run` silently used the CPU."""
    before = snapshot(export_dir)
    r = run_cli(["run", export_dir, image, "--device", device])
    assert_clean_failure(r, 2, contains=f"--device {device}: no CUDA device", before=before,
                         roots=[export_dir])


def test_unknown_device_is_a_usage_error(export_dir: Path, image: Path) -> None:
    r = run_cli(["run", export_dir, image, "--device", "tpu"])
    assert_clean_failure(r, 2, contains="'tpu' is not understood")


def test_strict_budget_below_the_smallest_exits_1(export_dir: Path, image: Path) -> None:
    before = snapshot(export_dir)
    r = run_cli(["run", export_dir, image, "--budget-mmacs", "0.000001", "--strict"])
    assert_clean_failure(r, 1, contains="below the smallest subnet w0.25-r12", before=before,
                         roots=[export_dir])


@pytest.mark.parametrize("args, contains", [
    (["--budget-mmacs", "-1"], "positive"),
    (["--budget-mmacs", "nan"], "finite"),
    (["--subnet", "w9.00-r1"], "no subnet 'w9.00-r1'"),
    (["--budget-mmacs", "1", "--subnet", "w0.25-r12"], "at most one of"),
])
def test_bad_run_options(export_dir: Path, image: Path, args: list[str],
                         contains: str) -> None:
    r = run_cli(["run", export_dir, image, *args])
    assert_clean_failure(r, 2, contains=contains)


def test_no_images_matched(export_dir: Path, tmp_path: Path) -> None:
    r = run_cli(["run", export_dir, str(tmp_path / "*.png")])
    assert_clean_failure(r, 2, contains="no file matches")
    r = run_cli(["run", export_dir, tmp_path])
    assert_clean_failure(r, 2, contains="holds no images")
