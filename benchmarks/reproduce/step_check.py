"""Why boosting does not hold at the CPU scale: cheap diagnostics on the study's runs.

1. ``gap``: the full network (w1.00, 32 px) of each finished run, BN-calibrated as the
   study does (2,000 augmented training images), evaluated on all 50,000 *training*
   images (no augmentation; the npz is sorted by class, so a prefix would be one class)
   and on the 10,000 test images: top-1 and loss on both. A
   train/test gap near zero means the network underfits, so there is no overfitting for
   the subnets' distillation to regularize away.
2. ``grads``: on the mutual step, how the full network's shared weights are pulled: for a
   few batches, the gradient of the teacher's cross-entropy ``g_ce`` and of the three KL
   terms ``g_kl`` (summed, as the step accumulates them) on every parameter, at the run's
   initial weights (seed 0, step 0) and at a checkpoint. Reports ||g_kl|| / ||g_ce|| and
   cos(g_ce, g_ce + g_kl).

    python -m benchmarks.reproduce.step_check gap RUN_DIR...
    python -m benchmarks.reproduce.step_check grads RUN_DIR [--batches 4]
    python -m benchmarks.reproduce.step_check short OUT_DIR [--epochs 2]

3. ``short``: the cpu scale's settings cut to ``--epochs`` (default 2, minutes not hours),
   seed 0: plain w1.00, mutual on [0.25, 1.0] (the study's range) and mutual on [0.9, 1.0]
   (the original's CIFAR range, apps/wideresnet.yml); w1.00-r32 top-1 of each (BN
   calibrated on 2,000 images, 10,000 test images). One seed: a hint, not a verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def _load(run_dir: Path) -> tuple[object, torch.nn.Module]:
    from mutualnet.checkpoint import build_model, load_weights
    from mutualnet.train.loop import stored_config

    config = stored_config(run_dir)
    torch.manual_seed(config.random_seed)
    net = build_model(config)
    load_weights(net, run_dir, config)
    return config, net


def gap(run_dirs: list[Path]) -> list[dict[str, object]]:
    from mutualnet.calibrate import calibrate_bn
    from mutualnet.data import load_data
    from mutualnet.evaluate import evaluate

    rows = []
    data: dict[str, object] = {}
    for run_dir in run_dirs:
        config, net = _load(run_dir)
        if "train" not in data:
            data["train"] = load_data(config.data_spec("train"), "train")
            data["val"] = load_data(config.data_spec("val"), "val")
        w, r = config.max_width, config.base_resolution
        calibrate_bn(net, w, r, data["train"], num_images=config.calib_images,
                     batch_size=config.calib_batch_size, seed=config.random_seed)
        tr = evaluate(net, w, r, data["train"])
        te = evaluate(net, w, r, data["val"])
        rows.append({"run": run_dir.name, "width": w, "resolution": r,
                     "train_top1": round(tr.top1, 2), "train_loss": round(tr.loss, 4),
                     "test_top1": round(te.top1, 2), "test_loss": round(te.loss, 4)})
    return rows


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in net.parameters()])


def grads(run_dir: Path, batches: int, at_init: bool) -> dict[str, float]:
    from mutualnet.data import load_data, resize_to
    from mutualnet.train.step import distill_loss, sample_subnets

    config, net = _load(run_dir)
    if at_init:
        from mutualnet.checkpoint import build_model

        torch.manual_seed(config.random_seed)
        net = build_model(config)
    train = load_data(config.data_spec("train"), "train")
    net.train()
    ratios, coss, cos_kl = [], [], []
    it = train.batches(config.batch_size, augment=True, shuffle=True, seed=config.random_seed,
                       epoch=0, drop_last=True)
    for k, (x, y) in zip(range(batches), it, strict=False):
        subs = sample_subnets("mutual", step=k, seed=config.random_seed,
                              width_range=(config.min_width, config.max_width),
                              resolutions=config.resolution_list,
                              base_resolution=config.base_resolution)
        net.zero_grad(set_to_none=True)
        with net.subnet(subs[0].width):
            teacher = net(x)
            F.cross_entropy(teacher, y).backward()
        g_ce = _flat(net).clone()
        teacher = teacher.detach()
        net.zero_grad(set_to_none=True)
        for s in subs[1:]:
            with net.subnet(s.width):
                distill_loss(net(resize_to(x, s.resolution)), teacher).backward()
        g_kl = _flat(net).clone()
        ratios.append(float(g_kl.norm() / g_ce.norm()))
        coss.append(float(F.cosine_similarity(g_ce, g_ce + g_kl, dim=0)))
        cos_kl.append(float(F.cosine_similarity(g_ce, g_kl, dim=0)))
    n = len(ratios)
    return {"run": run_dir.name, "at": "init" if at_init else "final checkpoint",
            "batches": n, "kl_over_ce_norm": round(sum(ratios) / n, 3),
            "cos_ce_total": round(sum(coss) / n, 3), "cos_ce_kl": round(sum(cos_kl) / n, 3)}


def short(out: Path, epochs: int) -> list[dict[str, object]]:
    from benchmarks.reproduce.settings import DEFAULT_DATA, SCALES, plan_runs, run_config
    from mutualnet.train import train

    scale = SCALES["cpu"].replace(epochs=epochs, seeds=(0,))
    specs = {s.name: s for s in plan_runs(scale)}
    rows = []
    for name, spec, lo in (("plain w1.00", specs["independent-w1.00"], None),
                           ("mutual [0.25, 1.0]", specs["mutual"], None),
                           ("mutual [0.9, 1.0]", specs["mutual"], 0.9)):
        run_dir = out / name.replace(" ", "_").replace("[", "").replace("]", "").replace(",", "")
        config = run_config(spec, scale, run_dir, DEFAULT_DATA, "cpu")
        if lo is not None:
            config = config.replace(width_mult_range=(lo, 1.0))
        res = train(config, run_dir, progress=False)
        row = gap([run_dir])[0]
        rows.append({"run": name, "epochs": epochs, "train_wall_s": round(res.wall_s, 1),
                     "last_epoch_train_ce": round(res.history[-1]["loss"], 4), **row})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gap")
    g.add_argument("runs", nargs="+", type=Path)
    d = sub.add_parser("grads")
    d.add_argument("run", type=Path)
    d.add_argument("--batches", type=int, default=4)
    sh = sub.add_parser("short")
    sh.add_argument("out", type=Path)
    sh.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "gap":
        for row in gap(args.runs):
            print(json.dumps(row))
    elif args.cmd == "short":
        short(args.out, args.epochs)
    else:
        for at_init in (True, False):
            print(json.dumps(grads(args.run, args.batches, at_init)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
