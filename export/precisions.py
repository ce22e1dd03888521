"""Per-subnet fp16 / int8 artifacts: build, gate, record (torch-free).

The export pipeline calls :func:`build_precisions` once per subnet, after that subnet's fp32
``model.onnx`` exists and has passed its logit gate. For each precision asked for:

- ``fp16``: ``model.fp16.onnx`` (:func:`export.quantize.convert_fp16`);
- ``int8``: ``model.int8.onnx``, Q/DQ, calibrated on *this* subnet's images at *its*
  resolution, after its BN calibration (:func:`export.quantize.quantize_int8`).

Each artifact runs in ONNX Runtime (CPU) on the held-out images and is compared with the
fp32 ONNX through the one comparator (:func:`export.parity.compare`) under the profile's
gate for that precision (top-1 agreement and accuracy drop, :class:`ParityGate`). An
artifact that fails is deleted and left out of the manifest; its numbers stay in the report.

Manifest contract (``subnets[*]``): ``files["onnx_fp16"]`` / ``files["onnx_int8"]`` and
``precisions[p] = {"file": key, "parity": {...}, "accuracy": {"top1", "images"},
"tool": ..., "calibration": {...}}`` (int8 only). ``precisions["fp32"]`` names ``onnx``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import make_runner
from .errors import ExportUsageError
from .parity import ParityGate, ParityResult, collect, compare
from .profiles import PRECISIONS, DeployProfile

#: manifest ``files`` key and file name of each precision's ONNX
FILE_KEYS = {"fp32": "onnx", "fp16": "onnx_fp16", "int8": "onnx_int8"}
FILE_NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
#: default calibration images per subnet for int8 (MinMax ranges settle well before this)
DEFAULT_CALIB_IMAGES = 256

__all__ = ["DEFAULT_CALIB_IMAGES", "FILE_KEYS", "FILE_NAMES", "PrecisionResult",
           "build_precisions", "engine_precision", "parse_precisions", "precision_records"]


@dataclass(frozen=True)
class PrecisionResult:
    """One subnet's artifact at one precision and how it fared against the fp32 ONNX."""

    precision: str
    path: Path | None          # None when it failed its gate (the file was removed)
    parity: ParityResult
    seconds: float
    tool: str
    calibration: Mapping[str, Any] = field(default_factory=dict)
    gate: ParityGate = ParityGate()

    @property
    def passed(self) -> bool:
        return self.parity.passed

    @property
    def file_key(self) -> str:
        return FILE_KEYS[self.precision]

    def failure(self) -> str:
        """What failed, with the number: "int8 agreement 0.912 < 0.97"."""
        p, gate = self.parity, self.gate
        if not p.finite:
            return f"{self.precision} non-finite logits"
        if p.top1_agreement < gate.min_top1_agreement:
            return (f"{self.precision} agreement {p.top1_agreement:.3f} < "
                    f"{gate.min_top1_agreement:g}")
        return f"{self.precision} accuracy drop {p.accuracy_drop_pt:.2f} pt > " \
            f"{gate.max_accuracy_drop_pt:g}"

    def to_dict(self) -> dict[str, Any]:
        d = {"precision": self.precision, "passed": self.passed, "tool": self.tool,
             "seconds": round(self.seconds, 4), "parity": self.parity.to_dict()}
        if self.calibration:
            d["calibration"] = dict(self.calibration)
        if not self.passed:
            d["failed"] = self.failure()
        return d


def parse_precisions(text: str | Sequence[str] | None,
                     profile: DeployProfile) -> tuple[tuple[str, ...], bool]:
    """(precisions, explicit): ``"fp32,int8"`` or the profile's default; usage error for an
    unknown precision or one the profile's device cannot run. fp32 is always exported too
    (the reference every other precision is gated against) and listed first."""
    explicit = text is not None
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text or ())]
    wanted = [t for t in items if t] if explicit else list(profile.precisions)
    if explicit and not wanted:
        raise ExportUsageError("--precision needs at least one of fp32, fp16, int8")
    for p in wanted:
        if p not in PRECISIONS:
            raise ExportUsageError(f"unknown precision {p!r}; use a comma list of "
                                   f"{', '.join(PRECISIONS)}, e.g. --precision fp32,int8")
        if p not in profile.device_precisions:
            raise ExportUsageError(
                f"deploy profile {profile.name} cannot run {p}: its device runs "
                f"{', '.join(profile.device_precisions)}; pick one of those or another "
                "--profile")
    return tuple(dict.fromkeys(["fp32", *wanted])), explicit


def engine_precision(profile: DeployProfile, precisions: Sequence[str],
                     explicit: bool) -> str | None:
    """The precision a TensorRT profile's engines are built in when it is not the profile's
    own ``precision`` (None: the profile's): ``--precision`` given without the profile's
    precision picks the lowest one given but fp32, so the DLA profile's int8 engines become
    fp16 for ``--precision fp16``. Only fp32 given keeps the profile's (fp16 engines then
    come from the fp32 ONNX); ONNX Runtime profiles build no engines."""
    asked = [p for p in PRECISIONS[::-1] if p in precisions and p != "fp32"]
    if profile.runtime != "tensorrt" or not explicit or profile.precision in precisions \
            or not asked:
        return None
    return asked[0]


