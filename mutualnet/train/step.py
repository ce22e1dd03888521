"""One training step: MutualNet's mutual learning (SPEC 3) and the two baselines.

``mutual`` (default): the max width at the base resolution learns from the labels
(cross-entropy); its logits, detached, teach the min width and ``num_random`` widths drawn
uniformly from the range, each at a resolution drawn from the resolution list, through
KL(teacher || student) (batchmean, temperature 1, fp32). Widths run in descending order,
each loss is backpropagated as soon as it is computed (gradients accumulate; one subnet's
activations live at a time), then the optimizer steps once.

``us_net``: the same sandwich of widths, all at the base resolution, with in-place
distillation (US-Nets). ``independent``: one fixed width, cross-entropy only.

The draws come from a generator seeded by (seed, step) only, so every data-parallel rank
and a resumed run draw exactly the same subnets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingDivergedError
from ..slimmable import SlimmableNet


@dataclass(frozen=True)
class Subnet:
    """One forward of a step: width, input resolution, and whether it distills (else CE)."""

    width: float
    resolution: int
    distill: bool


def step_rng(seed: int, step: int) -> random.Random:
    """The subnet-draw generator of ``step``: a function of (seed, step) only."""
    return random.Random(f"mutualnet-step:{int(seed)}:{int(step)}")


def sample_subnets(
    method: str,
    *,
    step: int,
    seed: int,
    width_range: tuple[float, float],
    resolutions: Sequence[int],
    base_resolution: int,
    num_random: int = 2,
    fixed_width: float | None = None,
) -> tuple[Subnet, ...]:
    """The subnets a step runs, in execution order (widths descending; teacher first)."""
    lo, hi = float(width_range[0]), float(width_range[1])
    if method == "independent":
        return (Subnet(hi if fixed_width is None else float(fixed_width), base_resolution, False),)
    if method not in ("mutual", "us_net"):
        raise ValueError(f"unknown training method {method!r}")
    rng = step_rng(seed, step)
    randoms = sorted((rng.uniform(lo, hi) for _ in range(num_random)), reverse=True)
    widths = [hi, *randoms, lo]
    subnets = [Subnet(hi, base_resolution, False)]
    for w in widths[1:]:
        r = int(rng.choice(list(resolutions))) if method == "mutual" else base_resolution
        subnets.append(Subnet(w, r, True))
    return tuple(subnets)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)), batchmean, temperature 1, in fp32."""
    return F.kl_div(F.log_softmax(student_logits.float(), dim=1),
                    F.softmax(teacher_logits.float(), dim=1), reduction="batchmean")


@dataclass(frozen=True)
class StepOutput:
    """Detached per-subnet losses of one step (same order as ``subnets``)."""

    subnets: tuple[Subnet, ...]
    losses: tuple[torch.Tensor, ...]

    @property
    def total(self) -> torch.Tensor:
        return torch.stack(self.losses).sum()


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    from ..data import resize_to

    return resize_to(x, int(resolution))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    subnets: Sequence[Subnet],
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    check_finite: bool = True,
) -> StepOutput:
    """Run ``subnets`` on batch (x, y), backpropagating each loss at once; one optimizer step.

    ``model`` is a :class:`SlimmableNet` or a DistributedDataParallel around one; with DDP,
    every backward but the last runs under ``no_sync()`` so gradients are all-reduced once.
    A non-finite loss raises :class:`TrainingDivergedError` before the optimizer steps.
    """
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(net, SlimmableNet):
        raise TypeError("train_step needs a SlimmableNet (optionally wrapped in DDP)")
    if not subnets:
        raise ValueError("a step needs at least one subnet")
    if subnets[0].distill:
        raise ValueError("the first subnet of a step must be the cross-entropy teacher")
    optimizer.zero_grad(set_to_none=True)
    teacher: torch.Tensor | None = None
    losses: list[torch.Tensor] = []
    device_type = x.device.type
    last = len(subnets) - 1
    for i, sub in enumerate(subnets):
        sync = nullcontext()
        if i < last and isinstance(model, nn.parallel.DistributedDataParallel):
            sync = model.no_sync()  # type: ignore[assignment]
        with sync, net.subnet(sub.width):
            xi = _resize(x, sub.resolution)
            if channels_last:
                xi = xi.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                logits = model(xi)
            if sub.distill:
                assert teacher is not None
                loss = distill_loss(logits, teacher)
            else:
                loss = F.cross_entropy(logits.float(), y)
                teacher = logits.detach()
            loss.backward()
        losses.append(loss.detach())
    out = StepOutput(tuple(subnets), tuple(losses))
    if check_finite:
        values = torch.stack(losses)
        if not bool(torch.isfinite(values).all()):
            bad = next(i for i, v in enumerate(values.tolist()) if not torch.isfinite(
                torch.tensor(v)))
            sub = subnets[bad]
            optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(
                f"the loss became {values[bad].item()} (subnet width {sub.width:.3g}, "
                f"resolution {sub.resolution})")
    optimizer.step()
    return out
