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
from collections.abc import Callable
from dataclasses import dataclass
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


def resolve_device(name: str, info: D.DistInfo | None = None) -> torch.device:
    """``auto`` -> CUDA when available (this rank's GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if name == "cuda" and info is not None and info.enabled:
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def default_out_dir(config: TrainConfig) -> Path:
    return Path(config.log_dir) if config.log_dir else Path("runs") / config.model


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
    from ..evaluate import evaluate

    probe = copy.deepcopy(net)
    out = {}
    resolutions = config.resolution_list or (config.base_resolution,)
    for w, r in ((config.max_width, config.base_resolution),
                 (config.min_width, min(resolutions))):
        calibrate_bn(probe, w, r, train_data, num_images=min(config.calib_images, len(train_data)),
                     batch_size=config.calib_batch_size, device=device, seed=config.random_seed)
        res = evaluate(probe, w, r, val_data, batch_size=config.eval_batch_size, device=device)
        out[f"w{w:g}-r{r}"] = {"top1": round(res.top1, 3), "top5": round(res.top5, 3)}
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
    from tqdm import tqdm

    from ..data import load_data

    if config.test_only:
        raise UsageError("test_only: true evaluates instead of training: call "
                         "mutualnet.evaluate.run_eval(config.pretrained, config=config) "
                         "(the CLI does this)")
    t_start = time.perf_counter()
    want = config.device
    pre = resolve_device(want)
    info = D.init_distributed(pre.type)
    try:
        device = resolve_device(want, info)
        out = Path(out_dir) if out_dir is not None else default_out_dir(config)
        resume_from = out if resume else (Path(config.resume) if config.resume else None)
        if resume_from is not None:
            check_resume_config(config, stored_config(resume_from), resume_from)
        amp = config.amp if config.amp is not None else device.type == "cuda"
        channels_last = (config.channels_last if config.channels_last is not None
                         else device.type == "cuda")

        train_data = load_data(config.data_spec("train"), "train")
        if config.num_classes is None:
            config = config.replace(num_classes=train_data.num_classes)
        elif config.num_classes != train_data.num_classes:
            raise ConfigError(f"num_classes is {config.num_classes} but the {config.dataset} "
                              f"training data has {train_data.num_classes} classes; set "
                              f"num_classes: {train_data.num_classes}")
        val_data = load_data(config.data_spec("val"), "val") if config.eval_each_epoch else None

        local_bs = D.local_batch_size(config.batch_size, info)
        steps_per_epoch = len(train_data) // config.batch_size
        if steps_per_epoch == 0:
            raise ConfigError(f"batch_size {config.batch_size} is larger than the training set "
                              f"({len(train_data)} images); lower batch_size")
        total_steps = steps_per_epoch * config.num_epochs

        torch.manual_seed(config.random_seed)
        net = build_model(config)
        imported = load_pretrained_weights(net, config) if resume_from is None else None
        if imported is not None and info.is_main and progress:
            tqdm.write(f"pretrained: {imported.summary()}", file=sys.stderr)
        pretrained_meta = ({"pretrained_import": imported.summary()}
                           if imported is not None else {})
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        optimizer = build_optimizer(net, config)
        schedule = CosineSchedule(optimizer, total_steps)
        epoch, step = 0, 0
        if resume_from is not None:
            load_weights(net, resume_from, config)
            state = load_training_state(resume_from)
            optimizer.load_state_dict(state.optimizer)
            if state.scheduler is not None:
                schedule.load_state_dict(state.scheduler)
            if state.rng:
                restore_rng(state.rng)
            epoch, step = state.epoch, state.step
            if resume:
                reconcile_metrics(out / METRICS_FILE, epoch, _stored_record(out / CHECKPOINT_FILE))
            if schedule.total_steps != total_steps or step != epoch * steps_per_epoch:
                raise ConfigError(f"{resume_from}: the saved schedule ({schedule.total_steps} "
                                  f"steps) does not match this data/batch size ({total_steps}); "
                                  "resume with the same data and batch_size")
        model = D.wrap(net, info, device)
        main = info.is_main
        if main:
            out.mkdir(parents=True, exist_ok=True)
        autocast_dtype = torch.bfloat16 if amp else None
        history: list[dict[str, Any]] = []
        lrs: list[float] = []
        classes = tuple(train_data.classes)
        ckpt = out / CHECKPOINT_FILE
        epochs_run = 0
        while epoch < config.num_epochs:
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                break
            net.train()
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                       unit="step", disable=not (progress and main), dynamic_ncols=True)
            t0 = time.perf_counter()
            ce_sum = total_sum = 0.0
            n_steps = images = 0
            batches = train_data.batches(config.batch_size, augment=True, shuffle=True,
                                         seed=config.random_seed, epoch=epoch, drop_last=True,
                                         device=device, rank=info.rank,
                                         world_size=info.world_size)
            for x, y in batches:  # this rank's rows of each global batch
                assert len(x) == local_bs
                subnets = sample_subnets(
                    config.method, step=step, seed=config.random_seed,
                    width_range=(config.min_width, config.max_width),
                    resolutions=config.resolution_list or (config.base_resolution,),
                    base_resolution=config.base_resolution,
                    num_random=config.num_sampled_widths, fixed_width=config.independent_width)
                lr = schedule.lr
                try:
                    result = train_step(model, optimizer, x, y, subnets,
                                        autocast_dtype=autocast_dtype,
                                        channels_last=channels_last)
                except TrainingDivergedError as e:
                    bar.close()
                    kept = (f"the last good checkpoint {ckpt} (epoch {epoch}) was kept"
                            if ckpt.exists() else "no checkpoint had been written yet")
                    if main:
                        _append_jsonl(out / METRICS_FILE, {
                            "event": "diverged", "epoch": epoch + 1, "step": step, "lr": lr,
                            "message": str(e)})
                    raise TrainingDivergedError(
                        f"training diverged at epoch {epoch + 1}, step {step}: {e}; {kept}. "
                        f"Start a new run with a lower lr (now {lr:.4g}) or check the data"
                    ) from None
                schedule.step()
                lrs.append(lr)
                ce = float(result.losses[0])
                ce_sum += ce
                total_sum += float(result.total)
                n_steps += 1
                step += 1
                images += config.batch_size
                if on_step is not None:
                    on_step(step, lr, result)
                bar.update(1)
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{ce:.3f}", lr=f"{lr:.3g}",
                                img_s=f"{images / max(elapsed, 1e-9):.0f}")
            bar.close()
            epoch_time = time.perf_counter() - t0
            epoch += 1
            epochs_run += 1
            record: dict[str, Any] = {
                "epoch": epoch, "step": step, "lr": lrs[-1] if lrs else schedule.lr,
                "loss": D.mean_across(ce_sum / max(n_steps, 1), info, device),
                "loss_total": D.mean_across(total_sum / max(n_steps, 1), info, device),
                "images_per_s": round(images / max(epoch_time, 1e-9), 2),
                "epoch_time_s": round(epoch_time, 3), "method": config.method,
                "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            if main:
                if val_data is not None:
                    record["val"] = epoch_eval(net, config, train_data, val_data, device)
                    if progress:
                        tqdm.write("  val " + "  ".join(
                            f"{k}: top-1 {v['top1']:.2f}%" for k, v in record["val"].items()))
                if not math.isfinite(record["loss"]):
                    raise TrainingDivergedError(f"the mean loss of epoch {epoch} is not finite")
                save_checkpoint(out, net, config, step=step, epoch=epoch, optimizer=optimizer,
                                scheduler=schedule, classes=classes,
                                extra_meta={"val": record.get("val", {}), "metrics": record,
                                            "method": config.method, **pretrained_meta})
                _append_jsonl(out / METRICS_FILE, record)
            history.append(record)
            D.barrier(info)
        return TrainResult(out_dir=out, checkpoint=ckpt, epoch=epoch, step=step,
                           history=tuple(history), lrs=tuple(lrs),
                           wall_s=time.perf_counter() - t_start, config=config)
    finally:
        D.shutdown(info)


__all__ = ["METRICS_FILE", "STATE_FILE", "TrainResult", "train", "stored_config",
           "resolve_device", "default_out_dir", "epoch_eval", "check_resume_config",
           "load_pretrained_weights"]