def read_calibration_images(folder: str | os.PathLike[str] | None,
                            limit: int = DEFAULT_CALIB_IMAGES) -> list[np.ndarray] | None:
    """At most ``limit`` images (uint8 RGB, any size, no labels needed) from ``folder`` for
    int8 calibration; None without a folder; usage error for a folder with no images."""
    from .preprocess import IMAGE_SUFFIXES, image_files, read_image

    if folder is None:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise ExportUsageError(f"--calib-data {folder}: not a folder; give a folder of images")
    files = image_files(path)
    if not files:
        raise ExportUsageError(f"--calib-data {folder} holds no images "
                               f"({', '.join(IMAGE_SUFFIXES)}); give a folder of images")
    return [read_image(p) for p in files[:limit]]


def _calibration_batches(calib: Sequence[np.ndarray], limit: int) -> list[np.ndarray]:
    out, left = [], limit
    for x in calib:
        if left <= 0:
            break
        out.append(np.asarray(x[:left], dtype=np.float32))
        left -= len(out[-1])
    return out


def build_precisions(onnx_path: Path, precisions: Sequence[str], batches: Sequence[np.ndarray],
                     labels: np.ndarray | None, profile: DeployProfile, *,
                     calibration: Sequence[np.ndarray] = (), calib_source: str = "train",
                     calib_images: int = DEFAULT_CALIB_IMAGES,
                     int8_method: str = "minmax") -> dict[str, PrecisionResult]:
    """Build, run and gate every precision but fp32 of one subnet (``onnx_path`` is its fp32
    ONNX; ``batches`` its held-out inputs, ``calibration`` its calibration inputs, both
    float32 NCHW at its resolution; ``int8_method`` the activation range method)."""
    from .quantize import FP16_CONVERTER, INT8_QUANTIZER, convert_fp16, quantize_int8

    fp32 = make_runner("onnxruntime", onnx_path)
    try:
        reference = collect(fp32, batches)
    finally:
        fp32.close()
    results: dict[str, PrecisionResult] = {}
    for precision in (p for p in precisions if p != "fp32"):
        t0 = time.perf_counter()
        dst = onnx_path.with_name(FILE_NAMES[precision])
        cal: dict[str, Any] = {}
        if precision == "fp16":
            convert_fp16(onnx_path, dst)
            tool = FP16_CONVERTER
        else:
            used = _calibration_batches(calibration, calib_images)
            quantize_int8(onnx_path, dst, used, method=int8_method)
            tool = INT8_QUANTIZER
            cal = {"images": int(sum(len(b) for b in used)), "per_subnet": True,
                   "resolution": int(batches[0].shape[-1]), "source": calib_source,
                   "method": int8_method, "scheme": "symmetric; weights per channel"}
        results[precision] = _gate(precision, dst, reference, batches, labels, profile,
                                   time.perf_counter() - t0, tool, cal)
    return results


def _gate(precision: str, path: Path, reference: np.ndarray, batches: Sequence[np.ndarray],
          labels: np.ndarray | None, profile: DeployProfile, seconds: float, tool: str,
          calibration: Mapping[str, Any]) -> PrecisionResult:
    runner = make_runner("onnxruntime", path)
    try:
        logits = collect(runner, batches)
    finally:
        runner.close()
    gate = ParityGate.from_profile(profile, precision=precision)
    parity = compare(reference, logits, labels, gate=gate, backend=f"onnxruntime {precision}",
                     reference_name="onnxruntime fp32")
    if not parity.passed:
        path.unlink(missing_ok=True)
    return PrecisionResult(precision, path if parity.passed else None, parity, seconds, tool,
                           calibration, gate)


def precision_records(results: Mapping[str, PrecisionResult], fp32_parity: ParityResult | None,
                      root: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(files to add, the subnet's ``precisions`` record) for the artifacts that passed."""
    from .manifest import file_entry

    files: dict[str, dict[str, Any]] = {}
    record: dict[str, Any] = {}
    if fp32_parity is not None:
        record["fp32"] = {"file": "onnx", "parity": fp32_parity.manifest_entry(),
                          "accuracy": _accuracy(fp32_parity)}
    for p, res in results.items():
        if not res.passed or res.path is None:
            continue
        files[res.file_key] = file_entry(root, res.path)
        entry: dict[str, Any] = {"file": res.file_key, "parity": res.parity.manifest_entry(),
                                 "accuracy": _accuracy(res.parity), "tool": res.tool}
        if res.calibration:
            entry["calibration"] = dict(res.calibration)
        record[p] = entry
    return files, record


def _accuracy(parity: ParityResult) -> dict[str, Any]:
    top1 = parity.top1
    return {"top1": None if top1 is None else round(top1, 4), "images": parity.images}
