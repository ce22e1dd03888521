"""The training loop: epochs, checkpoints, resume, NaN guard, DDP, bf16 autocast.

``train(config, out_dir)`` trains from scratch (or from ``config.pretrained``) and writes
into ``out_dir``: ``metrics.jsonl`` (one line per epoch) and, after every epoch, an atomic
checkpoint (see :mod:`mutualnet.checkpoint`). ``resume=True`` continues from the
checkpoint in ``out_dir`` bit for bit: the weights, optimizer, schedule and RNG state are
restored, the data order is a function of (seed, epoch) and the subnet draws a function of
(seed, step).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import (
    CHECKPOINT_FILE,
    STATE_FILE,
    build_model,
    load_training_state,
    load_weights,
    read_metadata,
    resolve_checkpoint_path,
    restore_rng,
    save_checkpoint,
)
from ..config import TrainConfig, config_from_dict
from ..device import resolve_device
from ..errors import ConfigError, TrainingDivergedError, UsageError
from ..fileio import atomic_write, directory_lock
from ..slimmable import SlimmableNet
from . import distributed as D
from .schedule import CosineSchedule, build_optimizer
from .step import sample_subnets, train_step

if TYPE_CHECKING:
    from ..weights import ImportReport

METRICS_FILE = "metrics.jsonl"

#: Config keys that may differ between a run and its resumption (they do not change the
#: training trajectory, or only its speed).
RESUME_FREE_KEYS = frozenset({
    "log_dir", "resume", "data_loader_workers", "device", "eval_each_epoch", "calib_images",
    "calib_batch_size", "eval_batch_size", "test_only", "pretrained", "in_memory",
    "width_mult_list", "amp", "channels_last", "max_val_images", "pretrained_allow_missing",
})

#: File endings of external weights: an unreadable one gets the importer's error, not the
#: checkpoint reader's.
EXTERNAL_SUFFIXES = (".pth", ".pt", ".tflite")


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    checkpoint: Path
    epoch: int  # epochs completed in total
    step: int  # optimizer steps completed in total
    history: tuple[dict[str, Any], ...]  # metrics lines written by this call
    lrs: tuple[float, ...]  # learning rate of every step this call ran
    wall_s: float
    config: TrainConfig


def configure_training_threads(config: TrainConfig, threads: int | None = None) -> int:
    """Set this process's torch threads for training per ``config``: ``threads``, or by
    default the cores this process may use less the decode workers that run beside it (a
    per-image DataLoader's; in-memory data decodes up front and runs none). Returns the
    count (see :func:`mutualnet.device.configure_threads`)."""
    from ..device import configure_threads

    spec = config.data_spec("train")
    return configure_threads(threads, decode_workers=0 if spec.uses_memory else spec.workers)


def default_out_dir(config: TrainConfig) -> Path:
    return Path(config.log_dir) if config.log_dir else Path("runs") / config.model


def run_config(config: str | None = None, overrides: Sequence[str] = (), *,
               out_dir: str | os.PathLike[str] | None = None, resume: bool = False,
               epochs: int | None = None, device: str | None = None) -> TrainConfig:
    """The config ``mutualnet train`` runs: CONFIG (a path or app:apps/NAME.yml; None: the
    defaults) with ``--set`` overrides, then the flags. ``resume`` with neither a config nor
    overrides continues with the run's own stored config (``out_dir`` names the run)."""
    from ..config import load_config

    if resume and config is None and not overrides:
        if out_dir is None:
            raise UsageError("--resume needs --out DIR (the run to continue) or a CONFIG "
                             "whose log_dir names it")
        cfg = stored_config(out_dir)
    else:
        cfg = load_config(config, overrides)
    flags: dict[str, Any] = {"num_epochs": epochs, "device": device,
                             "log_dir": None if out_dir is None else str(out_dir)}
    flags = {k: v for k, v in flags.items() if v is not None}
    return cfg.replace(**flags) if flags else cfg


def stored_config(path: str | os.PathLike[str]) -> TrainConfig:
    """The resolved config saved in a checkpoint (run dir or .safetensors)."""
    import warnings

    from ..config import ConfigWarning

    f = resolve_checkpoint_path(path)
    meta = read_metadata(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return config_from_dict(json.loads(meta["config"]), source=f"config stored in {f}")


def check_resume_config(config: TrainConfig, stored: TrainConfig, where: Path) -> None:
    """Refuse to resume with a config that would change the training trajectory."""
    a, b = config.to_dict(), stored.to_dict()
    diff = [k for k in a if k not in RESUME_FREE_KEYS and a[k] != b.get(k)
            and not (k == "num_classes" and a[k] is None)]
    if diff:
        details = ", ".join(f"{k}: {b.get(k)!r} -> {a[k]!r}" for k in diff[:4])
        raise ConfigError(f"cannot resume {where} with a different config ({details}); resume "
                          "with the run's own config (omit CONFIG) or train into a new --out")


def load_pretrained_weights(net: SlimmableNet, config: TrainConfig) -> ImportReport | None:
    """Fill ``net`` (built from ``config``) from ``config.pretrained``; no-op when unset.

    External weights (a torchvision ``.pth`` state dict or a TFLite MobileNet v1) are mapped
    by name and shape with :func:`mutualnet.weights.load_pretrained` (tensors they leave at
    init are an error unless ``pretrained_allow_missing``); the import report is returned.
    Anything else must be a mutualnet checkpoint (run dir or ``.safetensors``) for the same
    model, loaded with :func:`~mutualnet.checkpoint.load_weights`; returns None.
    """
    if not config.pretrained:
        return None
    from ..weights import detect_format, external_format, load_pretrained

    src = config.pretrained
    if external_format(src) is not None:
        return load_pretrained(net, src, allow_missing=config.pretrained_allow_missing)
    if Path(src).suffix.lower() in EXTERNAL_SUFFIXES:
        detect_format(src)  # raises the importer's error naming the file
    load_weights(net, src, config)
    return None


def _stored_record(weights: Path) -> dict[str, Any] | None:
    """The metrics line a checkpoint stored for its own epoch (None for older checkpoints)."""
    record = json.loads(read_metadata(weights).get("extra") or "{}").get("metrics")
    return record if isinstance(record, dict) else None


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def epoch_eval(net: SlimmableNet, config: TrainConfig, train_data: Any, val_data: Any,
               device: torch.device) -> dict[str, dict[str, float]]:
    """BN-calibrated top-1/top-5 of the largest and smallest subnets, on a copy of the model."""
    from ..calibrate import calibrate_bn
    from ..evaluate import evaluate, subnet_id

    probe = copy.deepcopy(net)
    out = {}
    resolutions = config.resolution_list or (config.base_resolution,)
    for w, r in ((config.max_width, config.base_resolution),
                 (config.min_width, min(resolutions))):
        calibrate_bn(probe, w, r, train_data, num_images=min(config.calib_images, len(train_data)),
                     batch_size=config.calib_batch_size, device=device, seed=config.random_seed)
        res = evaluate(probe, w, r, val_data, batch_size=config.eval_batch_size, device=device)
        out[subnet_id(w, r)] = {"top1": round(res.top1, 3), "top5": round(res.top5, 3)}
    return out


def _holds_run_lock(fn: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """Run ``fn(config, out_dir, ...)`` holding the lock of its run directory (on the main
    rank only: torchrun's other ranks share the run), so that a second writer exits 2."""

    @functools.wraps(fn)
    def locked(config: TrainConfig, out_dir: str | os.PathLike[str] | None = None,
               **kwargs: Any) -> TrainResult:
        if os.environ.get("RANK", "0") != "0":
            return fn(config, out_dir, **kwargs)
        out = Path(out_dir) if out_dir is not None else default_out_dir(config)
        with directory_lock(out, "mutualnet train " + " ".join(sys.argv[1:])[:200]):
            return fn(config, out_dir, **kwargs)

    return locked


def reconcile_metrics(path: Path, epoch: int, record: dict[str, Any] | None) -> None:
    """Make ``metrics.jsonl`` agree with a checkpoint of ``epoch`` before resuming it: drop
    lines of later epochs and a torn last line (a kill while writing), and put back the
    checkpoint's own line (``record``, stored in it) if a kill came before it was written."""
    lines = path.read_text().splitlines() if path.is_file() else []
    kept: list[str] = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and (item.get("event") or item.get("epoch", 0) <= epoch):
            kept.append(line)
    have = {json.loads(line).get("epoch") for line in kept}
    if record is not None and epoch not in have:
        kept.append(json.dumps(record, sort_keys=True))
    if kept != lines:
        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{k}\n" for k in kept)))


@dataclass
class _Run:
    """What one ``train`` call works with; built by :func:`_setup`, advanced by the epochs."""

    config: TrainConfig
    out: Path
    info: D.DistInfo
    device: torch.device
    train_data: Any
    val_data: Any
    net: SlimmableNet
    model: torch.nn.Module  # ``net``, or DDP around it
    optimizer: torch.optim.Optimizer
    schedule: CosineSchedule
    steps_per_epoch: int
    autocast_dtype: torch.dtype | None
    channels_last: bool
    extra_meta: dict[str, Any]  # written into every checkpoint (e.g. the pretrained import)
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT_FILE

    @property
    def main(self) -> bool:
        return self.info.is_main


@dataclass
class _EpochSums:
    ce: float = 0.0
    total: float = 0.0
    steps: int = 0
    images: int = 0
    seconds: float = 0.0


def _load_train_data(config: TrainConfig) -> tuple[TrainConfig, Any, Any]:
    """(config with num_classes filled in, training data, per-epoch val data or None)."""
    from ..data import load_data

    train_data = load_data(config.data_spec("train"), "train")
    if config.num_classes is None:
        config = config.replace(num_classes=train_data.num_classes)
    elif config.num_classes != train_data.num_classes:
        raise ConfigError(f"num_classes is {config.num_classes} but the {config.dataset} "
                          f"training data has {train_data.num_classes} classes; set "
                          f"num_classes: {train_data.num_classes}")
    val_data = load_data(config.data_spec("val"), "val") if config.eval_each_epoch else None
    if len(train_data) // config.batch_size == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the training set "
                          f"({len(train_data)} images); lower batch_size")
    return config, train_data, val_data


def _setup(config: TrainConfig, out: Path, info: D.DistInfo, device: torch.device, *,
           fresh: bool, progress: bool) -> _Run:
    """Data, model (from ``config.pretrained`` when ``fresh``), optimizer and schedule."""
    from tqdm import tqdm

    config, train_data, val_data = _load_train_data(config)
    D.local_batch_size(config.batch_size, info)  # refuses a batch the ranks cannot split
    steps_per_epoch = len(train_data) // config.batch_size
    amp = config.amp if config.amp is not None else device.type == "cuda"
    channels_last = (config.channels_last if config.channels_last is not None
                     else device.type == "cuda")
    torch.manual_seed(config.random_seed)
    net = build_model(config)
    imported = load_pretrained_weights(net, config) if fresh else None
    if imported is not None and info.is_main and progress:
        tqdm.write(f"pretrained: {imported.summary()}", file=sys.stderr)
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(net, config)
    schedule = CosineSchedule(optimizer, steps_per_epoch * config.num_epochs)
    extra = {"pretrained_import": imported.summary()} if imported is not None else {}
    return _Run(config=config, out=out, info=info, device=device, train_data=train_data,
                val_data=val_data, net=net, model=net, optimizer=optimizer, schedule=schedule,
                steps_per_epoch=steps_per_epoch,
                autocast_dtype=torch.bfloat16 if amp else None, channels_last=channels_last,
                extra_meta=extra)


def _restore(run: _Run, source: Path) -> None:
    """Continue from the checkpoint in ``source``: weights, optimizer, schedule, RNG, counters.

    The one place training loads a checkpoint (see :func:`_save`)."""
    load_weights(run.net, source, run.config)
    state = load_training_state(source)
    run.optimizer.load_state_dict(state.optimizer)
    if state.scheduler is not None:
        run.schedule.load_state_dict(state.scheduler)
    if state.rng:
        restore_rng(state.rng)
    run.epoch, run.step = state.epoch, state.step
    total = run.steps_per_epoch * run.config.num_epochs
    if run.schedule.total_steps != total or run.step != run.epoch * run.steps_per_epoch:
        raise ConfigError(f"{source}: the saved schedule ({run.schedule.total_steps} steps) "
                          f"does not match this data/batch size ({total}); resume with the "
                          "same data and batch_size")


def _save(run: _Run, record: dict[str, Any]) -> None:
    """Write the checkpoint after an epoch: the one place training saves one."""
    save_checkpoint(run.out, run.net, run.config, step=run.step, epoch=run.epoch,
                    optimizer=run.optimizer, scheduler=run.schedule,
                    classes=tuple(run.train_data.classes),
                    extra_meta={"val": record.get("val", {}), "metrics": record,
                                "method": run.config.method, **run.extra_meta})


def _diverged(run: _Run, error: TrainingDivergedError, lr: float) -> TrainingDivergedError:
    """Log a diverged step to metrics.jsonl; the error to raise, naming the kept checkpoint."""
    ckpt = run.checkpoint
    kept = (f"the last good checkpoint {ckpt} (epoch {run.epoch}) was kept"
            if ckpt.exists() else "no checkpoint had been written yet")
    if run.main:
        _append_jsonl(run.out / METRICS_FILE, {
            "event": "diverged", "epoch": run.epoch + 1, "step": run.step, "lr": lr,
            "message": str(error)})
    return TrainingDivergedError(
        f"training diverged at epoch {run.epoch + 1}, step {run.step}: {error}; {kept}. "
        f"Start a new run with a lower lr (now {lr:.4g}) or check the data")


def _one_step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, Any]:
    """One optimizer step on this rank's rows of a global batch; (its lr, StepOutput)."""
    c = run.config
    subnets = sample_subnets(
        c.method, step=run.step, seed=c.random_seed, width_range=(c.min_width, c.max_width),
        resolutions=c.resolution_list or (c.base_resolution,), base_resolution=c.base_resolution,
        num_random=c.num_sampled_widths, fixed_width=c.independent_width)
    lr = run.schedule.lr
    try:
        result = train_step(run.model, run.optimizer, x, y, subnets,
                            autocast_dtype=run.autocast_dtype, channels_last=run.channels_last)
    except TrainingDivergedError as e:
        raise _diverged(run, e, lr) from None
    run.schedule.step()
    run.lrs.append(lr)
    run.step += 1
    return lr, result


def _run_epoch(run: _Run, *, progress: bool,
               on_step: Callable[[int, float, Any], None] | None) -> _EpochSums:
    """Train one epoch (its data order a function of seed and epoch); the loss sums."""
    from tqdm import tqdm

    c = run.config
    run.net.train()
    sums = _EpochSums()
    t0 = time.perf_counter()
    batches = run.train_data.batches(c.batch_size, augment=True, shuffle=True,
                                     seed=c.random_seed, epoch=run.epoch, drop_last=True,
                                     device=run.device, rank=run.info.rank,
                                     world_size=run.info.world_size)
    with tqdm(total=run.steps_per_epoch, desc=f"epoch {run.epoch + 1}/{c.num_epochs}",
              unit="step", disable=not (progress and run.main), dynamic_ncols=True) as bar:
        for x, y in batches:  # this rank's rows of each global batch
            lr, result = _one_step(run, x, y)
            ce = float(result.losses[0])
            sums.ce += ce
            sums.total += float(result.total)
            sums.steps += 1
            sums.images += c.batch_size
            if on_step is not None:
                on_step(run.step, lr, result)
            bar.update(1)
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{ce:.3f}", lr=f"{lr:.3g}",
                            img_s=f"{sums.images / max(elapsed, 1e-9):.0f}")
    sums.seconds = time.perf_counter() - t0
    run.epoch += 1
    return sums


