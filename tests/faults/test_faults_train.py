"""Bad input and faults around `train`, `eval`, `flops`, `best` and checkpoints: each ends
in exit 2 (bad input) or 1 (failure), one line, no traceback, and no file that existed
before changed. Kinds marked "issue 12" were not clean before it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _runs import (
    TINY,
    ForkingCli,
    copy_run,
    hold_lock,
    killed_holder,
    metrics,
    run_cli_file_size_limit,
    train_tiny,
)
from faultkit import assert_clean_failure, snapshot

from mutualnet.checkpoint import CHECKPOINT_FILE, load_training_state, state_path


@pytest.fixture(scope="module")
def run1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run after 1 of its epochs (resumable); tests copy it before changing it."""
    return train_tiny(tmp_path_factory.mktemp("faults_train") / "run", epochs=2, stop_after=1)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "keep.txt").write_text("a file that must survive")
    return tmp_path


def _check(cli: ForkingCli, work: Path, args: list[str | Path], code: int, contains: str | None,
           env: dict[str, str] | None = None) -> None:
    before = snapshot(work)
    r = cli(args, cwd=work, env=env)
    assert_clean_failure(r, code, contains=contains, before=before, roots=[work])


# -- configs and flags ---------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "contains"), [
    (["--set", "bogus=1"], "unknown config key 'bogus'"),
    (["--set", "lr=abc"], "lr must be a number"),
    (["--set", "lr"], "expected key=value"),
    (["--set", "model=no_such_net"], "no_such_net"),
    (["--set", "width_mult_range=[0.25, .inf]"], "width_mult_range"),
    (["--set", "resolution_list=[100000]"], "1..2048"),  # issue 12
    (["--set", "image_size=100000"], "1..2048"),  # issue 12
    (["--set", "num_epochs=0"], "num_epochs"),
    (["--set", "momentum=1.5"], "momentum"),
    (["--set", "method=bogus"], "method must be one of"),
    (["--set", "batch_size=100000"], "larger than the training set"),
    (["--epochs", "0"], "0"),
    (["--set", "dataset=cifar100"], "root"),
    (["--set", "batch_size=-1"], "batch_size must be >= 1"),
    (["--set", "lr=.nan"], "lr must be a number"),
    (["--set", "max_train_images=0"], "max_train_images"),
    (["--set", "width_mult_range=[0, 1]"], "0 < min <= max"),
    (["--set", "resolution_list=[]"], "non-empty list"),
    (["--set", "model_kwargs={bogus: 1}"], "does not accept model_kwargs"),
    (["--set", "num_classes=3"], "has 10 classes"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_config_or_flag(cli: ForkingCli, work: Path, extra: list[str], contains: str) -> None:
    _check(cli, work, ["train", "--out", work / "run", *TINY, *extra], 2, contains)
    assert not (work / "run").exists()  # nothing left behind, not even an empty --out


@pytest.mark.parametrize(("text", "contains"), [
    ("", "is empty"),  # issue 12: an empty file trained the default
    ("# only a comment\n", "is empty"),  # issue 12
    ("- a\n- list\n", "must be a mapping"),
    ("lr: [unclosed\n", "not valid YAML"),
    ("learning_rate_typo: 0.1\n", "unknown config key"),
], ids=["empty", "comment-only", "list", "bad-yaml", "unknown-key"])
def test_bad_config_file(cli: ForkingCli, work: Path, text: str, contains: str) -> None:
    (work / "c.yml").write_text(text)
    _check(cli, work, ["train", "c.yml", "--out", work / "run", *TINY], 2, contains)
    assert not (work / "run").exists()


def test_missing_config_file(cli: ForkingCli, work: Path) -> None:
    _check(cli, work, ["train", "no/such.yml", *TINY], 2, "not found")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_cuda_without_a_gpu(cli: ForkingCli, work: Path) -> None:
    _check(cli, work, ["train", "--out", work / "run", *TINY, "--device", "cuda"], 2, "cuda")


@pytest.mark.parametrize("args", [
    ["flops", "tiny_mobilenet", "--width", "inf"],  # issue 12: OverflowError
    ["flops", "tiny_mobilenet", "--width", "1e309"],  # issue 12: OverflowError
    ["flops", "tiny_mobilenet", "--width", "nan"],  # issue 12
    ["flops", "tiny_mobilenet", "--resolution", "100000"],  # issue 12: printed 10380 G
    ["flops", "tiny_mobilenet", "--width", "a"],
    ["flops", "tiny_mobilenet", "--width", "0"],
    ["flops", "tiny_mobilenet", "--resolution", "0"],
    ["import-weights", "nosuch.pth", "--model", "mobilenet_v2", "--out", "iw"],
    ["flops", "no_such_model"],
    ["best", "x.json", "--budget-mflops", "inf"],  # issue 12
    ["best", "x.json", "--budget-mflops", "-1"],
    ["train", "--bogus-flag"],
], ids=lambda a: " ".join(a))
def test_bad_values(cli: ForkingCli, work: Path, args: list[str]) -> None:
    _check(cli, work, args, 2, None)


# -- run directories -----------------------------------------------------------------------

def test_train_into_a_run_without_resume(cli: ForkingCli, work: Path, run1: Path) -> None:
    run = copy_run(run1, work / "run")
    _check(cli, work, ["train", "--out", run, *TINY], 2, "already holds a checkpoint")


def test_resume_without_out(cli: ForkingCli, work: Path) -> None:
    _check(cli, work, ["train", "--resume", "--quiet"], 2, "--resume needs --out")


def test_resume_a_directory_without_a_run(cli: ForkingCli, work: Path) -> None:
    (work / "empty").mkdir()
    _check(cli, work, ["train", "--out", work / "empty", "--resume", "--quiet"], 2, "empty")


def test_resume_with_another_config(cli: ForkingCli, work: Path, run1: Path) -> None:
    run = copy_run(run1, work / "run")
    _check(cli, work, ["train", "--out", run, "--resume", *TINY, "--set", "lr=0.5"], 2,
           "different config")


def test_resume_with_a_truncated_state(cli: ForkingCli, work: Path, run1: Path) -> None:
    run = copy_run(run1, work / "run")
    s = state_path(run)
    s.write_bytes(s.read_bytes()[:200])
    _check(cli, work, ["train", "--out", run, "--resume", "--quiet"], 2,
           "cannot read the training state")


def test_unwritable_out(cli: ForkingCli, work: Path) -> None:
    _check(cli, work, ["train", "--out", work / "keep.txt" / "run", *TINY], 2, "keep.txt")


def test_a_second_writer_is_refused_naming_the_holder(cli: ForkingCli, work: Path) -> None:  # issue 12
    holder = hold_lock(work / "run", "mutualnet train --out run")
    try:
        _check(cli, work, ["train", "--out", work / "run", *TINY], 2, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over(cli: ForkingCli, work: Path) -> None:  # issue 12
    killed_holder(work / "run")
    r = cli(["train", "--out", work / "run", *TINY], cwd=work)
    assert r.code == 0, r.stderr
    assert (work / "run" / CHECKPOINT_FILE).is_file()
    assert not (work / ".run.lock").exists()


# -- checkpoint saves ----------------------------------------------------------------------

def test_disk_full_during_a_save_keeps_the_previous_checkpoint(work: Path,
                                                              run1: Path) -> None:  # issue 12
    run = copy_run(run1, work / "run")
    before = snapshot(work)
    # no file may grow past 20 kB: the weights (45 kB) fail inside safetensors, as on a full disk
    r = run_cli_file_size_limit(["train", "--out", run, "--resume", "--quiet"],
                                20_000, work)
    assert_clean_failure(r, 1, contains="previous checkpoint there is intact", before=before,
                         roots=[work])
    assert load_training_state(run).epoch == 1
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("point", ["checkpoint.weights-written", "checkpoint.state-written",
                                   "checkpoint.state-renamed"])
def test_a_failed_write_at_each_point_of_a_save(cli: ForkingCli, work: Path, run1: Path, point: str) -> None:
    run = copy_run(run1, work / "run")
    before = snapshot(work)
    r = cli(["train", "--out", run, "--resume", "--quiet"], cwd=work,
                env={"MUTUALNET_FAULT": f"{point}:enospc"})
    assert_clean_failure(r, 1, contains="No space left on device", before=before, roots=[work])
    if point != "checkpoint.state-renamed":
        return
    # and the run goes on from the intact checkpoint (an orphan state file is cleared)
    r = cli(["train", "--out", run, "--resume", "--quiet"], cwd=work)
    assert r.code == 0, r.stderr
    assert [m["epoch"] for m in metrics(run)] == [1, 2]
    assert len(list(run.glob("checkpoint.state*.pt"))) == 1


def test_a_kill_between_the_two_files_stays_resumable(cli: ForkingCli, work: Path, run1: Path) -> None:
    """Issue 12: SIGKILL after the state file, before the weights (weights of N-1 with state
    of N before): the previous pair is what --resume sees."""
    run = copy_run(run1, work / "run")
    r = cli(["train", "--out", run, "--resume", "--quiet"], cwd=work,
                env={"MUTUALNET_FAULT": "checkpoint.state-renamed:kill"})
    assert r.code == -9
    assert load_training_state(run).epoch == 1
    r = cli(["train", "--out", run, "--resume", "--quiet"], cwd=work)
    assert r.code == 0, r.stderr
    assert load_training_state(run).epoch == 2


# -- checkpoints given to eval / train -----------------------------------------------------

def _nan_run(run1: Path, dest: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = copy_run(run1, dest)
    f = run / CHECKPOINT_FILE
    with safe_open(str(f), framework="pt") as h:
        meta = dict(h.metadata())
    tensors = load_file(str(f))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 4)
    tensors[key][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(f), metadata=meta)
    return run


def _broken(kind: str, work: Path, run1: Path) -> Path:
    """A checkpoint path of ``kind``: missing, truncated, random bytes, foreign, nan."""
    f = work / "bad.safetensors"
    good = (run1 / CHECKPOINT_FILE).read_bytes()
    if kind == "truncated":
        f.write_bytes(good[: len(good) // 2])
    elif kind == "random-bytes":
        f.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "foreign":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(3)}, str(f))
    elif kind == "nan":
        return _nan_run(run1, work / "nanrun") / CHECKPOINT_FILE
    elif kind == "dir-without-checkpoint":
        (work / "notarun").mkdir()
        return work / "notarun"
    return f


CHECKPOINT_KINDS = [("missing", "does not exist"), ("truncated", "bad.safetensors"),
                    ("random-bytes", "bad.safetensors"), ("empty", "bad.safetensors"),
                    ("foreign", "not a mutualnet checkpoint"),
                    ("nan", "NaN or infinite"),  # issue 12: evaluated to 0.00%
                    ("dir-without-checkpoint", "holds no checkpoint.safetensors")]


@pytest.mark.parametrize(("kind", "contains"), CHECKPOINT_KINDS, ids=[k for k, _ in CHECKPOINT_KINDS])
def test_eval_refuses_a_bad_checkpoint(cli: ForkingCli, work: Path, run1: Path, kind: str, contains: str) -> None:
    ckpt = _broken(kind, work, run1)
    _check(cli, work, ["eval", ckpt, "--out", work / "ev", "--quiet", "--device", "cpu",
                  "--limit", "8", "--calib-images", "8"], 2, contains)
    assert not (work / "ev").exists()


@pytest.mark.parametrize(("args", "contains"), [
    (["--widths", "inf"], "finite"),  # issue 12
    (["--widths", "1e309"], "finite"),  # issue 12
    (["--resolutions", "100000"], "2048"),  # issue 12
    (["--widths", "a,b"], "not a number"),
    (["--data", "npz:no/such.npz"], "not found"),
    (["--widths", "0"], "positive"),
    (["--limit", "0"], "--limit"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_eval_bad_flags(cli: ForkingCli, work: Path, run1: Path, args: list[str], contains: str) -> None:
    _check(cli, work, ["eval", run1, "--out", work / "ev", "--quiet", *args], 2, contains)


def test_pretrained_pickle_gets_our_message_not_torchs(cli: ForkingCli, work: Path) -> None:  # issue 12
    torch.save(torch.nn.Linear(2, 2), work / "evil.pth")  # a pickled module
    before = snapshot(work)
    r = cli(["train", "--out", work / "run", *TINY, "--set", "pretrained=evil.pth"],
                cwd=work)
    assert_clean_failure(r, 2, contains="never unpickled", before=before, roots=[work])
    assert "weights_only" not in r.stderr and "trust" not in r.stderr


def test_object_arrays_get_our_message_not_numpys(cli: ForkingCli, work: Path, run1: Path) -> None:  # issue 12
    arrays = {k: np.zeros(2) for k in ("train_offsets", "train_labels", "test_jpeg",
                                       "test_offsets", "test_labels", "classes")}
    np.savez(work / "evil.npz", train_jpeg=np.array([{"x": 1}], dtype=object), **arrays)
    before = snapshot(work)
    r = cli(["train", "--out", work / "run", *TINY, "--set", "dataset=npz",
                 "--set", f"dataset_dir={work / 'evil.npz'}"], cwd=work)
    assert_clean_failure(r, 2, contains="never loaded", before=before, roots=[work])
    assert "allow_pickle" not in r.stderr


def test_resume_a_run_whose_state_names_other_weights(cli: ForkingCli, work: Path, run1: Path) -> None:
    run = copy_run(run1, work / "run")
    s = state_path(run)
    raw = torch.load(s, weights_only=True)
    torch.save({**raw, "weights_sha256": "0" * 64}, s)
    _check(cli, work, ["train", "--out", run, "--resume", "--quiet"], 2,
           "sha256 mismatch")
