"""Images/s of the in-memory batched pipeline vs a plain per-image torchvision DataLoader.

Both produce augmented, normalized training batches (pad-4 crop + flip, CIFAR style) of the
bundled CIFAR-10 subset on the CPU, measured one after the other in the same run:

- in-memory: ``load_data(DataSpec(), "train").batches(...)`` (decoded once, batched torch ops);
- mutualnet DataLoader: the same set with ``in_memory=False`` (per-image JPEG decode and
  torchvision transforms in workers, seeded per image);
- plain DataLoader: a minimal Dataset (PIL decode + RandomCrop/Flip/ToTensor/Normalize), the
  usual way of writing it, with the same number of workers.

    python benchmarks/data_pipeline.py [--epochs 3] [--batch-size 256] [--workers 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from mutualnet.data import BUNDLED_NPZ, DataSpec, load_data  # noqa: E402


class PlainJpegDataset(torch.utils.data.Dataset):
    """The textbook per-image pipeline: decode one JPEG with PIL, torchvision transforms."""

    def __init__(self, npz: Path, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        from torchvision import transforms as T

        z = np.load(npz)
        self.jpeg, self.offsets, self.labels = z["train_jpeg"], z["train_offsets"], z["train_labels"]
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                    T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        data = self.jpeg[self.offsets[i]:self.offsets[i + 1]].tobytes()
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return self.transform(img), int(self.labels[i])


def images_per_s(make_epoch: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 epochs: int) -> list[float]:
    rates = []
    for epoch in range(epochs):
        n, t0 = 0, time.perf_counter()
        for x, _ in make_epoch(epoch):
            n += len(x)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per pipeline (median is shown)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads of the main process (DataLoader workers use 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())

    import torchvision.io  # noqa: F401  (import time is not decode time)

    t0 = time.perf_counter()
    mem = load_data(DataSpec(), "train")
    decode_s = time.perf_counter() - t0
    per_image = load_data(DataSpec(in_memory=False, workers=a.workers), "train")
    plain = PlainJpegDataset(BUNDLED_NPZ, mem.mean, mem.std)

    def plain_epoch(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(epoch)
        return torch.utils.data.DataLoader(plain, batch_size=a.batch_size, shuffle=True,
                                           generator=g, num_workers=a.workers)

    kw = dict(augment=True, shuffle=True, seed=0)
    runs = {
        "in-memory, batched torch ops": images_per_s(
            lambda e: mem.batches(a.batch_size, epoch=e, **kw), a.epochs),  # type: ignore[arg-type]
        f"mutualnet DataLoader (in_memory: false), {a.workers} workers": images_per_s(
            lambda e: per_image.batches(a.batch_size, epoch=e, **kw), a.epochs),  # type: ignore[arg-type]
        f"plain torchvision DataLoader, {a.workers} workers": images_per_s(plain_epoch, a.epochs),
    }
    base = statistics.median(runs[f"plain torchvision DataLoader, {a.workers} workers"])
    rows = [(name, f"{statistics.median(r):,.0f}", f"{min(r):,.0f}-{max(r):,.0f}",
             f"{statistics.median(r) / base:.1f}x") for name, r in runs.items()]
    rows.append(("in-memory on GPU (device='cuda')", "not measured (no GPU)", "", ""))
    body = (f"Bundled CIFAR-10 subset ({len(mem)} training images), augmented training batches "
            f"of {a.batch_size} (pad-4 crop + flip, normalized), CPU ({a.threads} torch thread(s) in "
            f"the main process, 1 per DataLoader worker), {a.epochs} epochs each, "
            f"one after the other in one run; median images/s.\n\n"
            + markdown_table(["pipeline", "images/s (median)", "range", "vs plain"], rows)
            + f"\n\nOne-time decode of the in-memory set (load_data: read the npz, decode "
              f"{len(mem)} JPEGs): {decode_s:.2f} s. CPU load average at the start "
              f"(the 2 cores are shared with other jobs): {load}.")
    cmd = (f"python benchmarks/data_pipeline.py --epochs {a.epochs} "
           f"--batch-size {a.batch_size} --workers {a.workers} --threads {a.threads}")
    write_section("data_pipeline", "Data pipeline: in-memory vs per-image DataLoader", body, cmd)


if __name__ == "__main__":
    main()
