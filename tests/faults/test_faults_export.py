"""Bad input and faults around `export`: exit 2 (bad input) or 1 (failure), one line, no
traceback, no pre-existing file changed; the run being exported and a previous export are
never lost. Kinds marked "issue 12" were not clean before it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _runs import ForkingCli, copy_run, hold_lock, run_and_export
from faultkit import assert_clean_failure, snapshot

from export.manifest import load_manifest
from mutualnet.checkpoint import CHECKPOINT_FILE

FAST = ["--calib-images", "0", "--eval-images", "16", "--no-progress"]
OLD_PAIRS = ["--pairs", "0.25@20"]
NEW_PAIRS = ["--pairs", "1.0@32"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, cli: ForkingCli) -> tuple[Path, Path]:
    """(a tiny run, an export of it with OLD_PAIRS); tests copy them before changing them."""
    return run_and_export(tmp_path_factory.mktemp("faults_export"), cli, OLD_PAIRS[1], *FAST)


@pytest.fixture
def work(tmp_path: Path, base: tuple[Path, Path]) -> Path:
    """A folder with a copy of the run (run/) and of its export (deploy/)."""
    copy_run(base[0], tmp_path / "run")
    shutil.copytree(base[1], tmp_path / "deploy")
    return tmp_path


def _check(cli: ForkingCli, work: Path, args: list[str | Path], code: int, contains: str | None,
           env: dict[str, str] | None = None) -> None:
    before = snapshot(work)
    r = cli(["export", *args], cwd=work, env=env)
    assert_clean_failure(r, code, contains=contains, before=before, roots=[work])
    assert not list(work.glob(".*")), "a staging directory or lock was left behind"


# -- --out and --force ---------------------------------------------------------------------

@pytest.mark.parametrize(("out", "contains"), [
    ("run", "the checkpoint being exported"),  # issue 12: deleted the run (exit 0)
    (".", "the checkpoint being exported"),  # issue 12: a parent of the run
    ("run/checkpoint.safetensors", "not a directory"),
], ids=["the-run", "a-parent-of-the-run", "the-checkpoint-file"])
@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
def test_out_may_never_hold_the_checkpoint(cli: ForkingCli, work: Path, out: str, contains: str,
                                           force: bool) -> None:
    _check(cli, work, ["run", "--out", work / out, *NEW_PAIRS, *FAST, *(["--force"] if force else [])],
           2, contains)
    assert (work / "run" / CHECKPOINT_FILE).is_file()


def test_force_refuses_a_folder_that_is_not_an_export(cli: ForkingCli, work: Path) -> None:  # issue 12
    (work / "photos").mkdir()
    (work / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    _check(cli, work, ["run", "--out", work / "photos", *NEW_PAIRS, *FAST, "--force"], 2,
           "no readable manifest.json")


def test_force_refuses_an_export_with_files_it_did_not_write(cli: ForkingCli, work: Path) -> None:  # issue 12
    (work / "deploy" / "my_notes.md").write_text("keep me")
    _check(cli, work, ["run", "--out", work / "deploy", *NEW_PAIRS, *FAST, "--force"], 2,
           "my_notes.md")


def test_a_non_empty_out_without_force(cli: ForkingCli, work: Path) -> None:
    _check(cli, work, ["run", "--out", work / "deploy", *NEW_PAIRS, *FAST], 2, "--force")


def test_force_replaces_a_previous_export(cli: ForkingCli, work: Path) -> None:
    r = cli(["export", "run", "--out", "deploy", *NEW_PAIRS, *FAST, "--force"], cwd=work)
    assert r.code == 0, r.stderr
    assert load_manifest(work / "deploy").subnet_ids == ["w1.00-r32"]
    assert sorted(p.name for p in work.iterdir()) == ["deploy", "run"]


def test_out_under_a_file(cli: ForkingCli, work: Path) -> None:
    (work / "afile").write_text("x")
    _check(cli, work, ["run", "--out", work / "afile" / "deploy", *NEW_PAIRS, *FAST], 1, "afile")


# -- flags ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "contains"), [
    (["--pairs", "0.25@20", "--widths", "1.0"], "drop --pairs"),  # issue 12: widths ignored
    (["--pairs", "0.25@20", "--resolutions", "24"], "drop --pairs"),  # issue 12
    (["--widths", "inf"], "finite"),  # issue 12
    (["--widths", "1e309"], "finite"),  # issue 12
    (["--resolutions", "100000"], "2048"),  # issue 12
    (["--pairs", "0.5@100000"], "2048"),  # issue 12
    (["--pairs", "0.5-24"], "WIDTH@RESOLUTION"),
    (["--widths", "1.5"], "outside the trained width range"),
    (["--resolutions", "2"], "below the model's minimum"),
    (["--profile", "no-such-device"], "unknown deploy profile"),
    (["--data", "no/such.npz"], "no such file or folder"),
    (["--eval-images", "0"], "0"),
    (["--exporter", "bogus"], "bogus"),
    (["--engines"], "TensorRT"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_flags(cli: ForkingCli, work: Path, args: list[str], contains: str) -> None:
    _check(cli, work, ["run", "--out", work / "new", "--calib-images", "0", "--no-progress",
                  "--eval-images", "16", *args], 2, contains)
    assert not (work / "new").exists()


# -- checkpoints ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "truncated", "nan"])
def test_bad_checkpoints(cli: ForkingCli, work: Path, kind: str) -> None:
    from test_faults_train import _nan_run

    ckpt = work / "run" / CHECKPOINT_FILE
    if kind == "missing":
        ckpt = work / "nothing.safetensors"
    elif kind == "truncated":
        ckpt = work / "half.safetensors"
        ckpt.write_bytes((work / "run" / CHECKPOINT_FILE).read_bytes()[:1000])
    else:  # issue 12: a NaN-weight checkpoint exported without a word
        ckpt = _nan_run(work / "run", work / "nanrun") / CHECKPOINT_FILE
    contains = {"missing": "does not exist", "truncated": "half.safetensors",
                "nan": "NaN or infinite"}[kind]
    _check(cli, work, [ckpt, "--out", work / "new", *NEW_PAIRS, *FAST], 2, contains)


# -- locks, signals, staging ---------------------------------------------------------------

def test_a_second_export_is_refused_naming_the_holder(cli: ForkingCli, work: Path) -> None:  # issue 12
    holder = hold_lock(work / "deploy", "mutualnet export run")
    try:
        before = snapshot(work / "run", work / "deploy")
        r = cli(["export", "run", "--out", "deploy", *NEW_PAIRS, *FAST, "--force"],
                    cwd=work)
        assert_clean_failure(r, 2, contains=f"pid {holder.pid}", before=before,
                             roots=[work / "run", work / "deploy"])
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_removes_the_staging_directory(cli: ForkingCli, work: Path) -> None:  # issue 12
    before = snapshot(work)
    r = cli(["export", "run", "--out", "deploy", "--pairs", "1.0@32,0.25@24", *FAST,
                 "--force"], cwd=work, env={"MUTUALNET_FAULT": "export.subnet:term"})
    assert_clean_failure(r, 128 + 15, contains="SIGTERM", before=before, roots=[work])
    assert sorted(p.name for p in work.iterdir()) == ["deploy", "run"]


@pytest.mark.parametrize("point", ["export.subnet", "export.staged"])
def test_stale_staging_of_a_killed_export_is_removed_next_time(cli: ForkingCli, work: Path, point: str) -> None:
    """Issue 12: SIGKILL leaves .deploy.tmp-PID-*; the next export removes it."""
    r = cli(["export", "run", "--out", "deploy", *NEW_PAIRS, *FAST, "--force"], cwd=work,
                env={"MUTUALNET_FAULT": f"{point}:kill"})
    assert r.code == -9
    assert [p.name.split("-")[0] for p in work.glob(".deploy.tmp-*")] == [".deploy.tmp"]
    assert load_manifest(work / "deploy").subnet_ids == ["w0.25-r20"]  # the previous one
    r = cli(["export", "run", "--out", "deploy", *NEW_PAIRS, *FAST, "--force"], cwd=work)
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["deploy", "run"]


def test_a_previous_export_moved_aside_is_put_back(cli: ForkingCli, work: Path) -> None:
    """An install killed between its two renames (platforms without an atomic exchange)."""
    os.replace(work / "deploy", work / ".deploy.old-999999999")
    r = cli(["export", "run", "--out", "deploy", *NEW_PAIRS, *FAST], cwd=work)
    assert r.code == 2 and "--force" in r.stderr  # it was put back, so --force is needed
    assert load_manifest(work / "deploy").subnet_ids == ["w0.25-r20"]


def test_disk_full_while_staging(cli: ForkingCli, work: Path) -> None:
    before = snapshot(work)
    r = cli(["export", "run", "--out", "deploy", *NEW_PAIRS, *FAST, "--force"], cwd=work,
                env={"MUTUALNET_FAULT": "export.staged:enospc"})
    assert_clean_failure(r, 1, contains="disk full", before=before, roots=[work])
    assert sorted(p.name for p in work.iterdir()) == ["deploy", "run"]


def test_what_force_counts_as_the_exports_own(tmp_path: Path) -> None:
    """The manifest's files and engines, the manifest, build_engines.sh and the files beside
    a listed engine (its timing cache); anything else is foreign."""
    import json

    from export.pipeline import files_not_in_manifest

    doc = {"files": {"parity_md": {"path": "parity.md"}},
           "subnets": [{"files": {"onnx": {"path": "subnets/a/model.onnx"}},
                        "engines": [{"path": "engines/orin/a.fp16.plan"}]}]}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    for rel in ("parity.md", "subnets/a/model.onnx", "engines/orin/a.fp16.plan",
                "engines/orin/timing.cache", "build_engines.sh", "subnets/a/notes.txt",
                "photo.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert files_not_in_manifest(tmp_path) == ["photo.jpg", "subnets/a/notes.txt"]
