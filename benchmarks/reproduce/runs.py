"""One run of the study: train (resuming), evaluate the grid, write its results file.

A run trains into its own directory (``<out>/<scale>/<run>-s<seed>/``, not committed)
with the library's :func:`mutualnet.train.train` and resumes from its last per-epoch
checkpoint (``resume=True``, the library's ``--resume``). A finished run is evaluated
with :func:`mutualnet.evaluate.run_eval` (BN calibrated per subnet) and writes
``<results>/<run>-s<seed>.json``: the grid, the wall time and the command. That small
file is meant to be committed, so results outlive the machine's run directories.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mutualnet.evaluate import GridPoint
from mutualnet.fileio import atomic_write

from .settings import RESOLUTIONS, ROOT, RunSpec, Scale, plan_runs, run_config

FORMAT = "mutualnet-cifar-study-result"
SESSIONS_FILE = "study_sessions.jsonl"
DEFAULT_OUT = ROOT / "runs" / "cifar_study"
RESULTS_ROOT = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Paths:
    """Where a study's run directories (scratch) and results files (committed) live."""

    out: Path
    results: Path

    @classmethod
    def default(cls, scale: Scale, out: Path | None = None,
                results: Path | None = None) -> Paths:
        o = out if out is not None else DEFAULT_OUT
        if results is None:
            results = (o / scale.name / "results" if scale.name == "smoke"
                       else RESULTS_ROOT / f"cifar_study{'' if scale.name == 'cpu' else '_' + scale.name}")
        return cls(o, results)

    def run_dir(self, scale: Scale, spec: RunSpec) -> Path:
        return self.out / scale.name / spec.key

    def result_file(self, spec: RunSpec) -> Path:
        return self.results / f"{spec.key}.json"


def write_json(path: Path, doc: Any) -> None:
    atomic_write(path, lambda t: t.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short when a session was stopped
    return out


def read_result(path: Path) -> dict[str, Any] | None:
    """A results file's document (None if absent or not one of ours)."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def points_of(doc: dict[str, Any]) -> tuple[GridPoint, ...]:
    fields = {f.name for f in dataclasses.fields(GridPoint)}
    return tuple(GridPoint(**{k: v for k, v in p.items() if k in fields})
                 for p in doc["points"])


# ----------------------------------------------------------------------------- status
@dataclass(frozen=True)
class RunStatus:
    spec: RunSpec
    state: str  # done | stale | partial | missing
    detail: str


def trained_epochs(run_dir: Path) -> int:
    """Epochs of the checkpoint in ``run_dir`` (0 when none was written yet)."""
    from mutualnet.checkpoint import CHECKPOINT_FILE, read_metadata

    if not (run_dir / CHECKPOINT_FILE).is_file():
        return 0
    return int(read_metadata(run_dir).get("epoch", 0))


def run_status(spec: RunSpec, scale: Scale, paths: Paths) -> RunStatus:
    doc = read_result(paths.result_file(spec))
    if doc is not None:
        if doc.get("settings") != scale.fairness():
            return RunStatus(spec, "stale", "results file from other settings: rerun it")
        return RunStatus(spec, "done", f"{doc['wall_s'] / 60:.1f} min, "
                                       f"{len(doc['points'])} subnets")
    d = paths.run_dir(scale, spec)
    epochs = trained_epochs(d)
    if epochs:
        what = "trained, not evaluated" if epochs >= scale.epochs else "resumes at"
        return RunStatus(spec, "partial", f"{what} epoch {epochs}/{scale.epochs} ({d})")
    if d.is_dir():
        return RunStatus(spec, "partial", f"started, no epoch finished yet ({d})")
    return RunStatus(spec, "missing", "")


def study_status(scale: Scale, paths: Paths) -> list[RunStatus]:
    return [run_status(spec, scale, paths) for spec in plan_runs(scale)]


# ----------------------------------------------------------------------------- one run
def _log_session(run_dir: Path, resumed_at: int, threads: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    rec = {"start": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "load": [round(x, 2) for x in os.getloadavg()], "threads": threads,
           "resumed_at_epoch": resumed_at}
    with open(run_dir / SESSIONS_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")


def train_wall_s(run_dir: Path) -> float:
    """Training seconds summed over the epochs in metrics.jsonl (the last record of each
    epoch: an epoch cut short by a stopped session is redone and counted once)."""
    from mutualnet.train.loop import METRICS_FILE

    by_epoch = {int(r["epoch"]): float(r["epoch_time_s"])
                for r in read_jsonl(run_dir / METRICS_FILE) if "epoch_time_s" in r}
    return sum(by_epoch.values())


def train_run(spec: RunSpec, scale: Scale, run_dir: Path, config: Any, progress: bool) -> None:
    """Train ``spec`` into ``run_dir``, resuming from its checkpoint; no-op when trained."""
    import torch

    from mutualnet.train import train

    done = trained_epochs(run_dir)
    if done >= scale.epochs:
        return
    _log_session(run_dir, done, torch.get_num_threads())
    train(config, run_dir, resume=done > 0, progress=progress)


def evaluate_run(spec: RunSpec, scale: Scale, run_dir: Path, device: str,
                 progress: bool) -> tuple[GridPoint, ...]:
    """BN-calibrate and evaluate the run's (w, r) grid with the library's run_eval."""
    from mutualnet.evaluate import run_eval

    report = run_eval(run_dir, widths=spec.eval_widths, resolutions=RESOLUTIONS,
                      out_dir=run_dir / "eval", calib_images=scale.calib_images,
                      device=device, progress=progress, label=spec.key)
    return tuple(report.points)


def result_document(spec: RunSpec, scale: Scale, run_dir: Path, points: Sequence[GridPoint],
                    eval_s: float, command: str) -> dict[str, Any]:
    from benchmarks._report import machine_line
    from mutualnet.checkpoint import read_metadata

    meta = read_metadata(run_dir)
    train_s = train_wall_s(run_dir)
    return {
        "format": FORMAT, "version": 1, "run": spec.name, "group": spec.group,
        "seed": spec.seed, "method": spec.method, "width_range": list(spec.width_range),
        "scale": scale.name, "settings": scale.fairness(), "command": command,
        "epochs": int(meta.get("epoch", 0)), "steps": int(meta.get("step", 0)),
        "train_wall_s": round(train_s, 1), "eval_wall_s": round(eval_s, 1),
        "wall_s": round(train_s + eval_s, 1),
        "sessions": read_jsonl(run_dir / SESSIONS_FILE), "machine": machine_line(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "points": [dataclasses.asdict(p) for p in points],
    }


def run_one(spec: RunSpec, scale: Scale, paths: Paths, *, data: Path | None, device: str,
            command: str, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; returns its results document."""
    import shutil

    target = paths.result_file(spec)
    status = run_status(spec, scale, paths)
    if status.state == "done" and not force:
        doc = read_result(target)
        assert doc is not None
        return doc
    run_dir = paths.run_dir(scale, spec)
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    config = run_config(spec, scale, run_dir, data, device)
    train_run(spec, scale, run_dir, config, progress)
    t0 = time.perf_counter()
    points = evaluate_run(spec, scale, run_dir, device, progress)
    doc = result_document(spec, scale, run_dir, points, time.perf_counter() - t0, command)
    write_json(target, doc)
    return doc
