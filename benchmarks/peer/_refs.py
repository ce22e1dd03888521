"""Load the original MutualNet / US-Nets code from ``refs/`` for side-by-side runs.

The reference repositories are checked out (by hand, see docs/peer.md) into the
git-ignored folder ``<repo>/refs/`` and are never imported by the package. Their code
reads a global ``FLAGS`` object built from a YAML named on the command line
(``app:apps/x.yml``) the moment ``utils.config`` is imported, and both repositories
use the top-level package names ``models`` and ``utils``. :func:`load_reference`
therefore, for one load: writes the requested settings to a temporary YAML, sets
``sys.argv`` to name it, puts the checkout first on ``sys.path``, imports the
requested modules from a temporary working directory (their ``train.py`` creates a
``logs/`` folder where it is imported), and then takes every ``models`` / ``utils``
/ ``train`` / ``ComputePostBN`` entry back out of ``sys.modules``, restoring whatever
was there. The module objects it returns keep working (their functions hold their
own globals), and two loads never see each other's ``FLAGS``.

Shims for running old GPU-only code on a current CPU-only PyTorch are context
managers, applied only around the calls that need them (:func:`cpu_cuda_shim`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
REFS_ENV = "MUTUALNET_REFS"

#: name -> (public repository, folder under refs/)
REPOSITORIES = {
    "MutualNet": "taoyang1122/MutualNet",
    "slimmable_networks": "JiahuiYu/slimmable_networks",
}
_TOP_LEVEL = ("models", "utils", "train", "ComputePostBN")

#: The settings every load starts from: MutualNet's apps/*.yml keys (SPEC section 8).
BASE_FLAGS: dict[str, Any] = {
    "dataset": "imagenet1k",
    "data_transforms": "imagenet1k_mobile",
    "dataset_dir": "",
    "data_loader_workers": 2,
    "num_classes": 1000,
    "image_resize": 256,
    "image_size": 224,
    "num_epochs": 1,
    "print_freq": 10**9,
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "nesterov": True,
    "lr": 0.5,
    "lr_scheduler": "cosine",
    "profiling": ["none"],  # their AttrDict cannot hold an empty list
    "random_seed": 1995,
    "batch_size": 2,
    "log_dir": "logs/",
    "model": "models.mobilenet_v1",
    "reset_parameters": True,
    "test_only": False,
    "pretrained": "",
    "resume": "",
}


class ReferenceMissing(RuntimeError):
    """The reference checkout is not there; the message says how to get it."""


def refs_dir() -> Path:
    """Where the checkouts live: ``$MUTUALNET_REFS`` or ``<repo>/refs``."""
    return Path(os.environ.get(REFS_ENV) or ROOT / "refs")


def ref_path(name: str) -> Path:
    """The checkout of reference ``name``; raises :class:`ReferenceMissing` if absent."""
    if name not in REPOSITORIES:
        raise ValueError(f"unknown reference {name!r}; known: {', '.join(REPOSITORIES)}")
    path = refs_dir() / name
    if not (path / "models").is_dir() or not (path / "utils" / "config.py").is_file():
        raise ReferenceMissing(
            f"reference checkout {path} is absent: clone it with "
            f"`git clone https://github.com/{REPOSITORIES[name]} {path}` "
            f"(see docs/peer.md); skipping")
    return path


def missing_message(names: Sequence[str] = tuple(REPOSITORIES)) -> str | None:
    """None when every named checkout is present, else the first skip message."""
    for name in names:
        try:
            ref_path(name)
        except ReferenceMissing as exc:
            return str(exc)
    return None


def commit_id(name: str) -> str:
    """The checked-out commit of reference ``name`` (``unknown`` if git cannot tell)."""
    path = ref_path(name)
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def commits_line(names: Sequence[str] = tuple(REPOSITORIES)) -> str:
    """``taoyang1122/MutualNet@<sha>, ...`` for the report."""
    return ", ".join(f"{REPOSITORIES[n]}@{commit_id(n)}" for n in names)


@dataclass(frozen=True)
class Reference:
    """One isolated load of a reference: its FLAGS and the modules asked for."""

    name: str
    flags: Any
    modules: Mapping[str, ModuleType]

    def __getitem__(self, module: str) -> ModuleType:
        return self.modules[module]


def _is_ref_module(key: str) -> bool:
    return any(key == top or key.startswith(top + ".") for top in _TOP_LEVEL)


def load_reference(name: str, flags: Mapping[str, Any], modules: Sequence[str]) -> Reference:
    """Import ``modules`` (e.g. ``models.mobilenet_v1``) of reference ``name`` with FLAGS
    built from :data:`BASE_FLAGS` updated by ``flags``, isolated from any other load."""
    root = ref_path(name)
    saved_modules = {k: v for k, v in sys.modules.items() if _is_ref_module(k)}
    for key in saved_modules:
        del sys.modules[key]
    saved_argv, saved_path, saved_cwd = sys.argv, list(sys.path), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="peer-ref-") as tmp:
        cfg = Path(tmp) / "app.yml"
        cfg.write_text(yaml.safe_dump({**BASE_FLAGS, **dict(flags)}))
        try:
            sys.argv = ["peer", f"app:{cfg}"]
            sys.path.insert(0, str(root))
            os.chdir(tmp)
            loaded = {m: importlib.import_module(m) for m in modules}
            config = importlib.import_module("utils.config")
            return Reference(name, config.FLAGS, loaded)
        finally:
            os.chdir(saved_cwd)
            sys.argv, sys.path[:] = saved_argv, saved_path
            for key in [k for k in sys.modules if _is_ref_module(k)]:
                del sys.modules[key]
            sys.modules.update(saved_modules)


def set_width(model: Any, width: float) -> None:
    """The references' way of choosing a width: a global attribute on every module."""
    model.apply(lambda m: setattr(m, "width_mult", width))


@contextlib.contextmanager
def cpu_cuda_shim() -> Iterator[None]:
    """Make the references' unconditional ``.cuda()`` / ``torch.cuda.synchronize()``
    calls no-ops on a machine without CUDA (inside the block only)."""
    import torch

    if torch.cuda.is_available():
        yield
        return
    saved = torch.Tensor.cuda, torch.cuda.synchronize

    def _tensor_cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.cuda = _tensor_cuda  # type: ignore[method-assign,assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.cuda.synchronize = saved  # type: ignore[method-assign]


def skip_or_exit(names: Sequence[str]) -> None:
    """For the scripts: print the skip message and exit 0 when a checkout is missing."""
    msg = missing_message(names)
    if msg is not None:
        print(msg)
        raise SystemExit(0)
