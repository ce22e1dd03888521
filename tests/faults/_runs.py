"""Tiny runs and helpers the train/export fault files share (kept small: one tiny
checkpoint per module, copied where a test changes it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import REPO, CliResult

#: A few seconds of training on the bundled CIFAR-10 subset: 2 steps per epoch.
TINY = ["--set", "num_epochs=1", "--set", "max_train_images=64", "--set", "batch_size=32", "--set",
        "eval_each_epoch=false", "--device", "cpu", "--quiet"]


def train_tiny(out: Path, epochs: int = 1, stop_after: int | None = None) -> Path:
    """Train the tiny default (``epochs`` long, stopping after ``stop_after``) into ``out``
    in this process; returns the run directory."""
    from mutualnet.config import TrainConfig
    from mutualnet.train import train

    cfg = TrainConfig(num_epochs=epochs, batch_size=32, max_train_images=64,
                      eval_each_epoch=False, device="cpu")
    train(cfg, out, progress=False, stop_after_epochs=stop_after)
    return out


def run_and_export(root: Path, cli: ForkingCli, pairs: str, *flags: str) -> tuple[Path, Path]:
    """A tiny 1-epoch run under ``root`` and its export of ``pairs`` (``--pairs`` syntax) to
    ``root/deploy``: a fault module's shared base, which its tests copy before changing."""
    run = train_tiny(root / "run", epochs=1)
    res = cli(["export", run, "--out", root / "deploy", "--pairs", pairs, *flags], cwd=root)
    assert res.code == 0, res.stderr
    return run, root / "deploy"


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment :func:`faultkit.run_cli` gives the command. ``MUTUALNET_FAULTS_CODE``
    (a checkout) runs the commands from there instead: to see which kinds fail on old code."""
    code = os.environ.get("MUTUALNET_FAULTS_CODE", str(REPO))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [code, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": "1", **(extra or {})}


def run_cli_file_size_limit(args: list[str | Path], limit: int, cwd: Path) -> CliResult:
    """Like :func:`faultkit.run_cli`, with no file allowed to grow past ``limit`` bytes (a
    real write error from inside safetensors / torch, as on a full disk)."""
    import resource

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run([sys.executable, "-m", "mutualnet", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=300, env=cli_env(),
                       stdin=subprocess.DEVNULL, preexec_fn=limit_files)
    return CliResult(p.returncode, p.stdout, p.stderr)


def hold_lock(directory: Path, command: str) -> subprocess.Popen[str]:
    """Another process that holds ``directory``'s lock (as a running train/export would)
    until killed; returns once it holds it."""
    code = ("import sys, time\nfrom mutualnet.fileio import directory_lock\n"
            f"with directory_lock({str(directory)!r}, {command!r}):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=directory.parent)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def killed_holder(directory: Path) -> None:
    """Leave the lock file of a holder killed with SIGKILL (stale: nobody holds it)."""
    proc = hold_lock(directory, "mutualnet train --out killed")
    proc.kill()
    proc.wait()
    time.sleep(0.05)


def metrics(run: Path) -> list[dict[str, object]]:
    """metrics.jsonl without the fields that measure time."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    timed = {"time", "epoch_time_s", "images_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in timed} for line in lines]


# -- a forking CLI runner: torch is imported once, each command is a fresh forked process ---

_SERVER = r'''
import json, os, sys, traceback
import torch, safetensors.torch, onnx, onnxruntime  # the slow imports, done once
import mutualnet.cli, mutualnet.train.loop, mutualnet.evaluate, export.pipeline
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.chdir(req["cwd"])
        os.environ.update(req["env"])
        for fd, name in ((1, "out"), (2, "err")):
            f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(f, fd)
            os.close(f)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.argv = ["mutualnet", *req["args"]]
        code = 0
        try:
            mutualnet.cli.cli.main(args=req["args"], prog_name="mutualnet")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
'''


class ForkingCli:
    """Runs ``mutualnet ARGS`` as :func:`faultkit.run_cli` does (a separate process with its
    own stdout/stderr, exit code, signals), forked from a server that imported torch once:
    about 0.1 s a command instead of seconds."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], env=cli_env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=scratch)  # not the checkout: `-c` puts cwd first
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.count = 0

    def __call__(self, args: list[str | Path], *, cwd: Path,
                 env: dict[str, str] | None = None) -> CliResult:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        out, err = (self.scratch / f"{self.count}.{k}" for k in ("out", "err"))
        req = {"args": [str(a) for a in args], "cwd": str(cwd), "env": env or {},
               "out": str(out), "err": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        code = int(json.loads(self.proc.stdout.readline()))
        return CliResult(code, out.read_text(), err.read_text())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def forking_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkingCli]:
    """Body of a module's ``cli`` fixture: a :class:`ForkingCli`, closed at the end."""
    runner = ForkingCli(tmp_path_factory.mktemp("cli"))
    yield runner
    runner.close()
