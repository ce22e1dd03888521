"""Checkpoints: weights in safetensors with the resolved config, training state beside them.

A run directory holds

- ``checkpoint.safetensors``: the model's state dict by key, with string metadata: the
  format tag, the model name, class count, width range, the full resolved config (JSON),
  step, epoch, optional class names / extra JSON, and the name of its state file;
- ``checkpoint.state.<generation>.pt``: optimizer, scheduler and RNG states plus step/epoch
  and the sha256 of the weights file it belongs to. It holds only tensors and plain Python
  values and is read with ``torch.load(weights_only=True)``: nothing arbitrary is ever
  unpickled. (Runs written before generations have one ``checkpoint.state.pt``; they load.)

Weights and state are one unit. A save writes the weights to a temporary file, then the
state under a new generation name, then moves the weights into place with one
:func:`os.replace`: that rename is the commit. A crash, SIGKILL or full disk at any byte
before it leaves the previous weights with their own state file; after it, the new pair.
Older state files are removed once the new pair is in place. A failed write raises
:class:`CheckpointWriteError` (exit 1) and leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from . import __version__
from .config import ConfigWarning, TrainConfig, config_from_dict
from .errors import CheckpointError, ConfigError, UsageError
from .fileio import atomic_path, fault_point, sha256_file
from .slimmable import SlimmableNet

CHECKPOINT_FILE = "checkpoint.safetensors"
STATE_FILE = "checkpoint.state.pt"  # the state file of runs written before generations
STATE_GLOB = "checkpoint.state*.pt"
FORMAT = "mutualnet-checkpoint"
FORMAT_VERSION = "1"


class BadCheckpointError(CheckpointError, UsageError):
    """The checkpoint the user named is missing, corrupt, or for another model (exit 2)."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, I/O error); the previous one is intact."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its model (weights in place, on ``map_location``) and metadata."""

    path: Path
    config: TrainConfig
    model: SlimmableNet
    step: int
    epoch: int
    sha256: str
    classes: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingState:
    """What ``--resume`` needs besides the weights (from ``checkpoint.state.pt``)."""

    path: Path
    step: int
    epoch: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    weights_sha256: str


# -- helpers ----------------------------------------------------------------------------------

def build_model(config: TrainConfig) -> SlimmableNet:
    """The model a config describes (random init; seed torch first for reproducibility)."""
    from .models import create_model

    try:
        return create_model(config.model, num_classes=config.num_classes,
                            width_range=config.width_mult_range, **config.model_kwargs)
    except TypeError as e:
        raise ConfigError(f"model {config.model!r} does not accept model_kwargs "
                          f"{config.model_kwargs}: {e}") from None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel / compiled wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """A run dir or a ``.safetensors`` file -> the weights file; missing => BadCheckpointError."""
    p = Path(path).expanduser()
    if p.is_dir():
        f = p / CHECKPOINT_FILE
        if not f.is_file():
            raise BadCheckpointError(f"{p} holds no {CHECKPOINT_FILE}; give a run directory "
                                     "written by `mutualnet train` or the .safetensors file")
        return f
    if not p.exists():
        raise BadCheckpointError(f"checkpoint {p} does not exist; give a run directory or "
                                 f"its {CHECKPOINT_FILE}")
    return p


# -- RNG state --------------------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """Global torch (CPU + CUDA), numpy and Python RNG states as tensors and plain values."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# -- save -------------------------------------------------------------------------------------

