"""Forward latency on CPU: slimmable supernet at width w vs a plain model of the same channels.

The plain model is built from ordinary nn.Conv2d / nn.BatchNorm2d / nn.Linear with exactly
the active channel counts of the supernet at w, and the supernet's sliced weights copied in.
Runs are interleaved (supernet, plain, supernet, ...) and the median of each is compared, so
both see the same machine load. Records the table in BENCHMARKS.md ("slicing_overhead").

    python benchmarks/slicing_overhead.py [--reps 15] [--resolution 224]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from mutualnet.models import create_model  # noqa: E402
from mutualnet.slimmable import (  # noqa: E402
    GlobalAvgPool,
    SlimBatchNorm2d,
    SlimConv2d,
    SlimLinear,
    SlimmableNet,
)


def plain_copy(model: SlimmableNet, width: float) -> nn.Module:
    """A plain module tree with the active channels at ``width`` and copied weights."""

    def convert(m: nn.Module, plan: dict[int, tuple[int, int]]) -> nn.Module:
        if isinstance(m, SlimConv2d):
            i, o = plan[id(m)]
            conv = nn.Conv2d(i, o, m.kernel_size, m.stride, m.padding,
                             groups=i if m.depthwise else 1, bias=m.bias is not None)
            conv.weight.data.copy_(m.weight[:o] if m.depthwise else m.weight[:o, :i])
            return conv
        if isinstance(m, SlimBatchNorm2d):
            _, o = plan[id(m)]
            bn = nn.BatchNorm2d(o)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).data.copy_(getattr(m, name)[:o])
            return bn
        if isinstance(m, SlimLinear):
            i, _ = plan[id(m)]
            lin = nn.Linear(i, m.out_features)
            lin.weight.data.copy_(m.weight[:, :i])
            lin.bias.data.copy_(m.bias)
            return lin
        if isinstance(m, GlobalAvgPool):
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for name, child in m.named_children():
            setattr(m, name, convert(child, plan))
        return m

    clone = copy.deepcopy(model)
    plan = {id(layer): p for layer, p in zip(clone.slim_layers, clone.plan(width), strict=True)}
    return nn.Sequential(*(convert(getattr(clone, n), plan)
                           for n in ("features", "pool", "classifier")))


def time_once(fn, x: torch.Tensor) -> float:
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def measure(width: float, batch: int, resolution: int, reps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model("mobilenet_v1").eval()
    plain = plain_copy(model, width).eval()
    x = torch.randn(batch, 3, resolution, resolution)
    sup, pl = [], []
    with torch.inference_mode(), model.subnet(width):
        diff = (model(x) - plain(x)).abs().max().item()
        assert diff < 1e-3, f"plain copy differs from the supernet by {diff}"
        for _ in range(2):
            model(x), plain(x)
        for _ in range(reps):
            sup.append(time_once(model, x))
            pl.append(time_once(plain, x))
    return statistics.median(sup) * 1e3, statistics.median(pl) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 keeps a shared machine's noise down)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for batch in (1, 32):
        for width in (0.25, 0.5, 1.0):
            reps = args.reps if batch == 1 else max(3, args.reps // 3)
            s, p = measure(width, batch, args.resolution, reps)
            rows.append((batch, width, f"{s:.2f}", f"{p:.2f}", f"{s / p:.3f}"))
            print(rows[-1], flush=True)
    body = ("MobileNet v1 supernet at width w (`with model.subnet(w)`) vs a plain model with "
            f"the same channels and copied weights, {args.resolution} px, fp32, "
            f"`torch.inference_mode`, {torch.get_num_threads()} threads; medians of "
            "interleaved runs.\n\n" + markdown_table(
                ["batch", "width", "supernet ms", "plain ms", "ratio"], rows))
    if not args.no_write:
        write_section("slicing_overhead", "Slicing overhead: supernet vs plain model (CPU)",
                      body, f"python benchmarks/slicing_overhead.py --reps {args.reps} --threads {args.threads}")


if __name__ == "__main__":
    main()
