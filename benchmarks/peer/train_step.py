"""Training speed against the original: MutualNet's ``train()`` step vs ``mutualnet.train``,
and its data pipeline vs ``mutualnet.data``.

Step: the same model (MobileNet v1, width range [0.25, 1.0] by default), the same batch
of synthetic images and labels, and the same subnet draws on both sides. The original
runs its own ``train()`` function from ``train.py`` (loop body: max width on ``input_list[0]`` with cross-entropy, min width + 2
random widths each on ``input_list[randint(0, 3)]`` with KL to the detached teacher, one
backward per subnet, ``optimizer.step()``, ``lr_scheduler.step()``) with its own
``get_optimizer`` (one param group per tensor) and ``CosineAnnealingLR``. Its model is
wrapped in ``torch.nn.DataParallel``, which on a machine without CUDA is a pass-through
(no replicas, no scatter). Its ``.cuda()`` calls are made no-ops (CPU shim). Its input
list is built per sample by its ``InputList`` transform, as its loader workers do, and
collated; that build is timed separately. Ours runs ``mutualnet.train.train_step`` with
``build_optimizer`` and ``CosineSchedule``; it resizes the batch inside the step. Ours
runs the subnets the original draws (numpy / random seeded alike and replayed).

Timing: one subprocess, one intra-op thread, the two steps alternating step by step (the
loader handed to the original's ``train()`` runs one step of ours before each batch), so
both see the same machine load; CPU time per step is the headline (robust on a shared
machine), wall time is shown too. The first step of each side is a warm-up (the original
also logs on it) and is not timed. Peak memory: each side alone in a fresh subprocess,
``ru_maxrss`` after its steps minus before them (growth of the resident-set high-water
mark; tracemalloc cannot see PyTorch's allocator).

Data: images/s of the original's loaders (``utils.datasets.get_cifar`` / ``get_imagenet``:
their transforms, their DataLoader settings, their per-sample 4-resolution input list)
against ours (``load_data(...).batches``), alternating epochs in one process.
CIFAR-style: the bundled CIFAR-10 subset (their CIFAR10 dataset class is swapped for one
serving these images as PIL images; everything after it is theirs). ImageNet-style: a
temporary ImageFolder of JPEGs made from the natural photos in
``../shared/data/mobilenet_v1_tflite`` (skipped when absent).

GPU: not measured unless run on a machine with CUDA (this script then still runs on CPU).

    python benchmarks/peer/train_step.py [--model mobilenet_v1] [--batch 8] [--steps 5]
        [--no-data] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from benchmarks.peer._pairs import PairSpec, build_ours, find_pair, load_ref  # noqa: E402
from benchmarks.peer._refs import (  # noqa: E402
    ROOT,
    commits_line,
    cpu_cuda_shim,
    load_reference,
    missing_message,
)

RESOLUTIONS = (224, 192, 160, 128)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def draw_subnets(spec: PairSpec, steps: int, seed: int) -> list[list[tuple[float, int]]]:
    """The (width, resolution index) sequence the original's ``train()`` draws, in its order:
    per step ``np.random.uniform(lo, hi, 2)``, then one ``random.randint(0, 3)`` per width of
    sorted([min, *sampled], descending)."""
    np.random.seed(seed)
    random.seed(seed)
    lo, hi = spec.width_range
    out = []
    for _ in range(steps):
        widths = [lo, *list(np.random.uniform(lo, hi, 2))]
        out.append([(float(w), random.randint(0, 3)) for w in sorted(widths, reverse=True)])
    return out


class _Repeat:
    """Yields one batch ``n`` times; ``len`` is large so that the original's loop logs only on
    batch 0 (its ``batch_idx == len(loader) - 1`` test never fires)."""

    def __init__(self, batch: Any, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return 10**9

    def __iter__(self) -> Iterator[Any]:
        return iter([self.batch] * self.n)


def synthetic(batch: int, num_classes: int, seed: int,
              side: int = RESOLUTIONS[0]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, side, side, generator=g),
            torch.randint(0, num_classes, (batch,), generator=g))


def setup_theirs(spec: PairSpec, batch: int, total: int, seed: int,
                 resolutions: tuple[int, ...] = RESOLUTIONS) -> dict[str, Any]:
    """The original's pieces for ``train()``: model in DataParallel, its optimizer and
    scheduler, and the batch as its loader yields it (per-sample input lists, collated)."""
    ref = load_ref(spec, [spec.width_range[0], spec.width_range[1]],
                   extra=("train", "utils.transforms"))
    ref.flags.batch_size = batch
    ref.flags.resolution_list = list(resolutions)
    train_mod = ref["train"]
    train_mod.logger.setLevel(logging.WARNING)
    torch.manual_seed(seed)
    model = ref[spec.module].Model(spec.num_classes, input_size=resolutions[0])
    wrapper = torch.nn.DataParallel(model)   # CPU: device_ids == [], forward passes through
    optimizer = train_mod.get_optimizer(wrapper)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    x, y = synthetic(batch, spec.num_classes, seed, resolutions[0])
    to_list = ref["utils.transforms"].InputList(list(resolutions))
    t0 = time.perf_counter()
    input_list = torch.utils.data.default_collate([to_list(x[i]) for i in range(batch)])
    build_s = time.perf_counter() - t0
    return {"train": train_mod.train, "model": wrapper, "optimizer": optimizer,
            "scheduler": scheduler, "criterion": torch.nn.CrossEntropyLoss(),
            "batch": (input_list, y), "build_s": build_s,
            "replicas": len(wrapper.device_ids)}


def run_theirs(t: dict[str, Any], loader: Any, seed: int) -> None:
    np.random.seed(seed)
    random.seed(seed)
    with cpu_cuda_shim():
        t["train"](0, loader, t["model"], t["criterion"], t["optimizer"], t["scheduler"])


def setup_ours(spec: PairSpec, batch: int, total: int, seed: int) -> dict[str, Any]:
    from mutualnet.config import config_from_dict
    from mutualnet.train import CosineSchedule, Subnet, build_optimizer

    config = config_from_dict({
        "model": spec.ours, "num_classes": spec.num_classes,
        "width_mult_range": list(spec.width_range), "resolution_list": list(RESOLUTIONS),
        "batch_size": batch, "lr": 0.5, "lr_batch_size": batch, "momentum": 0.9,
        "nesterov": True, "weight_decay": 1e-4, "weight_decay_scope": "conv_linear",
    }, source="peer benchmark")
    torch.manual_seed(seed)
    model = build_ours(spec)
    model.train()
    optimizer = build_optimizer(model, config)
    x, y = synthetic(batch, spec.num_classes, seed)
    hi = spec.width_range[1]
    plan = [(Subnet(hi, RESOLUTIONS[0], False),
             *(Subnet(w, RESOLUTIONS[i], True) for w, i in step))
            for step in draw_subnets(spec, total, seed)]
    return {"model": model, "optimizer": optimizer,
            "schedule": CosineSchedule(optimizer, total), "x": x, "y": y, "plan": plan}


def step_ours(o: dict[str, Any], k: int) -> None:
    from mutualnet.train import train_step

    train_step(o["model"], o["optimizer"], o["x"], o["y"], o["plan"][k])
    o["schedule"].step()


class _Interleaved:
    """The original's loader for one timing run: before handing the original its next batch
    it runs (and times) one step of ours, so the two alternate step by step. Records wall
    time and process CPU time of every step of both."""

    def __init__(self, batch: Any, n: int, ours: dict[str, Any]) -> None:
        self.batch, self.n, self.ours = batch, n, ours
        self.theirs: list[tuple[float, float]] = []
        self.mine: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return 10**9   # the original logs on batch 0 and on batch len - 1 only

    def __iter__(self) -> Iterator[Any]:
        handed = (0.0, 0.0)
        for k in range(self.n):
            req = (time.perf_counter(), time.process_time())
            if k:
                self.theirs.append((req[0] - handed[0], req[1] - handed[1]))
            step_ours(self.ours, k)
            self.mine.append((time.perf_counter() - req[0], time.process_time() - req[1]))
            handed = (time.perf_counter(), time.process_time())
            yield self.batch
        self.theirs.append((time.perf_counter() - handed[0], time.process_time() - handed[1]))


def worker_timing(spec: PairSpec, batch: int, steps: int, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)   # CPU time per step stays meaningful on a shared machine
    total = steps + 1
    t = setup_theirs(spec, batch, total, seed)
    o = setup_ours(spec, batch, total, seed)
    loader = _Interleaved(t["batch"], total, o)
    run_theirs(t, loader, seed)
    return {"side": "timing", "theirs_s": loader.theirs[1:], "ours_s": loader.mine[1:],
            "input_list_s": t["build_s"], "replicas": t["replicas"],
            "subnets": [[(s.width, s.resolution) for s in p] for p in o["plan"]]}


def worker_memory(side: str, spec: PairSpec, batch: int, steps: int,
                  seed: int) -> dict[str, Any]:
    """One side alone in this process: ru_maxrss before and after its steps."""
    total = steps + 1
    if side == "theirs":
        t = setup_theirs(spec, batch, total, seed)
        before = _maxrss_mb()
        run_theirs(t, _Repeat(t["batch"], total), seed)
    else:
        o = setup_ours(spec, batch, total, seed)
        before = _maxrss_mb()
        for k in range(total):
            step_ours(o, k)
    return {"side": side, "rss_before_mb": before, "rss_peak_mb": _maxrss_mb()}


def run_worker(kind: str, args: argparse.Namespace, steps: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", args.model,
           "--batch", str(args.batch), "--steps", str(steps), "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- data

class _PilCifar:
    """Stands in for torchvision's CIFAR10 inside the original's ``get_cifar``: same
    constructor and item type (PIL image, int label), images from the bundled subset."""

    images: np.ndarray
    labels: np.ndarray

    def __init__(self, root: str, train: bool = True, download: bool = False,
                 transform: Any = None) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return self.transform(img), int(self.labels[i])


def _bundled_pixels() -> tuple[np.ndarray, np.ndarray]:
    from mutualnet.data import BUNDLED_NPZ
    from mutualnet.data.readers import read_npz

    raw = read_npz(BUNDLED_NPZ, "train")
    return raw.decode_all(), np.asarray(raw.labels)


def make_imagefolder(root: Path, photos: Path, per_class: int = 48) -> int:
    """train/ and val/ folders of JPEGs (quality 90, about 500 x 375 like ImageNet's average)
    cut from the shared natural photos: 2 classes x ``per_class`` training images."""
    from PIL import Image

    sources = sorted(p for p in photos.iterdir() if p.suffix in (".jpg", ".bmp"))
    if not sources:
        raise FileNotFoundError(f"no photos in {photos}")
    rng = random.Random(0)
    n = 0
    for split, count in (("train", per_class), ("val", 2)):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(count):
                img = Image.open(sources[(n + k) % len(sources)]).convert("RGB")
                w, h = img.size
                cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
                x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
                img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((500, 375), Image.Resampling.BILINEAR)
                img.save(d / f"{k:04d}.jpg", quality=90)
            n += count
    return 2 * per_class


def _epoch_rate(batches: Iterator[Any], batch_size: int) -> float:
    t0 = time.perf_counter()
    n = 0
    for item in batches:
        n += len(item[1])
    return n / (time.perf_counter() - t0)


def data_benchmark(epochs: int, workers: int) -> list[list[str]]:
    from mutualnet.data import DataSpec, load_data

    rows: list[list[str]] = []
    # CIFAR style ---------------------------------------------------------------
    pixels, labels = _bundled_pixels()
    _PilCifar.images, _PilCifar.labels = pixels, labels
    cifar_bs = 128
    ref = load_reference("MutualNet", {"dataset": "cifar10", "batch_size": cifar_bs,
                                       "resolution_list": [32, 28, 24, 20],
                                       "width_mult_range": [0.9, 1.0],
                                       "width_mult_list": [1.0]}, ["utils.datasets"])
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator")  # theirs: True
    ds_mod = ref["utils.datasets"]
    ds_mod.datasets = types.SimpleNamespace(CIFAR10=_PilCifar)  # their torchvision handle
    their_loader = ds_mod.get_cifar()[0]
    ours = load_data(DataSpec(), "train")
    t_rates, o_rates = [], []
    for e in range(epochs):
        t_rates.append(_epoch_rate(iter(their_loader), cifar_bs))
        o_rates.append(_epoch_rate(ours.batches(cifar_bs, augment=True, shuffle=True,
                                                epoch=e), cifar_bs))
    rows.append(_data_row(f"CIFAR-style, bundled subset ({len(labels)} images), batch "
                          f"{cifar_bs}", "pad 4 (reflect) + crop 32 + flip, 4-resolution "
                          "input list per sample; DataLoader num_workers=1 (hard-coded)",
                          "pad 4 + crop + flip on the decoded uint8 batch (in memory, no "
                          "workers); one 32 px batch, resized in the step",
                          t_rates, o_rates))
    # ImageNet style ------------------------------------------------------------
    photos = ROOT.parent / "shared" / "data" / "mobilenet_v1_tflite"
    if not photos.is_dir():
        rows.append(["ImageNet-style", "skipped: " + str(photos) + " is absent", "", "", "", ""])
        return rows
    bs = 16
    with tempfile.TemporaryDirectory(prefix="peer-imagefolder-") as tmp:
        n = make_imagefolder(Path(tmp), photos)
        ref = load_reference("MutualNet", {"dataset": "imagenet1k", "dataset_dir": tmp,
                                           "data_transforms": "imagenet1k_mobile",
                                           "data_loader_workers": workers, "batch_size": bs,
                                           "resolution_list": list(RESOLUTIONS),
                                           "width_mult_range": [0.25, 1.0],
                                           "width_mult_list": [1.0]}, ["utils.datasets"])
        their_loader = ref["utils.datasets"].get_imagenet()[0]
        ours = load_data(DataSpec(dataset="imagefolder", root=tmp, image_size=224, resize=256,
                                  augment="imagenet_mobile", workers=workers), "train")
        t_rates, o_rates = [], []
        for e in range(epochs):
            t_rates.append(_epoch_rate(iter(their_loader), bs))
            o_rates.append(_epoch_rate(ours.batches(bs, augment=True, shuffle=True, epoch=e),
                                       bs))
    rows.append(_data_row(f"ImageNet-style, {n} JPEGs of 500x375, batch {bs}",
                          "RandomResizedCrop 224 (0.25-1) + ColorJitter + Lighting + flip, "
                          f"4-resolution input list per sample; {workers} workers",
                          "RandomResizedCrop 224 (0.25-1) + ColorJitter + flip; "
                          f"{workers} workers; one 224 px batch, resized in the step",
                          t_rates, o_rates))
    return rows


def _data_row(what: str, theirs: str, ours: str, t: list[float], o: list[float]) -> list[str]:
    tm, om = statistics.median(t), statistics.median(o)
    return [what, theirs, f"{tm:,.0f}", ours, f"{om:,.0f}", f"{om / tm:.2f}x"]


# --------------------------------------------------------------------------- report

def step_table(spec: PairSpec, batch: int, timing: dict[str, Any],
               memory: dict[str, dict[str, Any]]) -> str:
    tr = batch / statistics.median(c for _, c in timing["theirs_s"])
    orate = batch / statistics.median(c for _, c in timing["ours_s"])
    tw = batch / statistics.median(w for w, _ in timing["theirs_s"])
    ow = batch / statistics.median(w for w, _ in timing["ours_s"])
    tm = memory["theirs"]["rss_peak_mb"] - memory["theirs"]["rss_before_mb"]
    om = memory["ours"]["rss_peak_mb"] - memory["ours"]["rss_before_mb"]
    rows = [
        ["original `train()` step (DataParallel pass-through, input list given)",
         f"{tr:.2f}", f"{batch / tr * 1000:.0f}", f"{tw:.2f}", f"{tm:.0f}"],
        ["original: building its per-sample input list for this batch (loader-worker side)",
         "", f"{timing['input_list_s'] * 1000:.0f}", "", ""],
        ["ours `mutualnet.train.train_step` (resizes inside the step)", f"{orate:.2f}",
         f"{batch / orate * 1000:.0f}", f"{ow:.2f}", f"{om:.0f}"],
        ["**ratio ours / original**", f"**{orate / tr:.2f}x**", "", f"{ow / tw:.2f}x",
         f"{om / tm:.2f}x" if tm > 0 else "n/a"],
    ]
    return markdown_table([f"CPU, 1 thread, {spec.ours} [{spec.width_range[0]}, "
                           f"{spec.width_range[1]}], batch {batch}, 224 px",
                           "images per CPU-second (median step)", "CPU ms/step",
                           "images/s wall (median step)", "peak RSS growth MB"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v1", help="our model name (a MutualNet pair)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side (+1 warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-data", action="store_true", help="skip the data pipeline part")
    ap.add_argument("--no-record", action="store_true", help="print only, leave BENCHMARKS.md")
    ap.add_argument("--worker", choices=("timing", "theirs", "ours"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    msg = missing_message(["MutualNet"])
    if msg:
        print(msg)
        return 0
    spec = find_pair(args.model)
    if args.worker:
        if args.worker == "timing":
            res = worker_timing(spec, args.batch, args.steps, args.seed)
        else:
            res = worker_memory(args.worker, spec, args.batch, args.steps, args.seed)
        print(json.dumps(res))
        return 0
    timing = run_worker("timing", args, args.steps)
    print("CPU ms/step theirs " + ", ".join(f"{c * 1000:.0f}" for _, c in timing["theirs_s"])
          + " | ours " + ", ".join(f"{c * 1000:.0f}" for _, c in timing["ours_s"]), flush=True)
    memory = {side: run_worker(side, args, 2) for side in ("theirs", "ours")}
    for side, m in memory.items():
        print(f"{side}: peak RSS growth {m['rss_peak_mb'] - m['rss_before_mb']:.0f} MB",
              flush=True)
    draws = timing["subnets"][1]
    parts = [
        f"References: {commits_line(['MutualNet'])}.",
        "",
        step_table(spec, args.batch, timing, memory),
        "",
        "One process with one intra-op thread (CPU time per step is then the work done, "
        "whatever else the shared machine runs; wall time is shown too), "
        "the two steps alternating (original, ours, original, ...), "
        f"{args.steps} timed steps each after one warm-up step (the original logs on it); "
        "the same synthetic batch and the same subnets on both sides (the original's "
        "numpy/random draws, replayed for ours; first timed step: "
        + ", ".join(f"w {w:.3f} @ {r}" for w, r in draws) + "). "
        f"DataParallel replicas here: {timing['replicas']} (no CUDA: a pass-through). "
        "Peak memory: each side alone in a fresh process, growth of `ru_maxrss` (the "
        "resident-set high-water mark) over 3 steps. "
        + ("GPU: not measured (no GPU in this run)." if not torch.cuda.is_available()
           else "GPU present, but this script measures the CPU only."),
    ]
    if not args.no_data:
        rows = data_benchmark(args.data_epochs, args.workers)
        parts += ["", "Data pipeline (CPU, images/s, median of "
                  f"{args.data_epochs} epochs, original and ours alternating):", "",
                  markdown_table(["data", "original pipeline", "original img/s",
                                  "ours", "ours img/s", "ratio ours / original"], rows)]
    body = "\n".join(parts)
    if args.no_record:
        print(body)
    else:
        extra = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-record"]
        write_section("peer_step", "Against the original implementations: training step",
                      body, " ".join(["python benchmarks/peer/train_step.py", *extra]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
