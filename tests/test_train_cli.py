"""`mutualnet train`, `eval`, `best`: exit codes, one-line errors, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mutualnet.cli import cli

QUICK = ["--set", "max_train_images=128", "--set", "batch_size=64", "--set",
         "eval_each_epoch=false", "--device", "cpu", "--no-progress"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("args, match", [
    (["train", "--set", "bogus=1"], "unknown config key 'bogus'"),
    (["train", "no/such/config.yml"], "not found"),
    (["train", "--set", "lr=abc"], "lr must be a number"),
    (["train", "--set", "lr"], "expected key=value"),
    (["train", "--set", "dataset=cifar100"], "needs a root"),
    (["eval", "no/such/run"], "does not exist"),
    (["best", "no/such/eval.json", "--budget-mflops", "1"], "not found"),
    (["eval", "x", "--widths", "a,b"], "not a number"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], match: str) -> None:
    code, out = run(*args, *(["--no-progress"] if args[0] == "train" else []))
    assert code == 2, out
    assert match in out
    assert len([line for line in out.splitlines() if line.startswith("Error")]) <= 1


def test_corrupt_checkpoint_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    code, out = run("eval", tmp_path)
    assert code == 2 and ("corrupt" in out or "not a readable" in out), out


def test_train_resume_and_refuse_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = run("train", "--epochs", "1", "--out", out, *QUICK)
    assert code == 0, text
    assert "trained 1 epochs (2 steps)" in text
    assert (out / "checkpoint.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    code, text = run("train", "--epochs", "1", "--out", out, *QUICK)
    assert code == 2 and "--resume" in text
    code, text = run("train", "--resume", "--out", out, "--quiet")  # the run's own config
    assert code == 0 and "already completed 1 of 1 epochs" in text


def test_eval_best_and_test_only(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ev = tmp_path / "ev"
    code, text = run("eval", tiny_checkpoint, "--widths", "0.25,1.0", "--resolutions", "32,20",
                     "--limit", "200", "--calib-images", "200", "--out", ev, "--no-progress")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["width", "res", "MACs", "top-1", "top-5"]
    assert {p.name for p in ev.iterdir()} == {"eval.csv", "eval.json", "eval.png"}
    points = json.loads((ev / "eval.json").read_text())["points"]
    assert [p["macs"] for p in points] == sorted(p["macs"] for p in points)

    code, text = run("best", ev / "eval.json", "--budget-mflops", "0.5", "--json")
    assert code == 0, text
    chosen = json.loads(text)
    assert chosen["mmacs"] <= 0.5 and chosen["fits"] is True
    assert chosen["top1"] == max(p["top1"] for p in points if p["mflops"] <= 0.5)
    code, text = run("best", ev, "--budget-mmacs", "0.01", "--strict")
    assert code == 1 and "below the smallest" in text
    code, text = run("best", ev, "--budget-mmacs", "0.01")   # falls back, with a note
    assert code == 0 and "note: budget 0.01 M MACs is below the smallest" in text

    out = tmp_path / "test_only"
    code, text = run("train", "--set", "test_only=true", "--set", f"pretrained={tiny_checkpoint}",
                     "--set", "width_mult_list=[0.25, 0.5, 1.0]", "--set", "resolution_list=[32]",
                     "--set", "max_val_images=100", "--set", "calib_images=100",
                     "--out", out, "--quiet")
    assert code == 0, text
    assert len(json.loads((out / "eval" / "eval.json").read_text())["points"]) == 3

    code, text = run("train", "--set", "model=mobilenet_v1", "--set", "test_only=true",
                     "--set", f"pretrained={tiny_checkpoint}", "--out", out, "--no-progress")
    assert code == 2 and "'tiny_mobilenet'" in text and "'mobilenet_v1'" in text


def test_test_only_evaluates_external_torchvision_weights(tmp_path: Path) -> None:
    """test_only + pretrained: a torchvision .pth is imported, saved and evaluated (32 px)."""
    torchvision = pytest.importorskip("torchvision")
    from mutualnet.checkpoint import load_checkpoint

    torch.manual_seed(0)
    pth = tmp_path / "mobilenet_v2.pth"
    torch.save(torchvision.models.mobilenet_v2(num_classes=10).state_dict(), pth)
    out = tmp_path / "run"
    code, text = run("train", "--set", "model=mobilenet_v2", "--set", "num_classes=10",
                     "--set", "test_only=true", "--set", f"pretrained={pth}",
                     "--set", "image_size=32", "--set", "resolution_list=[32]",
                     "--set", "width_mult_list=[1.0]", "--set", "max_val_images=20",
                     "--set", "calib_images=20", "--out", out, "--device", "cpu", "--quiet")
    assert code == 0, text
    assert "314 tensors mapped, 0 missing, 0 unused" in text
    doc = json.loads((out / "eval" / "eval.json").read_text())
    assert len(doc["points"]) == 4 and all(p["resolution"] == 32 for p in doc["points"])
    ck = load_checkpoint(out / "imported")
    assert ck.extra["imported"]["format"] == "torchvision" and not ck.config.test_only
    ref = torch.load(pth)["features.0.0.weight"]
    assert torch.equal(ck.model.state_dict()["features.0.0.weight"], ref)


def test_train_prints_full_ids_and_sets_threads(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(1)
    code, text = run("train", "--epochs", "1", "--out", tmp_path / "a", "--set",
                     "max_train_images=128", "--set", "batch_size=64", "--set",
                     "max_val_images=64", "--set", "calib_images=64", "--device", "cpu",
                     "--no-progress")
    assert code == 0, text
    assert "w1.00-r32 top-1" in text and "w0.25-r20 top-1" in text and "w1-r32" not in text
    # default: the cores this process may use (in-memory data: no decode workers)
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    code, text = run("train", "--epochs", "1", "--out", tmp_path / "b", *QUICK, "--threads", "1")
    assert code == 0 and torch.get_num_threads() == 1, text
    code, text = run("train", "--out", tmp_path / "c", *QUICK, "--threads", "0")
    assert code == 2 and "--threads" in text and not (tmp_path / "c").exists()


def test_training_threads_leave_room_for_decode_workers(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    from mutualnet import device
    from mutualnet.config import TrainConfig
    from mutualnet.train.loop import configure_training_threads

    monkeypatch.setattr(device, "usable_cores", lambda: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        folder = TrainConfig(dataset="imagefolder", dataset_dir=str(tmp_path),
                             data_loader_workers=2)
        assert configure_training_threads(folder) == 4 and torch.get_num_threads() == 4
        assert configure_training_threads(folder.replace(in_memory=True)) == 6
        assert configure_training_threads(TrainConfig()) == 6  # bundled set: in memory
        assert configure_training_threads(TrainConfig(), 2) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["train", "eval", "export"])
def test_surface_progress_pair_threads_and_macs(command: str) -> None:
    code, text = run(command, "--help")
    assert code == 0
    assert "--progress / --no-progress" in text and "--threads" in text
    assert "--quiet" not in text  # a hidden alias of --no-progress
    assert "MFLOPs" not in text and "mflops" not in text


def test_quiet_is_no_progress(tmp_path: Path) -> None:
    from mutualnet.cli._params import progress_option

    seen: list[bool] = []

    @progress_option
    def cmd(progress: bool) -> None:
        seen.append(progress)

    import click

    command = click.command()(cmd)
    for args, want in (([], True), (["--quiet"], False), (["--no-progress"], False),
                       (["--progress"], True), (["--progress", "--quiet"], False)):
        CliRunner().invoke(command, args, catch_exceptions=False)
        assert seen.pop() is want, args
