"""``build-engines``: one TensorRT engine per subnet of a manifest, recorded, parity-checked.

The engine code itself (builder, runner, trtexec script, TensorRT 10/11 differences) is
:mod:`export.backends.tensorrt`; this module runs it over a manifest:

1. ``build_engines.sh`` with the equivalent ``trtexec`` lines is always written first, so a
   device with only trtexec can build too;
2. one engine per subnet, sharing one timing cache (read before, written after each build);
3. each engine recorded in the manifest with its path, sha256, size, TensorRT version, GPU
   name and compute capability, the precision requested (``precision`` and
   ``precision_requested``), the layer datatypes TensorRT's engine inspector reports
   (``layer_precisions``) and the DLA core requested (with GPU fallback);
4. engine parity on held-out images (by default the ``parity_images.npz`` the export stored):
   the engine against the FP32 ONNX in ONNX Runtime on the CPU, through the one comparator
   and gate of :mod:`export.parity` (FP16 gated by top-1 agreement and accuracy drop).

Torch-free.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Runner, make_runner
from .backends.tensorrt import (
    build_one,
    check_buildable,
    convert_onnx_fp16,
    engine_layer_precisions,
    engine_relpath,
    fp16_onnx_relpath,
    gpu_identity,
    import_tensorrt,
    tensorrt_major,
    timing_cache_relpath,
    typed_onnx,
    write_build_script,
)
from .errors import BackendUnavailableError, ExportError, ExportUsageError
from .manifest import (
    EngineRecord,
    Manifest,
    SubnetEntry,
    file_entry,
    load_manifest,
    update_manifest,
    utc_now,
    verify_manifest,
)
from .parity import ParityGate, ParityResult, compare
from .parity_images import ParityImages, as_parity_images, model_inputs, stored_parity_images
from .profiles import DeployProfile, load_profile, profile_from_dict, with_engine_precision

__all__ = ["BuildReport", "build_engines", "describe", "engine_parity"]


@dataclass
class BuildReport:
    """What build_engines did: script path, engine records, parity, seconds per build."""

    script: Path
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: dict[str, ParityResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    parity_source: str | None = None    # where the parity images came from (None: no parity)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity.values())


def _profile_for(manifest: Manifest, profile: str | DeployProfile | None,
                 precision: str | None = None) -> DeployProfile:
    """The profile to build with (given, else the manifest's), in ``precision`` if given."""
    if isinstance(profile, DeployProfile):
        prof = profile
    elif profile is not None:
        prof = load_profile(profile)
    else:
        prof = profile_from_dict(dict(manifest.profile.data),
                                 source=f"{manifest.path} (profile)")
    return with_engine_precision(prof, precision)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="engines", unit="subnet", file=sys.stderr,
                disable=not enabled)


def _cache_path(manifest: Manifest, cache_rel: str) -> Path:
    path = Path(cache_rel) if Path(cache_rel).is_absolute() else manifest.root / cache_rel
    if path.exists() and not path.is_file():
        raise ExportUsageError(f"timing cache {path} is not a file; pass a file path to "
                               "--timing-cache (it is created when missing)")
    return path


def _tensorrt(script: Path) -> tuple[Any, int]:
    try:
        trt = import_tensorrt()
    except BackendUnavailableError as e:
        raise BackendUnavailableError(f"{e}. The equivalent trtexec commands are in "
                                      f"{script}") from e
    return trt, tensorrt_major(trt)


def _engine_record(trt: Any, manifest: Manifest, prof: DeployProfile, sn: SubnetEntry,
                   engine_path: Path, gpu: tuple[str, str]) -> dict[str, Any]:
    return {
        **file_entry(manifest.root, engine_path), "tensorrt_version": str(trt.__version__),
        "gpu_name": gpu[0], "compute_capability": gpu[1],
        # what was asked of the builder; layer_precisions is what the engine reports
        "precision": prof.precision, "precision_requested": prof.precision,
        "layer_precisions": engine_layer_precisions(trt, engine_path, sn.input.name,
                                                    prof.opt_batch, sn.resolution),
        # the core requested; layers the DLA cannot run fall back to the GPU
        "dla_core": prof.dla_core, "gpu_fallback": prof.dla_core is not None,
        "built": utc_now(), "min_batch": prof.min_batch,
        "opt_batch": prof.opt_batch, "max_batch": prof.max_batch, "profile": prof.name,
    }


def _build_subnet(trt: Any, major: int, manifest: Manifest, prof: DeployProfile,
                  sn: SubnetEntry, cache_path: Path, record_only: bool, script: Path) -> Path:
    engine_path = manifest.root / engine_relpath(prof, sn.id)
    if record_only:
        if not engine_path.is_file():
            raise ExportError(f"{engine_path} does not exist; run {script} first")
        return engine_path
    typed = typed_onnx(prof, sn)
    onnx_path = manifest.file(typed or sn.onnx)
    if major >= 11 and prof.precision == "fp16" and typed is None:
        onnx_path = convert_onnx_fp16(onnx_path, manifest.root / fp16_onnx_relpath(prof, sn.id))
    build_one(trt, major, onnx_path, engine_path, cache_path, prof, sn.input.name,
              sn.resolution, typed is not None)
    return engine_path