def _end_epoch(run: _Run, sums: _EpochSums, *, progress: bool) -> dict[str, Any]:
    """The epoch's metrics line; on the main rank: per-epoch eval, checkpoint, metrics.jsonl."""
    from tqdm import tqdm

    info, device = run.info, run.device
    record: dict[str, Any] = {
        "epoch": run.epoch, "step": run.step, "lr": run.lrs[-1] if run.lrs else run.schedule.lr,
        "loss": D.mean_across(sums.ce / max(sums.steps, 1), info, device),
        "loss_total": D.mean_across(sums.total / max(sums.steps, 1), info, device),
        "images_per_s": round(sums.images / max(sums.seconds, 1e-9), 2),
        "epoch_time_s": round(sums.seconds, 3), "method": run.config.method,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if run.main:
        if run.val_data is not None:
            record["val"] = epoch_eval(run.net, run.config, run.train_data, run.val_data, device)
            if progress:
                tqdm.write("  val " + "  ".join(
                    f"{k}: top-1 {v['top1']:.2f}%" for k, v in record["val"].items()))
        if not math.isfinite(record["loss"]):
            raise TrainingDivergedError(f"the mean loss of epoch {run.epoch} is not finite")
        _save(run, record)
        _append_jsonl(run.out / METRICS_FILE, record)
    run.history.append(record)
    D.barrier(info)
    return record


def _start(config: TrainConfig, out: Path, info: D.DistInfo, device: torch.device, *,
           resume_from: Path | None, progress: bool) -> _Run:
    """Set the run up, restored from ``resume_from`` when given; the out dir exists after."""
    if resume_from is not None:
        check_resume_config(config, stored_config(resume_from), resume_from)
    elif (out / CHECKPOINT_FILE).exists():
        raise UsageError(f"{out} already holds a checkpoint; pass --resume to continue it or "
                         "choose another --out")
    run = _setup(config, out, info, device, fresh=resume_from is None, progress=progress)
    if resume_from is not None:
        _restore(run, resume_from)
        if run.main and resume_from == out:  # a kill may have left metrics.jsonl ahead/torn
            reconcile_metrics(out / METRICS_FILE, run.epoch, _stored_record(out / CHECKPOINT_FILE))
    run.model = D.wrap(run.net, info, device)
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
    return run


@_holds_run_lock
def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    on_step: Callable[[int, float, Any], None] | None = None,
) -> TrainResult:
    """Train per ``config`` into ``out_dir`` (default: ``config.log_dir`` or runs/<model>).

    ``resume`` continues the run in ``out_dir`` (or ``config.resume``, a run dir or
    checkpoint). ``stop_after_epochs`` ends this call after that many epochs (the schedule
    still spans ``num_epochs``). ``on_step(step, lr, StepOutput)`` is called after each step.
    Raises :class:`TrainingDivergedError` on a NaN/inf loss, keeping the last checkpoint.
    """
    if config.test_only:
        raise UsageError("test_only: true evaluates instead of training: call "
                         "mutualnet.evaluate.run_eval(config.pretrained, config=config) "
                         "(the CLI does this)")
    t_start = time.perf_counter()
    info = D.init_distributed(resolve_device(config.device).type)
    try:
        device = resolve_device(config.device,
                                local_rank=info.local_rank if info.enabled else None)
        out = Path(out_dir) if out_dir is not None else default_out_dir(config)
        resume_from = out if resume else (Path(config.resume) if config.resume else None)
        run = _start(config, out, info, device, resume_from=resume_from, progress=progress)
        epochs_run = 0
        while run.epoch < run.config.num_epochs and (stop_after_epochs is None
                                                     or epochs_run < stop_after_epochs):
            sums = _run_epoch(run, progress=progress, on_step=on_step)
            _end_epoch(run, sums, progress=progress)
            epochs_run += 1
        return TrainResult(out_dir=out, checkpoint=run.checkpoint, epoch=run.epoch,
                           step=run.step, history=tuple(run.history), lrs=tuple(run.lrs),
                           wall_s=time.perf_counter() - t_start, config=run.config)
    finally:
        D.shutdown(info)


__all__ = ["METRICS_FILE", "STATE_FILE", "TrainResult", "train", "stored_config",
           "resolve_device", "default_out_dir", "epoch_eval", "check_resume_config",
           "load_pretrained_weights", "run_config",
           "configure_training_threads"]
