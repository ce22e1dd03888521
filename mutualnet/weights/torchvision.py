"""torchvision state dicts (MobileNet v2, ResNet-50) mapped by name onto the supernet.

Our ``mobilenet_v2`` and ``resnet50`` use torchvision's module names, so a state dict
saved by ``torch.save(torchvision_model.state_dict(), path)`` maps name for name onto
the supernet's slice at width 1.0; every shape is checked. The file is read with
``torch.load(weights_only=True)``: no code in it runs.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, UsageError, reason
from ..slimmable import SlimmableNet
from .common import COUNTERS, Placement, plan_placement

#: The width a torchvision model corresponds to.
TORCHVISION_WIDTH = 1.0
#: Prefixes that wrappers (DataParallel/DDP, some training scripts) add to every name.
_PREFIXES = ("module.", "model.")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; unwrap ``{"state_dict": ...}`` files."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(f"{path}: refused: it holds Python objects besides tensors, which are "
                         "never unpickled (they could run code); save the weights with "
                         "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        first = reason(e).split(". ")[0]
        raise CheckpointError(f"{path}: cannot read it as a torch file ({first}); "
                              f"is it complete? download it again") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise UsageError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; "
                         f"save one with torch.save(model.state_dict(), path)")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UsageError(f"{path}: the dict holds no tensors; it is not a state dict")
    return _strip_prefix(tensors)


def _strip_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            return {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def plan(model: SlimmableNet, tensors: Mapping[str, torch.Tensor], *, source: str) -> Placement:
    """Check that ``tensors`` belong to this architecture, then match every name and shape."""
    check_architecture(model, tensors, source=source)
    return plan_placement(model, tensors, TORCHVISION_WIDTH, source=source)


def check_architecture(model: SlimmableNet, tensors: Mapping[str, torch.Tensor], *,
                       source: str) -> None:
    """Refuse a state dict most of whose names the supernet does not have, naming a better fit."""
    ours = {k for k in model.state_dict() if not k.endswith(COUNTERS)}
    theirs = {k for k in tensors if not k.endswith(COUNTERS)}
    common = len(ours & theirs)
    if common >= 0.9 * max(len(ours), len(theirs)):
        return
    name = getattr(model, "model_name", type(model).__name__)
    best = _best_match(theirs, exclude=name)
    hint = (f"; it looks like a {best[0]} state dict ({best[1]} of {len(theirs)} names match): "
            f"pass --model {best[0]}" if best else "; it is not a model this project has")
    raise UsageError(f"{source}: this state dict is not a {name}: only {common} of its "
                     f"{len(theirs)} tensor names are in {name} (which has {len(ours)}){hint}")


def _best_match(names: set[str], *, exclude: str) -> tuple[str, int] | None:
    from ..models import create_model, list_models

    best: tuple[str, int] | None = None
    for candidate in list_models():
        if candidate == exclude:
            continue
        try:
            with torch.device("meta"):
                keys = set(create_model(candidate).state_dict())
        except Exception:  # noqa: BLE001 - a model that needs arguments is no candidate
            continue
        hits = len(keys & names)
        if hits >= 0.9 * len(names) and (best is None or hits > best[1]):
            best = (candidate, hits)
    return best
