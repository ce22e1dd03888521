"""Exported subnets vs directly built plain models: ONNX Runtime CPU latency, export time.

For a few (w, r) points of MobileNet v1 (random init, BN calibrated on a few real images):

1. latency: ONNX Runtime CPU, batch 1, p50/p90 of the sliced subnet's ONNX next to the same
   network built directly as a plain torchvision-style model (nn.Conv2d / nn.BatchNorm2d /
   ReLU6 with those channel counts, the same weights, AdaptiveAvgPool2d) exported the same
   way. Runs alternate between the two sessions so both see the same machine load; the
   ratio should be ~1.0 (slicing leaves no overhead).
2. export + parity wall time per subnet: slice, save (safetensors + arch.json), ONNX with
   the TorchScript exporter and, side by side, the dynamo exporter; parity on real images.
3. the tiny model's 12-point grid through the whole ``mutualnet export`` pipeline.

Records the tables in BENCHMARKS.md (section "export_latency"). GPU rows: not measured here.

    python benchmarks/export_latency.py [--seconds 2] [--threads 1] [--skip-grid]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from export.backends.onnxruntime import OrtRunner  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.parity import collect, compare  # noqa: E402
from export.slicing import save_subnet, slice_subnet  # noqa: E402
from export.torch_runner import TorchRunner  # noqa: E402
from mutualnet.calibrate import calibrate_bn  # noqa: E402
from mutualnet.data import DataSpec, load_data, resize_to  # noqa: E402
from mutualnet.flops import count, human  # noqa: E402
from mutualnet.models import create_model  # noqa: E402
from mutualnet.models.mobilenet_v1 import BLOCKS, STEM  # noqa: E402
from mutualnet.slimmable import SlimmableNet, active_channels  # noqa: E402

POINTS = ((0.25, 128), (0.5, 160), (0.75, 192), (1.0, 224))
DYNAMO_POINTS = (POINTS[0], POINTS[-1])  # the dynamo exporter is slow: time it at the ends


# --------------------------------------------------------------------------- plain model
def _cbr(cin: int, cout: int, stride: int, groups: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class PlainMobileNetV1(nn.Module):
    """MobileNet v1 at one width written directly with torch.nn layers (no slimming)."""

    def __init__(self, width: float, num_classes: int) -> None:
        super().__init__()
        c = active_channels(STEM, width)
        layers = [_cbr(3, c, 2)]
        for out, stride in BLOCKS:
            o = active_channels(out, width)
            layers.append(nn.Sequential(_cbr(c, c, stride, groups=c), _cbr(c, o, 1, k=1)))
            c = o
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def plain_copy(model: SlimmableNet, width: float) -> PlainMobileNetV1:
    """The plain model with the supernet's active weights and BN statistics copied in."""
    plain = PlainMobileNetV1(width, model.classifier.out_features).eval()
    src = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)]
    dst = [m for m in plain.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)]
    with torch.no_grad():
        for s, d in zip(src, dst, strict=True):
            for name, t in (*d.named_parameters(recurse=False), *d.named_buffers(recurse=False)):
                if name == "num_batches_tracked":
                    continue
                full = getattr(s, name)
                t.copy_(full[tuple(slice(0, n) for n in t.shape)])
    return plain


def export_plain(plain: nn.Module, resolution: int, path: Path) -> Path:
    """Exported exactly like the slicer's output (same exporter, opset, names, dynamic batch)."""
    return export_onnx(plain, resolution, path).path


# --------------------------------------------------------------------------- latency
def latency_pair(a: Path, b: Path, resolution: int, seconds: float,
                 threads: int) -> tuple[list[float], list[float]]:
    """Alternate batch-1 runs of two ONNX files; per-run milliseconds of each."""
    ra, rb = (OrtRunner(p, threads=threads) for p in (a, b))
    x = np.random.default_rng(0).normal(size=(1, 3, resolution, resolution)).astype(np.float32)
    warm = time.perf_counter() + 0.2
    while time.perf_counter() < warm:
        ra(x), rb(x)
    ta: list[float] = []
    tb: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(ta) < 20:
        order = ((ra, ta), (rb, tb)) if len(ta) % 2 == 0 else ((rb, tb), (ra, ta))
        for runner, out in order:  # alternate who goes first: no cache/turbo bias
            t0 = time.perf_counter()
            runner(x)
            out.append((time.perf_counter() - t0) * 1e3)
    return ta, tb


def pct(v: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(v), q))