def build_engines(manifest_dir: str | os.PathLike[str],
                  profile: str | DeployProfile | None = None, *,
                  timing_cache: str | os.PathLike[str] | None = None,
                  parity_data: ParityImages | tuple[np.ndarray | Sequence[np.ndarray],
                                                    np.ndarray | None] | None = None,
                  parity_limit: int = 500, record_only: bool = False,
                  progress: bool = True, precision: str | None = None) -> BuildReport:
    """Write build_engines.sh, build one engine per subnet, record them, run engine parity.

    profile: name/path/DeployProfile; default the profile recorded in the manifest (which
    an export records with the engine precision its ``--precision`` implies).
    precision: build in this precision instead of the profile's (one its device runs: the
    AGX Orin DLA's int8 or fp16); int8 and fp16 build the exported ``model.int8.onnx`` /
    ``model.fp16.onnx`` strongly typed.
    parity_data: held-out images (:class:`ParityImages`, or a tuple of uint8 NHWC images and
    labels or None); default: the ``parity_images.npz`` the export stored (at most
    ``parity_limit`` of them); without either no engine parity is run (the report says so).
    record_only: do not build, record engines that build_engines.sh already produced.
    Without tensorrt: BackendUnavailableError, after the script is written.
    """
    manifest = load_manifest(manifest_dir, verify_files=False)  # cheap refusals first
    prof = _profile_for(manifest, profile, precision)
    if prof.runtime != "tensorrt" or prof.tensorrt_major is None:
        raise ExportUsageError(f"deploy profile {prof.name} targets {prof.runtime}, not "
                               "TensorRT; pass --profile jetson-orin-nano, server-a100, ... ")
    check_buildable(prof, len(manifest.subnets))
    verify_manifest(manifest)
    for sn in manifest.subnets:
        typed_onnx(prof, sn)     # int8 without the Q/DQ ONNX: refused before writing
    data = as_parity_images(parity_data) if parity_data is not None else \
        stored_parity_images(manifest, parity_limit)
    cache_rel = str(timing_cache) if timing_cache else timing_cache_relpath(prof)
    cache_path = _cache_path(manifest, cache_rel)
    report = BuildReport(script=write_build_script(manifest, prof, cache_rel))
    trt, major = _tensorrt(report.script)
    if major != prof.tensorrt_major:
        warnings.warn(f"profile {prof.name} expects TensorRT {prof.tensorrt_major}, this is "
                      f"{trt.__version__}; building with {trt.__version__}", stacklevel=2)
    gpu = gpu_identity(0)
    bar = _progress(len(manifest.subnets), progress)
    for sn in manifest.subnets:
        t0 = time.perf_counter()
        path = _build_subnet(trt, major, manifest, prof, sn, cache_path, record_only,
                             report.script)
        report.seconds[sn.id] = time.perf_counter() - t0
        report.engines[sn.id] = _engine_record(trt, manifest, prof, sn, path, gpu)
        bar.update(1)
    bar.close()
    _record(manifest, report)
    if data is not None:
        report.parity_source = data.source
        _run_parity(load_manifest(manifest.root, verify_files=False), prof, report, data)
        _record(manifest, report)
    return report


def _record(manifest: Manifest, report: BuildReport) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        for sn in doc["subnets"]:
            rec = report.engines.get(sn["id"])
            if rec is None:
                continue
            par = report.parity.get(sn["id"])
            if par is not None:
                rec["parity"] = par.manifest_entry()
                sn["parity"]["tensorrt"] = par.manifest_entry()
                if par.top1 is not None:
                    sn["accuracy"]["tensorrt"] = {"top1": round(par.top1, 4),
                                                  "images": par.images}
            sn["engines"] = [e for e in sn["engines"] if e["path"] != rec["path"]] + [rec]

    update_manifest(manifest.path, mutate)


def engine_parity(reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None,
                  profile: DeployProfile, subnet_id: str) -> ParityResult:
    """Engine logits vs the FP32 reference under the profile's gate (finiteness included)."""
    return compare(reference, engine, labels, gate=ParityGate.from_profile(profile),
                   backend=f"tensorrt {subnet_id}", reference_name="onnxruntime fp32")


def _parity_inputs(manifest: Manifest, data: ParityImages, resolution: int) -> np.ndarray:
    return model_inputs(manifest, data.images, resolution, cropped=data.cropped)


def engine_runner(manifest: Manifest, sn: SubnetEntry, record: EngineRecord) -> Runner:
    """The engine ``record`` of subnet ``sn`` as a runner (on its DLA core, if any)."""
    return make_runner("tensorrt", manifest.file(record.file), dla_core=record.dla_core)


def _run_parity(manifest: Manifest, profile: DeployProfile, report: BuildReport,
                data: ParityImages) -> None:
    for sn in manifest.subnets:
        record = report.engines.get(sn.id)
        if record is None:
            continue
        x = _parity_inputs(manifest, data, sn.resolution)
        reference = make_runner("onnxruntime", manifest.file(sn.onnx), threads=None)
        engine = engine_runner(manifest, sn, EngineRecord.parse(record))
        try:
            report.parity[sn.id] = engine_parity(reference.run(x), engine.run(x), data.labels,
                                                 profile, sn.id)
        finally:
            engine.close()
            reference.close()


def describe(report: BuildReport) -> str:
    """A short table of the build: subnet, seconds, size, parity."""
    rows = [f"{'subnet':<14} {'build s':>8} {'MB':>7}  parity"]
    for sid, rec in report.engines.items():
        par = report.parity.get(sid)
        drop = par.accuracy_drop_pt if par is not None else None
        ptxt = "not run (no stored parity images; pass --images)" if par is None else (
            f"{'PASS' if par.passed else 'FAIL'} agreement {par.top1_agreement:.4f}"
            + (f", drop {drop:+.2f} pt" if drop is not None else "")
            + f", max|diff| {par.max_abs_diff:.3g}")
        rows.append(f"{sid:<14} {report.seconds.get(sid, 0.0):>8.1f} "
                    f"{rec['size'] / 1e6:>7.2f}  {ptxt}")
    return "\n".join(rows)
