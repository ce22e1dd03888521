"""INT8 quantizers side by side: ONNX Runtime ``quantize_static`` (QDQ, what ``mutualnet
export --precision int8`` uses) against NVIDIA ModelOpt's ONNX PTQ
(``modelopt.onnx.quantization.quantize``), on the same fp32 ONNX and the same calibration
images per subnet.

1. The tiny model's default export grid (``--checkpoint``, default: trained here like the
   tests' fixture): fp32 export, then every subnet quantized by each variant, calibrated on
   the same 256 training images at the subnet's resolution (after its BN calibration, as
   the export does); top-1 on the bundled test split (the export's 500 stored held-out
   images), drop vs fp32 and top-1 agreement with the fp32 ONNX.
2. The TFLite MobileNet v1 models of ../shared/data (0.25_128, 0.5_160, 0.75_192), imported
   and exported fp32 with no labels; each variant calibrated on the 8 photos; top-1
   agreement with the fp32 ONNX on those photos.

For each int8 graph: Q/DQ placement (Conv / Gemm nodes whose data and weight inputs both
come from a DequantizeLinear; other ops fed by one) and ONNX Runtime CPU p50 latency of
int8 over fp32 at batch 1 and 32, measured side by side in this process. ModelOpt is
imported lazily: without it (``pip install "nvidia-modelopt[onnx]"``, best in its own
venv: it pins onnxruntime-gpu 1.24 and onnx 1.21) its rows say "not installed".
Writes BENCHMARKS.md section "quantizers".

    python benchmarks/quantizer_compare.py [--seconds 0.5] [--checkpoint RUN] [--no-write]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from benchmarks.precision import latency, tiny_checkpoint  # noqa: E402
from export.backends.onnxruntime import OrtRunner  # noqa: E402
from export.manifest import Manifest, load_manifest  # noqa: E402
from export.parity import collect  # noqa: E402
from export.parity_images import model_inputs, stored_parity_images  # noqa: E402
from export.quantize import QUANTIZED_OPS, qdq_report, quantize_int8  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mobilenet_v1_tflite"
PHOTOS = ("cat.bmp", "bird.bmp", "grace_hopper.bmp", "dragonfly.bmp", "parrot.jpg", "owl.jpg",
          "hot_dog.jpg", "pets.jpg")
MOBILENETS = (("mobilenet_v1_0.25_128_quant.tflite", 0.25, 128),
              ("mobilenet_v1_0.5_160_quant.tflite", 0.5, 160),
              ("mobilenet_v1_0.75_192_quant.tflite", 0.75, 192))
BATCHES = (1, 32)
CALIB_IMAGES = 256

Quantizer = Callable[[Path, Path, np.ndarray], None]


# ----------------------------------------------------------------------------- quantizers

def _ort(method: str) -> Quantizer:
    def run(src: Path, dst: Path, calib: np.ndarray) -> None:
        quantize_int8(src, dst, calib, method=method)
    return run


def _modelopt(method: str, high_precision: str) -> Quantizer:
    """ModelOpt's ONNX PTQ on the CPU, in a worker process: importing it patches ONNX
    Runtime's quantization classes (``modelopt.onnx.quantization.ort_patching``), after
    which ``quantize_static`` in the same process fails."""
    def run(src: Path, dst: Path, calib: np.ndarray) -> None:
        _worker().submit(modelopt_quantize, src, dst, calib, method, high_precision).result()
    return run


_POOL: list[Any] = []


def _worker() -> Any:
    if not _POOL:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _POOL.append(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
    return _POOL[0]


def modelopt_quantize(src: Path, dst: Path, calib: np.ndarray, method: str,
                      high_precision: str) -> None:
    """``modelopt.onnx.quantization.quantize`` on the CPU (``calibration_eps=["cpu"]``):
    int8, its own Q/DQ placement rules (TensorRT's), ``high_precision`` (fp32, or its default
    fp16) for what it leaves unquantized."""
    from modelopt.onnx.quantization import quantize

    r, batch = calib.shape[-1], _divisor(len(calib), 32)
    quantize(str(src), quantize_mode="int8", calibration_data=calib,
             calibration_method=method, calibration_eps=["cpu"],
             calibration_shapes=f"{_input_name(src)}:{batch}x3x{r}x{r}",
             high_precision_dtype=high_precision, output_path=str(dst), log_level="ERROR")


def _divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _input_name(path: Path) -> str:
    import onnx

    return str(onnx.load(str(path)).graph.input[0].name)


def quantizers() -> tuple[dict[str, Quantizer], str]:
    """The variants measured, and a line naming the tool versions (ModelOpt if installed)."""
    found: dict[str, Quantizer] = {"ort minmax": _ort("minmax"),
                                   "ort percentile": _ort("percentile")}
    import onnx
    import onnxruntime

    versions = f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}"
    if importlib.util.find_spec("modelopt") is None:
        return found, f"{versions}; ModelOpt not installed (pip install nvidia-modelopt[onnx])"
    found.update({"modelopt max": _modelopt("max", "fp32"),
                  "modelopt entropy": _modelopt("entropy", "fp32"),
                  "modelopt entropy, fp16 rest": _modelopt("entropy", "fp16")})
    return found, f"{versions}, nvidia-modelopt {importlib.metadata.version('nvidia-modelopt')}"


# ----------------------------------------------------------------------------- measuring

@dataclass
class Row:
    """One int8 graph of one subnet against its fp32 ONNX."""

    subnet: str
    quantizer: str
    seconds: float = 0.0
    top1: float | None = None
    drop: float | None = None
    agreement: float = 0.0
    agree_n: int = 0
    images: int = 0
    max_diff: float = 0.0
    placement: str = ""
    others: str = ""
    ratios: tuple[float, ...] = ()
    error: str = ""


def placement(path: Path) -> tuple[str, str]:
    """("k/n Conv/Gemm quantized, Q x / DQ y", other op types fed by a DequantizeLinear)."""
    import onnx

    rep = qdq_report(path)
    partial = {m.rsplit(":", 1)[0] for m in rep.missing}
    text = f"{rep.linear_nodes - len(partial)}/{rep.linear_nodes} (Q {rep.quantize_nodes}, " \
           f"DQ {rep.dequantize_nodes})"
    graph = onnx.load(str(path)).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    others = sorted({n.op_type for n in graph.node if n.op_type not in QUANTIZED_OPS
                     and n.op_type != "QuantizeLinear" and set(n.input) & dq_out})
    if partial:
        text += "; not: " + ", ".join(sorted(partial))
    return text, ", ".join(others) or "-"


def measure(subnet: str, name: str, quantize: Quantizer, fp32: Path, calib: np.ndarray,
            x: np.ndarray, labels: np.ndarray | None, seconds: float,
            base: dict[int, float]) -> Row:
    """Quantize ``fp32`` with ``quantize``, compare it with fp32 on ``x``, time it."""
    row, dst = Row(subnet, name, images=len(x)), fp32.with_name(f"{name.replace(' ', '_')}.onnx")
    t0 = time.perf_counter()
    try:
        quantize(fp32, dst, calib)
    except Exception as e:  # noqa: BLE001 - report any quantizer failure as a row
        row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return row
    row.seconds = time.perf_counter() - t0
    ref, out = logits(fp32, x), logits(dst, x)
    agree = ref.argmax(1) == out.argmax(1)
    row.agreement, row.agree_n = float(agree.mean()), int(agree.sum())
    row.max_diff = float(np.abs(ref - out).max())
    if labels is not None:
        top1 = [float(np.mean(v.argmax(1) == labels) * 100) for v in (ref, out)]
        row.top1, row.drop = top1[1], top1[0] - top1[1]
    row.placement, row.others = placement(dst)
    res = x.shape[-1]
    row.ratios = tuple(latency(dst, b, res, seconds, 1)[0] / base[b] for b in BATCHES)
    return row


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    runner = OrtRunner(path, threads=1)
    try:
        return collect(runner, [x])
    finally:
        runner.close()


def fp32_latency(path: Path, resolution: int, seconds: float) -> dict[int, float]:
    return {b: latency(path, b, resolution, seconds, 1)[0] for b in BATCHES}


def grid(manifest: Manifest, inputs: Callable[[Any], tuple[np.ndarray, np.ndarray]],
         labels: np.ndarray | None, seconds: float) -> list[Row]:
    """Every subnet of ``manifest`` through every quantizer; ``inputs(subnet)`` gives its
    (calibration, evaluation) inputs."""
    variants, _ = quantizers()
    rows = []
    for sn in manifest.subnets:
        fp32 = manifest.file(sn.onnx)
        calib, x = inputs(sn)
        base = fp32_latency(fp32, sn.resolution, seconds)
        for name, q in variants.items():
            rows.append(measure(sn.id, name, q, fp32, calib, x, labels, seconds, base))
            print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- the two studies

def tiny_rows(checkpoint: Path, tmp: Path, seconds: float) -> tuple[list[Row], int]:
    from export.pipeline import ExportOptions, export_checkpoint
    from mutualnet.data import DataSpec, load_data, resize_to

    export_checkpoint(checkpoint, tmp / "tiny", ExportOptions(precisions="fp32",
                                                              progress=False))
    m = load_manifest(tmp / "tiny")
    data = stored_parity_images(m, 500)
    assert data is not None and data.labels is not None
    train = load_data(DataSpec(max_images=2048), "train")
    x_cal, _ = next(train.batches(CALIB_IMAGES, augment=False, shuffle=True, seed=0))

    def inputs(sn: Any) -> tuple[np.ndarray, np.ndarray]:
        calib = resize_to(x_cal.float(), sn.resolution).contiguous().numpy()
        return calib, model_inputs(m, data.images, sn.resolution, cropped=data.cropped)

    return grid(m, inputs, np.asarray(data.labels), seconds), len(data.labels)


def mobilenet_rows(tmp: Path, seconds: float) -> list[Row]:
    from export.pipeline import ExportOptions, export_checkpoint
    from export.preprocess import preprocess_images, read_image
    from mutualnet.weights.save import import_to_checkpoint

    photos = tmp / "photos"
    photos.mkdir()
    for name in PHOTOS:
        (photos / name).write_bytes((DATA / name).read_bytes())
    images = [read_image(photos / name) for name in PHOTOS]
    rows = []
    for tflite, width, res in MOBILENETS:
        run = tmp / tflite.removesuffix(".tflite")
        import_to_checkpoint(DATA / tflite, "mobilenet_v1", run, num_classes=1000,
                             labels=DATA / "imagenet_labels.txt")
        export_checkpoint(run, run / "export", ExportOptions(
            pairs=((width, res),), data=str(photos), calib_images=0, eval_images=8,
            precisions="fp32", progress=False))
        m = load_manifest(run / "export")
        x = preprocess_images(images, m.preprocessing.as_dict(), res)
        rows += grid(m, _same(x), None, seconds)
    return rows


def _same(x: np.ndarray) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
    """Calibrate and compare on the same inputs (the 8 photos)."""
    return lambda sn: (x, x)


# ----------------------------------------------------------------------------- tables

def _cells(r: Row, labelled: bool) -> list[object]:
    if r.error:
        return [r.subnet, r.quantizer, f"failed: {r.error}", *[""] * (8 if labelled else 6)]
    acc = [f"{r.top1:.2f}", f"{r.drop:+.2f}"] if labelled and r.top1 is not None \
        and r.drop is not None else []
    agree = f"{r.agreement:.3f}" if labelled else f"{r.agree_n}/{r.images}"
    return [r.subnet, r.quantizer, *acc, agree, f"{r.max_diff:.3f}", r.placement, r.others,
            *(f"{v:.2f}x" for v in r.ratios), f"{r.seconds:.1f}"]


def table(rows: Sequence[Row], labelled: bool) -> str:
    head = ["subnet", "quantizer", *(["int8 top-1", "drop pt"] if labelled else []),
            "agreement with fp32", "max logit diff", "Conv/Gemm with Q/DQ inputs",
            "other ops fed by DQ", *(f"int8/fp32 b{b}" for b in BATCHES), "quantize s"]
    return markdown_table(head, [_cells(r, labelled) for r in rows])


def summary(rows: Sequence[Row], labelled: bool) -> str:
    """Per quantizer: mean |drop| and worst drop (labelled), mean and min agreement, the
    geometric mean of the latency ratios."""
    out = []
    for name in dict.fromkeys(r.quantizer for r in rows):
        ok = [r for r in rows if r.quantizer == name and not r.error]
        if not ok:
            out.append([name, "failed", "", "", "", ""])
            continue
        drops = [r.drop for r in ok if r.drop is not None]
        acc = f"{np.mean(np.abs(drops)):.2f} / {max(drops):+.2f}" if drops else "no labels"
        agree = f"{np.mean([r.agreement for r in ok]):.4f} / {min(r.agreement for r in ok):.3f}"
        ratios = np.exp(np.log(np.asarray([r.ratios for r in ok])).mean(0))
        out.append([name, acc, agree, *(f"{v:.2f}x" for v in ratios),
                    f"{np.mean([r.seconds for r in ok]):.1f}"])
    return markdown_table(["quantizer", "mean abs drop / worst drop pt" if labelled else
                           "accuracy", "agreement mean / min",
                           *(f"int8/fp32 b{b} (geo. mean)" for b in BATCHES),
                           "quantize s (mean)"], out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="timed seconds per config")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="tiny-model checkpoint [default: train one here, ~1-3 min]")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    _, versions = quantizers()
    with tempfile.TemporaryDirectory(prefix="mutualnet-quantizers-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt = args.checkpoint or tiny_checkpoint(tmp / "run")
        tiny, n = tiny_rows(ckpt, tmp, args.seconds)
        mobile = mobilenet_rows(tmp, args.seconds) if DATA.is_dir() else []
    end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    body = (f"Tools: {versions}. Load average {load} at the start, {end} at the end (2 cores "
            f"shared with other jobs); latency ratios are int8 over fp32 p50 in ONNX "
            f"Runtime's CPU provider, 1 thread, {args.seconds:g} s per config, side by "
            "side in this process (fp32 first, then each int8 graph: not interleaved, so "
            "on a loaded machine the batch-32 ratios swing with the load).\n\n"
            f"### Tiny grid ({n} held-out images, calibration: the same {CALIB_IMAGES} "
            f"training images per subnet)\n\n{summary(tiny, True)}\n\n{table(tiny, True)}\n\n"
            "### TFLite MobileNet v1 (the 8 photos, no labels; calibrated on them)\n\n"
            + (f"{summary(mobile, False)}\n\n{table(mobile, False)}\n" if mobile else
               f"not measured: {DATA} not found\n"))
    cmd = "python benchmarks/quantizer_compare.py " + " ".join(sys.argv[1:])
    if args.no_write:
        print(body)
    else:
        write_section("quantizers", "INT8 quantizers: ONNX Runtime quantize_static vs "
                      "ModelOpt ONNX PTQ", body, cmd.strip())


if __name__ == "__main__":
    main()