def save_checkpoint(
    out_dir: str | os.PathLike[str],
    model: nn.Module,
    config: TrainConfig,
    *,
    step: int = 0,
    epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra_meta: dict[str, Any] | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
    save_rng: bool = True,
) -> Path:
    """Write ``out_dir/checkpoint.safetensors`` (+ the training state if ``optimizer``) as one
    unit (see the module doc). Returns the path of the weights file. ``extra_meta`` must be
    JSON-serializable. Raises :class:`CheckpointWriteError` if the disk is full."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = unwrap(model)
    if not isinstance(net, SlimmableNet):
        raise TypeError("save_checkpoint needs a SlimmableNet (from create_model/build_model)")
    if config.num_classes is None:
        config = config.replace(num_classes=_num_classes(net, config))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    meta = _weights_meta(net, config, step, epoch, extra_meta, classes)
    state = None
    if optimizer is not None:
        meta["state_file"] = f"checkpoint.state.{int(step):09d}-{secrets.token_hex(4)}.pt"
        state = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "step": int(step), "epoch": int(epoch),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": capture_rng() if save_rng else {},
        }
    target = out / CHECKPOINT_FILE
    _remove_stale_temps(out)
    try:
        _write_unit(target, tensors, meta, state)
    except (OSError, RuntimeError, SafetensorError) as e:
        raise CheckpointWriteError(
            f"cannot write the checkpoint in {out} ({_write_reason(e)}); free disk space or "
            "pick another --out; the previous checkpoint there is intact") from None
    fault_point("checkpoint.committed")
    _remove_old_states(out, meta.get("state_file"))
    return target


def _weights_meta(net: SlimmableNet, config: TrainConfig, step: int, epoch: int,
                  extra_meta: dict[str, Any] | None,
                  classes: tuple[str, ...] | list[str] | None) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": f"mutualnet {__version__}",
        "model": config.model,
        "num_classes": str(_num_classes(net, config)),
        "width_range": json.dumps(list(config.width_mult_range or ())),
        "model_kwargs": json.dumps(config.model_kwargs, sort_keys=True),
        "config": config.to_json(),
        "step": str(int(step)),
        "epoch": str(int(epoch)),
        "extra": json.dumps(extra_meta or {}, sort_keys=True),
    }
    if classes is not None:
        meta["classes"] = json.dumps([str(c) for c in classes])
    return meta


def _write_unit(target: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str],
                state: dict[str, Any] | None) -> None:
    """Weights to a temp file, the state under its new name, then the weights' rename: the
    commit point. Each file is flushed to disk before the rename that publishes it."""
    from safetensors.torch import save_file

    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        fault_point("checkpoint.weights-written")
        _fsync(tmp)
        if state is not None:
            state["weights_sha256"] = sha256_file(tmp)
            with atomic_path(target.parent / meta["state_file"]) as stmp:
                torch.save(state, stmp)
                fault_point("checkpoint.state-written")
                _fsync(stmp)
            fault_point("checkpoint.state-renamed")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = _first_line(e)
    if "os error" in text or "space" in text.lower():
        return text.rsplit(":", 1)[-1].strip() if ":" in text else text
    return f"{type(e).__name__}: a write failed"


def _remove_stale_temps(out: Path) -> None:
    """Temp files a killed save left behind (``.checkpoint.*.tmp``); never the pair itself."""
    for p in out.glob(".checkpoint.*.tmp"):
        p.unlink(missing_ok=True)


def _remove_old_states(out: Path, keep: str | None) -> None:
    """State files of earlier generations (the committed weights name another one)."""
    for p in out.glob(STATE_GLOB):
        if p.name != keep:
            p.unlink(missing_ok=True)


def _num_classes(net: SlimmableNet, config: TrainConfig) -> int:
    if config.num_classes is not None:
        return config.num_classes
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features


# -- load -------------------------------------------------------------------------------------

def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The safetensors header metadata of a mutualnet checkpoint (no tensors are read)."""
    from safetensors import safe_open

    f = resolve_checkpoint_path(path)
    try:
        with safe_open(str(f), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as e:  # safetensors raises its own error types and OSError
        raise BadCheckpointError(f"{f} is not a readable safetensors checkpoint "
                                 f"({_first_line(e)}); re-run training or re-copy the file") from None
    if meta.get("format") != FORMAT:
        raise BadCheckpointError(f"{f} is a safetensors file but not a mutualnet checkpoint "
                                 "(no 'format: mutualnet-checkpoint' metadata); import foreign "
                                 "weights with `mutualnet import-weights`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BadCheckpointError(f"{f} has checkpoint format version "
                                 f"{meta.get('format_version')!r}; this mutualnet reads "
                                 f"version {FORMAT_VERSION}")
    return meta


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _config_from_meta(meta: Mapping[str, str], f: Path) -> TrainConfig:
    import warnings

    try:
        raw = json.loads(meta["config"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            return config_from_dict(raw, source=f"config stored in {f}")
    except (KeyError, json.JSONDecodeError) as e:
        raise BadCheckpointError(f"{f}: the stored config is missing or not JSON ({e}); "
                                 "the file is corrupt") from None


def load_checkpoint(path: str | os.PathLike[str], *,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (a run dir or its ``.safetensors``) into a fresh model of its config."""
    f = resolve_checkpoint_path(path)
    meta = read_metadata(f)
    config = _config_from_meta(meta, f)
    model = build_model(config)
    state = _read_tensors(f, map_location)
    _check_finite(state, f)
    _load_state(model, state, f, config)
    model.to(map_location)
    classes = tuple(json.loads(meta["classes"])) if "classes" in meta else None
    return Checkpoint(
        path=f, config=config, model=model, step=int(meta.get("step", 0)),
        epoch=int(meta.get("epoch", 0)), sha256=sha256_file(f), classes=classes,
        extra=json.loads(meta.get("extra") or "{}"),
    )


def _read_tensors(f: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(f), device=str(map_location))
    except Exception as e:
        raise BadCheckpointError(f"{f}: cannot read the weights ({_first_line(e)}); the file is "
                                 "corrupt or truncated: re-run training or re-copy it") from None


def _check_finite(state: Mapping[str, torch.Tensor], f: Path) -> None:
    """Refuse weights with NaN/inf (a diverged or damaged run): they evaluate to chance."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise BadCheckpointError(f"{f}: tensor {k!r} holds NaN or infinite values; these "
                                     "weights cannot be evaluated or exported: use an earlier "
                                     "checkpoint or retrain (e.g. with a lower lr)")


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], f: Path,
                config: TrainConfig) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise BadCheckpointError(f"{f}: weights do not match model {config.model!r} ({what}); "
                                 "the checkpoint is for another architecture")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise BadCheckpointError(
                f"{f}: tensor {k!r} has shape {tuple(state[k].shape)}, model {config.model!r} "
                f"expects {tuple(v.shape)}; the checkpoint is for another model or width range")
    model.load_state_dict(state, strict=True)


def check_compatible(config: TrainConfig, meta: Mapping[str, str], f: Path) -> None:
    """Raise BadCheckpointError naming both sides if ``meta`` is for another model/class count."""
    want_classes = config.num_classes
    have_model, have_classes = meta.get("model"), int(meta.get("num_classes", "0"))
    have_range = json.loads(meta.get("width_range", "[]"))
    problems = []
    if have_model != config.model:
        problems.append(f"model {have_model!r} (config wants {config.model!r})")
    if want_classes is not None and have_classes != want_classes:
        problems.append(f"{have_classes} classes (config wants {want_classes})")
    if have_range and config.width_mult_range is not None and \
            float(have_range[1]) != float(config.max_width):
        problems.append(f"max width {have_range[1]} (config wants {config.max_width})")
    if problems:
        raise BadCheckpointError(f"{f} is a checkpoint for " + ", ".join(problems)
                                 + "; use a matching config or checkpoint")


def load_weights(model: nn.Module, path: str | os.PathLike[str], config: TrainConfig) -> Path:
    """Load a checkpoint's weights into ``model`` (built from ``config``), checked by key.

    A checkpoint for another model, class count or maximum width raises a
    :class:`BadCheckpointError` naming both. Returns the weights file's path.
    """
    f = resolve_checkpoint_path(path)
    meta = read_metadata(f)
    check_compatible(config, meta, f)
    net = unwrap(model)
    device = next(iter(net.parameters())).device
    _load_state(net, _read_tensors(f, "cpu"), f, config)
    net.to(device)
    return f


def state_path(run: str | os.PathLike[str]) -> Path:
    """The state file that belongs to a run's weights (named in their metadata; runs written
    before generations: ``checkpoint.state.pt``)."""
    f = resolve_checkpoint_path(run)
    name = read_metadata(f).get("state_file", STATE_FILE)
    if Path(name).name != name or not name.startswith("checkpoint.state"):
        raise BadCheckpointError(f"{f}: its metadata names an invalid state file {name!r}; "
                                 "the file is corrupt")
    return f.parent / name


def load_training_state(run: str | os.PathLike[str]) -> TrainingState:
    """The optimizer/scheduler/RNG state saved with a run's weights (``weights_only``)."""
    f = resolve_checkpoint_path(run)
    s = state_path(f)
    if not s.is_file():
        raise BadCheckpointError(f"{f.parent} has no {s.name}: it holds weights only and "
                                 "cannot be resumed; start a new run (pretrained: PATH)")
    try:
        raw = torch.load(s, map_location="cpu", weights_only=True)
    except Exception:
        # never relay torch's advice to load with weights_only=False: that runs the file's code
        raise BadCheckpointError(f"{s}: cannot read the training state (corrupt, truncated or "
                                 "not written by mutualnet); start a new run or restore the "
                                 "file") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BadCheckpointError(f"{s} is not a mutualnet training state file")
    digest = sha256_file(f)
    if raw.get("weights_sha256") != digest:
        raise BadCheckpointError(f"{s} belongs to other weights than {f} (sha256 mismatch; an "
                                 "interrupted save?); start a new run or restore both files")
    return TrainingState(path=s, step=int(raw["step"]), epoch=int(raw["epoch"]),
                         optimizer=raw["optimizer"], scheduler=raw.get("scheduler"),
                         rng=raw.get("rng") or {}, weights_sha256=digest)
