"""Optimizer and learning-rate schedule of SPEC section 3.

SGD with Nesterov momentum 0.9; the learning rate follows a cosine from its base value to
0 over every iteration of the run, with no warm-up. The schedule is a closed-form function
of the step index (no recurrence), so resuming at step k gives exactly the learning rate an
uninterrupted run has at step k. Weight decay is applied to every parameter (CIFAR-style)
or only to the weights of non-depthwise convolutions and linear layers (ImageNet-style).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..slimmable import SlimConv2d


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """``base_lr * (1 + cos(pi * step / total)) / 2``: base_lr at step 0, 0 at ``total``."""
    if total_steps <= 0:
        return base_lr
    t = min(max(step, 0), total_steps) / total_steps
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


class CosineSchedule:
    """Sets each param group's lr to the cosine value for the current step.

    Construction applies step 0's learning rate; call :meth:`step` after every optimizer
    step. ``state_dict`` holds only numbers (safe for ``torch.load(weights_only=True)``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.base_lrs = [float(g.setdefault("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    @property
    def lr(self) -> float:
        """The learning rate of the first param group at the current step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def lr_at(self, step: int) -> float:
        return cosine_lr(self.base_lrs[0], step, self.total_steps)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = cosine_lr(base, self.last_step, self.total_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total_steps": self.total_steps,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.total_steps = int(state["total_steps"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()


def _is_depthwise(m: nn.Conv2d) -> bool:
    if isinstance(m, SlimConv2d):
        return bool(m.depthwise)
    return m.groups > 1 and m.groups == m.in_channels


def param_groups(model: nn.Module, weight_decay: float, scope: str) -> list[dict[str, Any]]:
    """SGD param groups: ``scope`` "all" decays everything; "conv_linear" decays only the
    weights of non-depthwise convs and Linear layers (0 on depthwise, BN and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if scope == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    if scope != "conv_linear":
        raise ValueError(f"unknown weight decay scope {scope!r}")
    decay_ids = set()
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not _is_depthwise(m) or isinstance(m, nn.Linear):
            decay_ids.add(id(m.weight))
    decay = [p for p in params if id(p) in decay_ids]
    rest = [p for p in params if id(p) not in decay_ids]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD (Nesterov per config) at the batch-scaled learning rate, grouped weight decay."""
    groups = param_groups(model, config.weight_decay, config.resolved_weight_decay_scope)
    return torch.optim.SGD(groups, lr=config.effective_lr, momentum=config.momentum,
                           nesterov=config.nesterov)
