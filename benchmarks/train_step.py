"""Images/s of the MutualNet training step vs a plain single-width step, side by side.

The mutual step runs 4 subnets (max width at the base resolution + 3 sampled (w, r)
pairs), so its cost should track the summed MACs of those subnets (forward + backward),
not exceed that by much. Both steps run on the same model, same batch, same process,
interleaved in rounds; the subnet draws are the real ones of steps 0..N-1.

    python benchmarks/train_step.py              # tiny model, then MobileNet v1 at batch 16
    python benchmarks/train_step.py --quick      # tiny model only

GPU rows (bf16, channels_last, ImageNet batch sizes) are written "not measured" unless run
on a CUDA machine with --gpu.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from mutualnet.flops import count  # noqa: E402
from mutualnet.models import create_model  # noqa: E402
from mutualnet.train.step import Subnet, sample_subnets, train_step  # noqa: E402


def _time(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def measure(model_name: str, batch: int, steps: int, rounds: int, device: str,
            amp: bool, channels_last: bool) -> dict[str, object]:
    torch.manual_seed(0)
    model = create_model(model_name).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    lo, hi = model.width_range
    res = model.resolutions
    base = max(res)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, base, base, device=device)
    y = torch.randint(0, 10 if model_name == "tiny_mobilenet" else 1000, (batch,), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    draws = [sample_subnets("mutual", step=i, seed=0, width_range=(lo, hi), resolutions=res,
                            base_resolution=base) for i in range(steps)]
    plain = (Subnet(hi, base, False),)
    dtype = torch.bfloat16 if amp else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model.train()

    def run(subnet_lists: list[tuple[Subnet, ...]]) -> None:
        for subs in subnet_lists:
            train_step(model, opt, x, y, subs, autocast_dtype=dtype, channels_last=channels_last,
                       check_finite=False)

    run(draws[:2])  # warm-up
    run([plain] * 2)
    t_mutual, t_plain = [], []
    for _ in range(rounds):
        t_plain.append(_time(lambda: run([plain] * steps), sync) / steps)
        t_mutual.append(_time(lambda: run(draws), sync) / steps)
    macs_plain = count(model, hi, base).macs
    macs_mutual = statistics.mean(sum(count(model, s.width, s.resolution).macs for s in d)
                                  for d in draws)
    tp, tm = statistics.median(t_plain), statistics.median(t_mutual)
    return {"model": model_name, "batch": batch, "device": device,
            "plain_ips": batch / tp, "mutual_ips": batch / tm, "time_ratio": tm / tp,
            "mac_ratio": macs_mutual / macs_plain}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model only")
    ap.add_argument("--gpu", action="store_true", help="also run the GPU rows (needs CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    load = __import__("os").getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    cases = [("tiny_mobilenet", 128, 20, 5)]
    if not args.quick:
        cases.append(("mobilenet_v1", 16, 3, 3))
    for name, batch, steps, rounds in cases:
        r = measure(name, batch, steps, rounds, "cpu", amp=False, channels_last=False)
        rows.append([f"{name} (CPU fp32, {torch.get_num_threads()} threads)", batch,
                     f"{r['plain_ips']:.0f}", f"{r['mutual_ips']:.0f}",
                     f"{r['time_ratio']:.2f}", f"{r['mac_ratio']:.2f}",
                     f"{r['time_ratio'] / r['mac_ratio']:.2f}"])
        print(rows[-1], flush=True)
    gpu_cases = [("mobilenet_v1", 256), ("mobilenet_v2", 256), ("resnet50", 128)]
    for name, batch in gpu_cases:
        if args.gpu and torch.cuda.is_available():
            r = measure(name, batch, 10, 3, "cuda", amp=True, channels_last=True)
            rows.append([f"{name} (GPU bf16 channels_last)", batch, f"{r['plain_ips']:.0f}",
                         f"{r['mutual_ips']:.0f}", f"{r['time_ratio']:.2f}",
                         f"{r['mac_ratio']:.2f}", f"{r['time_ratio'] / r['mac_ratio']:.2f}"])
        else:
            rows.append([f"{name} (GPU bf16 channels_last)", batch] + ["not measured"] * 5)
    body = markdown_table(
        ["model", "batch", "plain step img/s", "mutual step img/s", "time ratio",
         "summed-MACs ratio", "time ratio / MACs ratio"], rows)
    body += ("\n\nPlain step: one forward + backward at the max width and base resolution, CE, "
             "one SGD step. Mutual step: SPEC 3 (max width + 3 sampled (w, r) subnets, "
             "KL to the detached teacher, backward per subnet, one SGD step). Summed-MACs ratio: "
             "mean over the benchmark's draws of the 4 subnets' MACs / the max subnet's MACs. "
             "A last column near 1.0 means the step costs what its subnets' MACs predict; above "
             "1.0 is per-subnet overhead (resize, extra kernel launches, small layers that use "
             "the CPU poorly).")
    import os

    body += (f"\n\nCPU load average when the run started: {load[0]:.1f} on {os.cpu_count()} cores "
             "(other processes share this machine; absolute img/s are noisy, the ratios are "
             "measured interleaved in one process).")
    cmd = " ".join(["python benchmarks/train_step.py", *sys.argv[1:]])
    write_section("train_step", "Training step: mutual learning vs a plain step", body, cmd)


if __name__ == "__main__":
    main()