# --------------------------------------------------------------------------- main
def run_points(seconds: float, threads: int, images: int) -> tuple[str, str]:
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", num_classes=1000)
    train = load_data(DataSpec(max_images=64), "train")
    val = load_data(DataSpec(max_images=images), "val")
    x32, _ = next(val.batches(images, augment=False, shuffle=False))
    lat_rows, time_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for width, res in POINTS:
            calibrate_bn(model, width, res, train, num_images=64, batch_size=32)
            t0 = time.perf_counter()
            sliced = slice_subnet(model, width, res)
            t1 = time.perf_counter()
            save_subnet(sliced, root / f"{width}" / "sub")
            t2 = time.perf_counter()
            onnx_path = export_onnx(sliced.module, res, root / f"{width}" / "m.onnx").path
            t3 = time.perf_counter()
            if (width, res) in DYNAMO_POINTS:
                export_onnx(sliced.module, res, root / f"{width}" / "d.onnx", exporter="dynamo")
            t4 = time.perf_counter()
            dynamo = f"{t4 - t3:.3f}" if (width, res) in DYNAMO_POINTS else "-"
            batch = [resize_to(x32, res).numpy()]
            ref = collect(TorchRunner(model, width=width), batch)
            sl = compare(ref, collect(TorchRunner(sliced.module), batch))
            ort_r = compare(ref, collect(OrtRunner(onnx_path), batch))
            t5 = time.perf_counter()
            plain = plain_copy(model, width)
            plain_r = compare(ref, collect(TorchRunner(plain), batch))
            plain_path = export_plain(plain, res, root / f"{width}" / "plain.onnx")
            ta, tb = latency_pair(onnx_path, plain_path, res, seconds, threads)
            cost = count(model, width, res)
            ratio = statistics.median(ta) / statistics.median(tb)
            paired = statistics.median(a / b for a, b in zip(ta, tb, strict=True))
            lat_rows.append([f"w{width:.2f}-r{res}", human(cost.macs),
                             f"{pct(ta, 50):.3f}", f"{pct(ta, 90):.3f}", f"{pct(tb, 50):.3f}",
                             f"{pct(tb, 90):.3f}", f"{ratio:.3f}", f"{paired:.3f}", len(ta),
                             f"{plain_r.max_abs_diff:.1e}"])
            time_rows.append([f"w{width:.2f}-r{res}", f"{t1 - t0:.3f}", f"{t2 - t1:.3f}",
                              f"{t3 - t2:.3f}", dynamo, f"{t5 - t4:.3f}",
                              f"{(t3 - t0) + (t5 - t4):.3f}", f"{sl.max_abs_diff:.1e}",
                              f"{ort_r.max_abs_diff:.1e}"])
            print(lat_rows[-1], time_rows[-1], flush=True)
    lat = markdown_table(
        ["subnet", "MACs", "sliced p50 ms", "sliced p90 ms", "plain p50 ms", "plain p90 ms",
         "ratio of p50s", "median of paired ratios", "runs each",
         "plain (PyTorch) vs supernet max diff"], lat_rows)
    times = markdown_table(
        ["subnet", "slice s", "save s", "ONNX torchscript s", "ONNX dynamo s",
         f"parity s ({images} images: supernet, sliced, ORT)", "export+parity s (torchscript)",
         "sliced max diff", "ORT max diff"], time_rows)
    return lat, times


def run_grid() -> str:
    """The tiny model's 12-point grid through export_checkpoint (random-init checkpoint)."""
    from export.pipeline import ExportOptions, export_checkpoint
    from mutualnet.checkpoint import build_model, save_checkpoint
    from mutualnet.config import load_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = load_config(None)
        ck = save_checkpoint(Path(tmp) / "run", build_model(config), config)
        runs = ((0, "0 (stored BN statistics)"), (2000, "2000"),
                (None, "config default: 10000 (the bundled set has 5000)"))
        for i, (calib, label) in enumerate(runs):
            t0 = time.perf_counter()
            report = export_checkpoint(ck, Path(tmp) / f"out{i}", ExportOptions(
                widths=(0.25, 0.5, 1.0), calib_images=calib, eval_images=500, progress=False))
            wall = time.perf_counter() - t0
            stages = {k: sum(s.timings[k] for s in report.subnets)
                      for k in ("calibrate", "slice", "save_and_onnx", "parity")}
            rows.append([len(report.subnets), label, f"{wall:.1f}",
                         f"{stages['calibrate']:.1f}", f"{stages['slice']:.2f}",
                         f"{stages['save_and_onnx']:.2f}", f"{stages['parity']:.2f}",
                         "all pass" if report.ok else f"FAILED {report.failed}"])
            print(rows[-1], flush=True)
    return markdown_table(["subnets", "calib images / subnet", "wall s (incl. checkpoint load)",
                           "calibrate s", "slice s", "save + ONNX s", "parity s (500 images)",
                           "parity"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per point")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    ap.add_argument("--images", type=int, default=16, help="parity images per point")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (1: robust on a shared, busy CPU)")
    ap.add_argument("--skip-grid", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()[0]
    lat, times = run_points(args.seconds, args.threads, args.images)
    grid = "" if args.skip_grid else run_grid()
    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    body = (
        f"1-minute load average of the (shared) machine: {load}; torch ran with "
        f"{args.torch_threads} intra-op thread(s). Wall times swing with other jobs' load; "
        "the latency ratio is measured side by side.\n\n"
        "MobileNet v1 (1000 classes, random init, BN calibrated on 64 real images per point). "
        f"ONNX Runtime CPUExecutionProvider, {args.threads} intra-op thread(s), batch 1, "
        f"{args.seconds:g} s of alternating runs per point after 0.2 s warm-up. \"plain\" is "
        "the same network written directly with nn.Conv2d/nn.BatchNorm2d/ReLU6 and "
        "AdaptiveAvgPool2d, same weights, exported the same way (TorchScript exporter, "
        "opset 17, dynamic batch).\n\n### Latency, CPU\n\n" + lat +
        "\n\nGPU (CUDA provider): not measured (no GPU on this machine).\n\n"
        "### Export and parity wall time per subnet\n\n" + times +
        "\n\nThe TorchScript exporter is the default: it writes opset 17 directly; the dynamo "
        "exporter builds an opset-18 graph and converts it down (and fails to for "
        "MobileNet v1's tf_same Pad).\n")
    if grid:
        body += ("\n### 12-point grid through `export_checkpoint` (tiny_mobilenet, widths "
                 "0.25,0.5,1.0 x resolutions 32,28,24,20)\n\n" + grid + "\n")
    write_section("export_latency", "Export: sliced vs plain latency, export time", body,
                  "python " + " ".join(["benchmarks/export_latency.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
