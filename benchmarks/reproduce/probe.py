"""Size a scale: train each run of the matrix for a few steps (the library's train() on
the first N x batch images) and project the minutes of a whole run at that scale."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .runs import read_jsonl
from .settings import Scale, plan_runs, run_config

CIFAR_TRAIN_IMAGES = 50_000


def time_steps(scale: Scale, name: str, data: Path | None, steps: int) -> float:
    """Seconds per training step of run ``name`` (seed 0), from the trainer's epoch time."""
    from mutualnet.train import train
    from mutualnet.train.loop import METRICS_FILE

    spec = next(s for s in plan_runs(scale, (0,)) if s.name == name)
    short = scale.replace(epochs=1, train_images=steps * scale.batch_size)
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        config = run_config(spec, short, Path(tmp), data, "cpu")
        train(config, Path(tmp), progress=False)
        rec = read_jsonl(Path(tmp) / METRICS_FILE)[-1]
    return float(rec["epoch_time_s"]) / steps


def probe(scale: Scale, data: Path | None, steps: int, threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    load = os.getloadavg()
    n = scale.train_images or CIFAR_TRAIN_IMAGES
    per_epoch = n // scale.batch_size
    print(f"probe: {steps} steps per run, batch {scale.batch_size}, {torch.get_num_threads()} "
          f"threads, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores "
          "(a loaded machine inflates every figure)")
    total = 0.0
    for spec in plan_runs(scale, (0,)):
        s = time_steps(scale, spec.name, data, steps)
        minutes = s * per_epoch * scale.epochs / 60
        total += minutes
        print(f"{spec.name:<20} {s:6.2f} s/step -> {minutes:6.1f} min for {scale.epochs} "
              f"epoch(s) of {per_epoch} steps (training only)", flush=True)
    print(f"one seed: {total:.0f} min training; {len(scale.seeds)} seeds: "
          f"{total * len(scale.seeds):.0f} min, plus evaluation")
    return 0
