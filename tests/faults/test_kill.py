"""SIGKILL at chosen and at random moments: training resumes to the same result as an
uninterrupted run, and an export directory is always the whole previous export or the
whole new one (``mutualnet verify`` passes), never a mix.

Chosen moments use the ``MUTUALNET_FAULT`` hook (``POINT:kill:N``: at the N-th pass of a
named point inside a checkpoint save or an export); random ones a timer, with fixed seeds.
The default run does a few; ``-m slow`` runs longer loops.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _runs import TINY, ForkingCli, cli_env, metrics

from export.manifest import load_manifest
from mutualnet.checkpoint import CHECKPOINT_FILE, load_training_state

EPOCHS = ["--set", "num_epochs=3"]  # 2 steps an epoch: 3 saves
SAVE_POINTS = ["checkpoint.weights-written", "checkpoint.state-written",
               "checkpoint.state-renamed", "checkpoint.committed"]
FAST = ["--calib-images", "0", "--eval-images", "16", "--no-progress"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / CHECKPOINT_FILE))


def _train_args(run: Path) -> list[str | Path]:
    """Resume where a checkpoint exists, else start (a kill before the first save)."""
    resume = (run / CHECKPOINT_FILE).exists()
    return ["train", "--out", run, *TINY, *EPOCHS, *(["--resume"] if resume else [])]


def _kill_at_random(args: list[str | Path], cwd: Path, delay: float) -> int:
    """Start ``mutualnet ARGS`` as its own process and SIGKILL it after ``delay`` s (if it is
    still running); returns its exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "mutualnet", *map(str, args)], cwd=cwd,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()
    proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    assert "Traceback" not in err, err
    return proc.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cli: ForkingCli) -> Path:
    """The uninterrupted run every killed one must end up equal to."""
    root = tmp_path_factory.mktemp("kill_ref")
    r = cli(["train", "--out", root / "run", *TINY, *EPOCHS], cwd=root)
    assert r.code == 0, r.stderr
    return root / "run"


def _assert_same_run(run: Path, reference: Path) -> None:
    assert metrics(run) == metrics(reference)
    a, b = _weights(run), _weights(reference)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_training_state(run).epoch == 3
    assert len(list(run.glob("checkpoint.state*.pt"))) == 1
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def _finish(cli: ForkingCli, run: Path) -> None:
    r = cli(_train_args(run), cwd=run.parent)
    assert r.code == 0, r.stderr


def test_train_killed_inside_saves_and_at_a_random_moment(cli: ForkingCli, tmp_path: Path,
                                                          reference: Path) -> None:
    run = tmp_path / "run"
    chain = ["checkpoint.state-renamed:kill:2",  # 2nd save: new state in place, weights not
             "checkpoint.committed:kill:1",  # after the commit, before metrics.jsonl
             "checkpoint.weights-written:kill:1"]  # weights written, not yet committed
    for fault in chain:
        r = cli(_train_args(run), cwd=tmp_path, env={"MUTUALNET_FAULT": fault})
        assert r.code == -9, (fault, r.stderr)
        load_training_state(run)  # the last complete checkpoint is always resumable
    _kill_at_random(_train_args(run), tmp_path, delay=random.Random(12).uniform(4, 10))
    _finish(cli, run)
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_train_killed_many_times(cli: ForkingCli, tmp_path: Path, reference: Path) -> None:
    run = tmp_path / "run"
    rng = random.Random(2024)
    for _ in range(12):
        if rng.random() < 0.5:
            fault = f"{rng.choice(SAVE_POINTS)}:kill:{rng.randint(1, 2)}"
            cli(_train_args(run), cwd=tmp_path, env={"MUTUALNET_FAULT": fault})
        else:
            _kill_at_random(_train_args(run), tmp_path, delay=rng.uniform(2, 14))
        if (run / CHECKPOINT_FILE).exists():
            load_training_state(run)
    _finish(cli, run)
    _assert_same_run(run, reference)


# -- export ----------------------------------------------------------------------------------

@pytest.fixture
def exported(tmp_path: Path, cli: ForkingCli) -> tuple[Path, dict[str, str]]:
    """A run and a previous export of it; returns (work dir, {old/new: subnet id})."""
    r = cli(["train", "--out", tmp_path / "run", *TINY], cwd=tmp_path)
    assert r.code == 0, r.stderr
    r = cli(["export", "run", "--out", "deploy", "--pairs", "0.25@20", *FAST], cwd=tmp_path)
    assert r.code == 0, r.stderr
    return tmp_path, {"old": "w0.25-r20", "new": "w1.00-r32"}


NEW = ["export", "run", "--out", "deploy", "--pairs", "1.0@32", *FAST, "--force"]


def _whole(cli: ForkingCli, work: Path, ids: dict[str, str]) -> str:
    """Which export ``deploy`` holds, checking it is whole: verify passes, one grid."""
    r = cli(["verify", work / "deploy"], cwd=work)
    assert r.code == 0, r.stderr
    got = load_manifest(work / "deploy").subnet_ids
    assert got in ([ids["old"]], [ids["new"]]), got
    on_disk = sorted(p.name for p in (work / "deploy" / "subnets").iterdir())
    assert on_disk == got  # no subnet directory of the other export
    return "old" if got == [ids["old"]] else "new"


def test_export_killed_at_any_moment_leaves_one_whole_export(
        cli: ForkingCli, exported: tuple[Path, dict[str, str]]) -> None:
    work, ids = exported
    for point, expect in (("export.subnet", "old"), ("export.swapped", "new")):
        r = cli(NEW, cwd=work, env={"MUTUALNET_FAULT": f"{point}:kill"})
        assert r.code == -9, (point, r.stderr)
        assert _whole(cli, work, ids) == expect, point
    _kill_at_random(NEW, work, delay=random.Random(7).uniform(4, 12))
    _whole(cli, work, ids)
    r = cli(NEW, cwd=work)
    assert r.code == 0, r.stderr
    assert _whole(cli, work, ids) == "new"
    assert sorted(p.name for p in work.iterdir()) == ["deploy", "run"]  # stale staging gone


@pytest.mark.slow
def test_export_killed_many_times(cli: ForkingCli,
                                  exported: tuple[Path, dict[str, str]]) -> None:
    work, ids = exported
    rng = random.Random(99)
    pairs = {"old": "0.25@20", "new": "1.0@32"}
    for _ in range(10):
        want = rng.choice(["old", "new"])
        args = ["export", "run", "--out", "deploy", "--pairs", pairs[want], *FAST, "--force"]
        start = time.perf_counter()
        _kill_at_random(args, work, delay=rng.uniform(3, 16))
        _whole(cli, work, ids)
        assert time.perf_counter() - start < 120
    r = cli(NEW, cwd=work)
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["deploy", "run"]
