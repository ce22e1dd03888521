"""MAC throughput of the MutualNet training step vs a plain torchvision step of the same
architecture (issue 15, the GPU check; goal: ratio at least 0.8).

Plain: ``torchvision.models.<name>()``, one forward + backward at full width and the base
resolution, cross-entropy, one SGD step. Mutual: ``mutualnet.train.train_step`` on the
registry model of the same name (SPEC 3: full width + 3 sampled (w, r) subnets with the
trainer's real draws). Both bf16 autocast and channels_last (``--fp32`` for a CPU dry
run), same batch, same process, timed in alternating rounds. MAC throughput = forward
MACs of every subnet a step runs x batch / step time; the ratio is mutual / plain, so a
step that costs what its subnets' MACs predict scores 1.0.

    python benchmarks/step_vs_torchvision.py --device cuda                 # GPU figures
    python benchmarks/step_vs_torchvision.py --device cpu --fp32 --batch 2 --steps 2 \\
        --rounds 1 --models mobilenet_v2 --resolutions 64,56,48,40 --benchmarks /tmp/B.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from mutualnet.flops import count  # noqa: E402
from mutualnet.models import create_model  # noqa: E402
from mutualnet.train import sample_subnets, train_step  # noqa: E402

GOAL = 0.8


def _timed(fn: Callable[[], None], device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def _setup(name: str, batch: int, device: str, channels_last: bool,
           resolutions: tuple[int, ...] | None) -> dict[str, Any]:
    import torchvision

    torch.manual_seed(0)
    ours = create_model(name).to(device)
    if resolutions:
        ours.resolutions = resolutions  # a toy size for the CPU dry run
    theirs = getattr(torchvision.models, name)(num_classes=1000).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (ours, theirs):
        m.to(memory_format=fmt)  # type: ignore[call-overload]
        m.train()
    base = max(ours.resolutions)
    x = torch.randn(batch, 3, base, base, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    return {"ours": ours, "theirs": theirs, "x": x, "y": y, "base": base,
            "opt_ours": torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9),
            "opt_theirs": torch.optim.SGD(theirs.parameters(), lr=1e-3, momentum=0.9)}


def measure(name: str, batch: int, steps: int, rounds: int, device: str, amp: bool,
            channels_last: bool, resolutions: tuple[int, ...] | None = None
            ) -> dict[str, float]:
    """Median step times of both sides and the MAC-throughput ratio."""
    s = _setup(name, batch, device, channels_last, resolutions)
    ours, theirs, x, y = s["ours"], s["theirs"], s["x"], s["y"]
    lo, hi = ours.width_range
    draws = [sample_subnets("mutual", step=i, seed=0, width_range=(lo, hi),
                            resolutions=ours.resolutions, base_resolution=s["base"])
             for i in range(steps)]
    dtype = torch.bfloat16 if amp else None
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def plain() -> None:
        for _ in range(steps):
            s["opt_theirs"].zero_grad(set_to_none=True)
            with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(theirs(x), y)
            loss.backward()
            s["opt_theirs"].step()

    def mutual() -> None:
        for subs in draws:
            train_step(ours, s["opt_ours"], x, y, subs, autocast_dtype=dtype,
                       channels_last=channels_last, check_finite=False)

    plain()  # warm-up (kernel selection, allocator)
    mutual()
    tp = [_timed(plain, device) / steps for _ in range(rounds)]
    tm = [_timed(mutual, device) / steps for _ in range(rounds)]
    macs_plain = count(ours, hi, s["base"]).macs
    macs_mutual = statistics.fmean(sum(count(ours, sn.width, sn.resolution).macs for sn in d)
                                   for d in draws)
    t_p, t_m = statistics.median(tp), statistics.median(tm)
    return {"plain_ms": t_p * 1e3, "mutual_ms": t_m * 1e3, "mac_ratio": macs_mutual / macs_plain,
            "plain_gmacs": macs_plain * batch / t_p / 1e9,
            "mutual_gmacs": macs_mutual * batch / t_m / 1e9,
            "throughput_ratio": (macs_mutual / t_m) / (macs_plain / t_p)}


def _check_same_architecture(name: str) -> None:
    """The ratio compares like with like only if both sides run the same MACs at 1.0."""
    import torchvision

    ours = sum(p.numel() for p in create_model(name).parameters())
    theirs = sum(p.numel() for p in getattr(torchvision.models, name)().parameters())
    if ours != theirs:
        raise SystemExit(f"{name}: {ours} parameters here vs {theirs} in torchvision; "
                         "the comparison needs the same architecture")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,resnet50")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resolutions", help="comma list replacing the model's (toy dry run)")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast (CPU dry run)")
    ap.add_argument("--benchmarks", type=Path, help="BENCHMARKS.md to write (default the "
                    "repository's)")
    args = ap.parse_args(argv)
    amp, cl = not args.fp32, not args.fp32
    rows = []
    for name in args.models.split(","):
        _check_same_architecture(name)
        res = tuple(int(v) for v in args.resolutions.split(",")) if args.resolutions else None
        try:
            r = measure(name, args.batch, args.steps, args.rounds, args.device, amp, cl, res)
        except RuntimeError as e:  # e.g. out of memory: keep the other models' rows
            rows.append([name, args.batch, f"failed: {str(e).splitlines()[0][:80]}",
                         *["not measured"] * 6])
            continue
        rows.append([name, args.batch, f"{r['plain_ms']:.1f}", f"{r['mutual_ms']:.1f}",
                     f"{r['mac_ratio']:.2f}", f"{r['plain_gmacs']:.0f}",
                     f"{r['mutual_gmacs']:.0f}", f"{r['throughput_ratio']:.2f}",
                     "yes" if r["throughput_ratio"] >= GOAL else "no"])
        print(rows[-1], flush=True)
    where = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
             else f"CPU ({torch.get_num_threads()} threads)")
    mode = "fp32 (dry run: not a GPU figure)" if args.fp32 else "bf16 autocast, channels_last"
    if args.resolutions:
        mode += f", resolutions {args.resolutions}"
    body = (f"{where}, {mode}; {args.steps} steps x {args.rounds} rounds per side, median.\n\n"
            + markdown_table(["model", "batch", "plain torchvision step ms", "mutual step ms",
                              "summed-MACs ratio", "plain GMAC/s", "mutual GMAC/s",
                              "MAC-throughput ratio", f">= {GOAL}?"], rows))
    key = "step_vs_torchvision" + ("_dry" if args.fp32 or not args.device.startswith("cuda")
                                   else "")
    cmd = " ".join(["python benchmarks/step_vs_torchvision.py", *(argv or sys.argv[1:])])
    write_section(key, "Training step vs torchvision: MAC throughput (GPU check)", body, cmd,
                  path=args.benchmarks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
