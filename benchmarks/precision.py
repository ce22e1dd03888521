"""fp32 vs fp16 vs int8 artifacts: ONNX Runtime CPU latency on MobileNet v1, accuracy on the
tiny grid, per-subnet vs shared int8 calibration.

1. MobileNet v1 at 0.25-128, 0.5-160, 0.75-192, 1.0-224 (random init, BN calibrated on 64
   bundled images at each point), exported, then ``model.fp16.onnx`` and ``model.int8.onnx``
   built exactly as ``mutualnet export --precision`` builds them (int8 calibrated on those
   64 images at the point's resolution); ONNX Runtime CPU p50/p90 at batch 1 and 32.
2. The tiny model's grid (``--checkpoint``, default: trained here like the tests' fixture)
   through ``export_checkpoint`` with fp32,fp16,int8: top-1 drop and agreement per subnet.
3. The same int8 graphs with one shared calibration (the activation scales of the largest
   subnet copied into every other), against each subnet's own.

CUDA provider: not measured (no GPU here). Writes BENCHMARKS.md section "precision".

    python benchmarks/precision.py [--seconds 1] [--threads 1] [--checkpoint RUN]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from export.backends.onnxruntime import OrtRunner  # noqa: E402
from export.manifest import load_manifest  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.parity import collect  # noqa: E402
from export.parity_images import stored_parity_images  # noqa: E402
from export.preprocess import preprocess_images  # noqa: E402
from export.quantize import (  # noqa: E402
    activation_scales,
    convert_fp16,
    quantize_int8,
    with_activation_scales,
)
from export.slicing import slice_subnet  # noqa: E402
from mutualnet.calibrate import calibrate_bn  # noqa: E402
from mutualnet.data import DataSpec, load_data, resize_to  # noqa: E402
from mutualnet.models import create_model  # noqa: E402

POINTS = ((0.25, 128), (0.5, 160), (0.75, 192), (1.0, 224))
BATCHES = (1, 32)
PRECISIONS = ("fp32", "fp16", "int8")


def latency(path: Path, batch: int, resolution: int, seconds: float,
            threads: int) -> tuple[float, float, int]:
    """p50, p90 ms and runs of one ONNX file at one batch size (200 ms warm-up)."""
    runner = OrtRunner(path, threads=threads)
    x = np.random.default_rng(0).normal(size=(batch, 3, resolution, resolution)).astype(
        np.float32)
    warm = time.perf_counter() + 0.2
    while time.perf_counter() < warm:
        runner.run(x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        runner.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    runner.close()
    return float(np.percentile(times, 50)), float(np.percentile(times, 90)), len(times)


def mobilenet_latency(seconds: float, threads: int) -> str:
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", num_classes=1000)
    train = load_data(DataSpec(max_images=64), "train")
    x64, _ = next(train.batches(64, augment=False, shuffle=False))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, res in POINTS:
            calibrate_bn(model, width, res, train, num_images=64, batch_size=32)
            sliced = slice_subnet(model, width, res)
            root = Path(tmp) / f"w{width}"
            fp32 = export_onnx(sliced.module, res, root / "model.onnx").path
            files = {"fp32": fp32, "fp16": convert_fp16(fp32, root / "model.fp16.onnx"),
                     "int8": quantize_int8(fp32, root / "model.int8.onnx",
                                           resize_to(x64, res).numpy())}
            for batch in BATCHES:
                got = {p: latency(files[p], batch, res, seconds, threads) for p in PRECISIONS}
                base = got["fp32"][0]
                rows.append([f"w{width:.2f}-r{res}", batch,
                             *(f"{got[p][0]:.2f} / {got[p][1]:.2f}" for p in PRECISIONS),
                             f"{got['fp16'][0] / base:.2f}x", f"{got['int8'][0] / base:.2f}x",
                             "/".join(str(got[p][2]) for p in PRECISIONS)])
                print(rows[-1], flush=True)
    return markdown_table(["subnet", "batch", "fp32 p50 / p90 ms", "fp16 p50 / p90 ms",
                           "int8 p50 / p90 ms", "fp16 / fp32 (p50)", "int8 / fp32 (p50)",
                           "runs"], rows)


def tiny_checkpoint(out: Path) -> Path:
    from mutualnet.config import TrainConfig
    from mutualnet.train import train

    cfg = TrainConfig(num_epochs=2, batch_size=64, lr=0.2, max_train_images=2048,
                      eval_each_epoch=False, device="cpu")
    return Path(train(cfg, out, progress=False).checkpoint)


def tiny_grid(checkpoint: Path, out: Path) -> tuple[str, Path]:
    from export.pipeline import ExportOptions, export_checkpoint

    report = export_checkpoint(checkpoint, out, ExportOptions(
        precisions="fp32,fp16,int8", progress=False))
    rows = []
    for s in report.subnets:
        fp16, int8 = s.precisions["fp16"].parity, s.precisions["int8"].parity
        rows.append([s.id, f"{s.accuracy['onnxruntime']:.2f}",
                     f"{fp16.top1:.2f}", f"{fp16.accuracy_drop_pt:+.2f}",
                     f"{fp16.top1_agreement:.3f}", f"{int8.top1:.2f}",
                     f"{int8.accuracy_drop_pt:+.2f}", f"{int8.top1_agreement:.3f}",
                     f"{int8.max_abs_diff:.3f}",
                     "pass" if fp16.passed and int8.passed else "FAIL"])
    images = report.subnets[0].precisions["int8"].parity.images
    table = markdown_table(["subnet", "fp32 top-1", "fp16 top-1", "fp16 drop pt",
                            "fp16 agreement", "int8 top-1", "int8 drop pt", "int8 agreement",
                            "int8 max logit diff", "gates"], rows)
    return f"{images} held-out images of the bundled test split.\n\n{table}", out


def shared_calibration(export_dir: Path) -> str:
    m = load_manifest(export_dir)
    data = stored_parity_images(m, 500)
    assert data is not None
    pre = {**m.preprocessing.as_dict(), "resize": None}
    donor = m.subnets[-1]
    scales = activation_scales(m.file(donor.files["onnx_int8"]))
    rows, own_all, sh_all = [], [], []
    for sn in m.subnets:
        x = [preprocess_images(data.images, pre, sn.resolution)]
        own_path = m.file(sn.files["onnx_int8"])
        shared = with_activation_scales(own_path, export_dir.parent / "shared.onnx", scales)
        ref, own, sh = (collect(OrtRunner(p, threads=1), x) for p in
                        (m.file(sn.onnx), own_path, shared))
        top1 = [float(np.mean(v.argmax(1) == data.labels) * 100) for v in (ref, own, sh)]
        agree = [float(np.mean(v.argmax(1) == ref.argmax(1))) for v in (own, sh)]
        own_all.append((agree[0], top1[0] - top1[1], float(np.abs(own - ref).mean())))
        sh_all.append((agree[1], top1[0] - top1[2], float(np.abs(sh - ref).mean())))
        rows.append([sn.id, f"{agree[0]:.3f}", f"{agree[1]:.3f}", f"{top1[0] - top1[1]:+.2f}",
                     f"{top1[0] - top1[2]:+.2f}", f"{own_all[-1][2]:.4f}",
                     f"{sh_all[-1][2]:.4f}"])
    o, s = np.asarray(own_all), np.asarray(sh_all)
    rows.append(["mean", f"{o[:, 0].mean():.4f}", f"{s[:, 0].mean():.4f}",
                 f"|{np.abs(o[:, 1]).mean():.2f}|", f"|{np.abs(s[:, 1]).mean():.2f}|",
                 f"{o[:, 2].mean():.4f}", f"{s[:, 2].mean():.4f}"])
    return (f"Shared: the activation scales of {donor.id} in every subnet's int8 graph.\n\n"
            + markdown_table(["subnet", "agreement own", "agreement shared", "drop own pt",
                              "drop shared pt", "mean logit diff own",
                              "mean logit diff shared"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per config")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="tiny-model checkpoint [default: train one here, ~1 min]")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = Path("/proc/loadavg").read_text().split()[:3]
    lat = mobilenet_latency(args.seconds, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or tiny_checkpoint(Path(tmp) / "run")
        grid, export_dir = tiny_grid(ckpt, Path(tmp) / "export")
        shared = shared_calibration(export_dir)
    body = (f"Load average at the start: {' '.join(load)} (2 cores shared with other jobs).\n\n"
            f"### ONNX Runtime CPU latency, MobileNet v1 ({args.threads} thread, "
            f"{args.seconds:g} s per config)\n\n{lat}\n\n"
            "CUDA provider: not measured (no GPU here).\n\n"
            f"### Accuracy on the tiny grid (default export grid)\n\n{grid}\n\n"
            f"### Per-subnet vs shared int8 calibration (tiny grid)\n\n{shared}\n")
    cmd = "python benchmarks/precision.py " + " ".join(sys.argv[1:])
    write_section("precision", "Precision: fp32 / fp16 / int8 artifacts", body, cmd.strip())


if __name__ == "__main__":
    main()
