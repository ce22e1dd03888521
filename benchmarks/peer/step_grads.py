"""Gradient-level equivalence of one training step with the originals' (issue 15).

MutualNet: the original's own ``train()`` (taoyang1122/MutualNet ``train.py``) runs one
batch with its ``get_optimizer`` and ``CosineAnnealingLR``; ours runs
``mutualnet.train.train_step`` on the same weights (copied along the checked mapping of
``_pairs.copy_weights``), the same batch and the subnet draws the original makes (replayed
from its numpy / ``random`` seeds, see ``train_step.draw_subnets``). An optimizer pre-step
hook on each side records every parameter's accumulated gradient just before the one
``optimizer.step()``; the parameters after the step are compared too (this covers the
learning rate, momentum/Nesterov and the weight-decay scope).

US-Nets: the original's ``run_one_epoch(phase='train')`` (JiahuiYu/slimmable_networks
``train.py``: sandwich rule, in-place distillation with its ``CrossEntropyLossSoft``,
``num_sample_training: 4``) against our ``us_net`` subnets (the same widths, all at the base
resolution, in our order: max, randoms descending, min; theirs runs max, min, randoms).

Small inputs (64..40 px, the same code path as 224..128) and a batch of 4 keep it to
seconds. ``perturb`` runs ours with a wrong subnet list (every subnet at the base
resolution) to show that the comparison can fail.

    python benchmarks/peer/step_grads.py
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peer._pairs import build_ours, copy_weights, find_pair, load_ref, randomize  # noqa: E402
from benchmarks.peer._refs import cpu_cuda_shim  # noqa: E402
from benchmarks.peer.train_step import _Repeat, draw_subnets, synthetic  # noqa: E402

SIDES = (64, 56, 48, 40)


@dataclass(frozen=True)
class StepDiff:
    tensors: int
    grad_rel: float      # max over tensors of max|g_ours - g_theirs| / max|g_theirs|
    grad_abs_max: float  # largest |gradient| seen (scale of the comparison)
    param_abs: float     # max |p_ours - p_theirs| after the optimizer step
    update_abs_max: float  # largest |update| of the step (scale of param_abs)
    worst: str           # tensor with the largest relative gradient difference


def _grads_hook(opt: torch.optim.Optimizer, store: dict[int, torch.Tensor]) -> None:
    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        for g in optimizer.param_groups:
            for p in g["params"]:
                store[id(p)] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    opt.register_step_pre_hook(hook)


def _compare(theirs: torch.nn.Module, ours: torch.nn.Module, mapping: Any,
             before: dict[str, torch.Tensor], g_t: dict[int, torch.Tensor],
             g_o: dict[int, torch.Tensor]) -> StepDiff:
    tp, op = dict(theirs.named_parameters()), dict(ours.named_parameters())
    rel, gmax, pdiff, umax, worst = 0.0, 0.0, 0.0, 0.0, ""
    for tn, on, _ in mapping.pairs:
        gt, go = g_t[id(tp[tn])], g_o[id(op[on])]
        scale = float(gt.abs().max())
        d = float((go - gt).abs().max()) / max(scale, 1e-12)
        gmax = max(gmax, scale)
        if d > rel:
            rel, worst = d, tn
        pdiff = max(pdiff, float((op[on].detach() - tp[tn].detach()).abs().max()))
        umax = max(umax, float((tp[tn].detach() - before[tn]).abs().max()))
    return StepDiff(len(mapping.pairs), rel, gmax, pdiff, umax, worst)


def mutual_vs_original(seed: int = 7, batch: int = 4, dataset: str = "cifar10",
                       perturb: bool = False) -> StepDiff:
    """One mutual step, ours vs MutualNet's ``train()``; ``dataset`` picks its weight-decay
    scope (cifar10: all parameters, 5e-4; imagenet1k: conv/linear weights only, 1e-4)."""
    from mutualnet.config import config_from_dict
    from mutualnet.train import Subnet, build_optimizer, train_step

    spec = find_pair("mobilenet_v1")
    lo, hi = spec.width_range
    wd = 5e-4 if dataset == "cifar10" else 1e-4
    ref = load_ref(spec, [lo, hi], extra=("train", "utils.transforms"))
    f = ref.flags
    f.dataset, f.lr, f.momentum, f.nesterov, f.weight_decay = dataset, 0.1, 0.9, True, wd
    f.batch_size, f.resolution_list = batch, list(SIDES)
    train_mod = ref["train"]
    train_mod.logger.setLevel(logging.WARNING)
    torch.manual_seed(seed)
    theirs = ref[spec.module].Model(spec.num_classes, input_size=SIDES[0])
    with torch.no_grad():
        randomize(theirs, seed)
    ours = build_ours(spec)
    mapping = copy_weights(theirs, ours)
    before = {n: p.detach().clone() for n, p in theirs.named_parameters()}

    wrapper = torch.nn.DataParallel(theirs)  # CPU: a pass-through
    opt_t = train_mod.get_optimizer(wrapper)
    sched_t = torch.optim.lr_scheduler.CosineAnnealingLR(opt_t, 10)
    x, y = synthetic(batch, spec.num_classes, seed, SIDES[0])
    to_list = ref["utils.transforms"].InputList(list(SIDES))
    input_list = torch.utils.data.default_collate([to_list(x[i]) for i in range(batch)])
    g_t: dict[int, torch.Tensor] = {}
    _grads_hook(opt_t, g_t)
    np.random.seed(seed)
    random.seed(seed)
    with cpu_cuda_shim():
        train_mod.train(0, _Repeat((input_list, y), 1), wrapper, torch.nn.CrossEntropyLoss(),
                        opt_t, sched_t)

    config = config_from_dict({
        "model": spec.ours, "num_classes": spec.num_classes,
        "width_mult_range": [lo, hi], "resolution_list": list(SIDES), "image_size": SIDES[0],
        "batch_size": batch, "lr": 0.1, "momentum": 0.9, "nesterov": True,
        "weight_decay": wd, "weight_decay_scope": "all" if dataset == "cifar10" else "conv_linear",
    }, source="step_grads")
    ours.train()
    opt_o = build_optimizer(ours, config)
    g_o: dict[int, torch.Tensor] = {}
    _grads_hook(opt_o, g_o)
    draws = draw_subnets(spec, 1, seed)[0]
    plan = [Subnet(hi, SIDES[0], False),
            *(Subnet(w, SIDES[0] if perturb else SIDES[i], True) for w, i in draws)]
    train_step(ours, opt_o, input_list[0], y, plan)
    return _compare(theirs, ours, mapping, before, g_t, g_o)


def usnet_vs_original(seed: int = 7, batch: int = 4, perturb: bool = False) -> StepDiff:
    """One US-Nets step (sandwich + in-place distillation), ours vs slimmable_networks'."""
    from mutualnet.config import config_from_dict
    from mutualnet.train import Subnet, build_optimizer, train_step

    spec = find_pair("mobilenet_v1", "slimmable_networks")
    lo, hi = spec.width_range
    side = SIDES[0]
    ref = load_ref(spec, [lo, hi], extra=("train", "utils.loss_ops"))
    f = ref.flags
    f.slimmable_training = True
    f.universally_slimmable_training = True
    f.inplace_distill = True
    f.num_sample_training = 4
    f.topk = [1, 5]
    f.lr_scheduler = "none"   # the lr stays 0.1 for the step (ours: cosine at step 0)
    f.num_epochs, f.batch_size, f.data_size_train = 1, batch, batch
    train_mod = ref["train"]
    torch.manual_seed(seed)
    theirs = ref[spec.module].Model(spec.num_classes, input_size=side)
    with torch.no_grad():
        randomize(theirs, seed)
    ours = build_ours(spec)
    mapping = copy_weights(theirs, ours)
    before = {n: p.detach().clone() for n, p in theirs.named_parameters()}
    opt_t = torch.optim.SGD(theirs.parameters(), 0.1, momentum=0.9, nesterov=True,
                            weight_decay=5e-4)
    g_t: dict[int, torch.Tensor] = {}
    _grads_hook(opt_t, g_t)
    x, y = synthetic(batch, spec.num_classes, seed, side)
    random.seed(seed)
    randoms = [random.uniform(lo, hi) for _ in range(2)]   # what run_one_epoch will draw
    random.seed(seed)
    meters = train_mod.get_meters("train")
    with cpu_cuda_shim():
        train_mod.run_one_epoch(0, [(x, y)], theirs, torch.nn.CrossEntropyLoss(reduction="none"),
                                opt_t, meters, phase="train",
                                soft_criterion=ref["utils.loss_ops"].CrossEntropyLossSoft(
                                    reduction="none"))

    config = config_from_dict({
        "model": spec.ours, "num_classes": spec.num_classes, "width_mult_range": [lo, hi],
        "resolution_list": [side], "image_size": side, "batch_size": batch, "lr": 0.1,
        "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "weight_decay_scope": "all",
        "method": "us_net",
    }, source="step_grads")
    ours.train()
    opt_o = build_optimizer(ours, config)
    g_o: dict[int, torch.Tensor] = {}
    _grads_hook(opt_o, g_o)
    widths = [*sorted(randoms, reverse=True), lo]
    plan = [Subnet(hi, side, False),
            *(Subnet(w, SIDES[-1] if perturb and k == 0 else side, True)
              for k, w in enumerate(widths))]
    train_step(ours, opt_o, x, y, plan)
    return _compare(theirs, ours, mapping, before, g_t, g_o)


def main() -> int:
    from benchmarks.peer._refs import skip_or_exit

    skip_or_exit(["MutualNet", "slimmable_networks"])
    torch.set_num_threads(1)
    rows = [("mutual vs MutualNet train(), CIFAR wd (all params)", mutual_vs_original()),
            ("mutual vs MutualNet train(), ImageNet wd (conv/linear)",
             mutual_vs_original(dataset="imagenet1k")),
            ("us_net vs US-Nets run_one_epoch()", usnet_vs_original()),
            ("control: mutual with every subnet at the base resolution",
             mutual_vs_original(perturb=True)),
            ("control: us_net with one subnet at 40 px", usnet_vs_original(perturb=True))]
    print("| step | tensors | max rel grad diff | max |grad| | max param diff after step "
          "| max |update| |")
    print("|---|---|---|---|---|---|")
    for name, d in rows:
        print(f"| {name} | {d.tensors} | {d.grad_rel:.2e} | {d.grad_abs_max:.3g} | "
              f"{d.param_abs:.2e} | {d.update_abs_max:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
