"""TensorRT engines for every subnet of a manifest (TensorRT 10 and 11), plus a trtexec script.

- TensorRT 10 (JetPack 6 on Jetson): FP16 through ``BuilderFlag.FP16`` on an FP32 ONNX.
- TensorRT 11 (servers): networks are strongly typed and the precision builder flags are
  gone, so FP16 comes from converting the ONNX itself (ModelOpt AutoCast, else
  onnxconverter-common), keeping FP32 inputs/outputs.

Both: one optimization profile over the deploy profile's batch range, a timing cache shared
by all builds (read before, written after each build), the workspace pool limit, and a DLA
core with GPU fallback when the profile names one. ``build_engines.sh`` with the equivalent
``trtexec`` lines is always written first, so a device with only trtexec can build too.

Each engine is recorded in the manifest with its path, sha256, size, TensorRT version, GPU
name and compute capability, and the precision used; the engine file itself holds nothing
else (no prepended metadata). Engine parity on held-out images gates FP16 by top-1
agreement and accuracy drop against the FP32 ONNX (== PyTorch to ~1e-5, checked at export).
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, ExportError, ExportUsageError
from .manifest import Manifest, file_entry, load_manifest, update_manifest, utc_now
from .parity import register_runner
from .profiles import DeployProfile, load_profile, profile_from_dict
from .runtime import SubnetRuntime, _gpu_identity, _import_tensorrt, _TrtRunner, _TrtShared

SCRIPT_NAME = "build_engines.sh"
FP16_HINT = ("TensorRT 11 builds FP16 from an FP16 ONNX: install NVIDIA ModelOpt "
             "(`pip install nvidia-modelopt[onnx]`) or onnxconverter-common "
             "(`pip install onnxconverter-common`)")

__all__ = ["BuildReport", "EngineParity", "EngineRunner", "build_engines", "convert_onnx_fp16", "describe",
           "engine_dir", "engine_parity", "engine_relpath", "load_parity_images",
           "trtexec_script", "write_build_script"]


# ============================================================================ paths / script

def engine_dir(profile: DeployProfile) -> str:
    return f"engines/{profile.name}"


def engine_relpath(profile: DeployProfile, sid: str, precision: str | None = None) -> str:
    prec = precision or profile.precision
    dla = f".dla{profile.dla_core}" if profile.dla_core is not None else ""
    return f"{engine_dir(profile)}/{sid}.{prec}{dla}.plan"


def _fp16_onnx_relpath(profile: DeployProfile, sid: str) -> str:
    return f"{engine_dir(profile)}/{sid}.fp16.onnx"


def _timing_cache_rel(profile: DeployProfile) -> str:
    return f"{engine_dir(profile)}/timing.cache"


def _shape(name: str, batch: int, r: int) -> str:
    return f"{name}:{batch}x3x{r}x{r}"


def trtexec_script(manifest: Manifest, profile: DeployProfile,
                   timing_cache: str | None = None) -> str:
    """A bash script with one ``trtexec`` line per subnet, equivalent to the Python builder."""
    major = profile.tensorrt_major or 10
    cache = timing_cache or _timing_cache_rel(profile)
    lines = [
        "#!/usr/bin/env bash",
        f"# Build the TensorRT engines of this export for deploy profile '{profile.name}'",
        f"# (TensorRT {major}.x, {profile.precision}, batch {profile.min_batch}-"
        f"{profile.max_batch}). Written by mutualnet; run it from anywhere on the device.",
        "# Afterwards record the engines in manifest.json (sha256, TensorRT version, GPU):",
        f"#   mutualnet build-engines . --profile {profile.name} --record-only",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        f"mkdir -p {shlex.quote(engine_dir(profile))}",
        "",
    ]
    for sn in manifest.subnets:
        sid, r = sn["id"], int(sn["resolution"])
        name = sn["input"]["name"]
        onnx_rel = sn["files"]["onnx"]["path"]
        args = []
        if major >= 11 and profile.precision == "fp16":
            fp16 = _fp16_onnx_relpath(profile, sid)
            lines.append(f"# {sid}: TensorRT 11 is strongly typed: convert the ONNX to FP16 first")
            lines.append(f"python3 -m modelopt.onnx.autocast --onnx_path {shlex.quote(onnx_rel)} "
                         f"--output_path {shlex.quote(fp16)} --low_precision_type fp16 "
                         "--keep_io_types")
            onnx_rel = fp16
        args += [f"--onnx={onnx_rel}", f"--saveEngine={engine_relpath(profile, sid)}",
                 f"--minShapes={_shape(name, profile.min_batch, r)}",
                 f"--optShapes={_shape(name, profile.opt_batch, r)}",
                 f"--maxShapes={_shape(name, profile.max_batch, r)}"]
        if major >= 11:
            args.append("--stronglyTyped")
        elif profile.precision == "fp16":
            args.append("--fp16")
        elif profile.precision == "int8":
            args.append("--int8")
        args += [f"--timingCacheFile={cache}", f"--memPoolSize=workspace:{profile.workspace_mb}M"]
        if profile.dla_core is not None:
            args += [f"--useDLACore={profile.dla_core}", "--allowGPUFallback"]
        lines.append(f"echo 'building {sid}' >&2")
        lines.append('"$TRTEXEC" ' + " \\\n    ".join(shlex.quote(a) for a in args))
        lines.append("")
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_build_script(manifest: Manifest, profile: DeployProfile,
                       timing_cache: str | None = None) -> Path:
    """Write ``build_engines.sh`` (executable) next to the manifest; returns its path."""
    path = manifest.root / SCRIPT_NAME
    _atomic_write(path, trtexec_script(manifest, profile, timing_cache).encode(), 0o755)
    return path


# ============================================================================ building

def _tensorrt() -> tuple[Any, int]:
    trt = _import_tensorrt()
    return trt, int(str(trt.__version__).split(".")[0])


def convert_onnx_fp16(src: Path, dst: Path) -> Path:
    """FP16 copy of an FP32 ONNX with FP32 inputs/outputs (ModelOpt AutoCast, else
    onnxconverter-common); BackendUnavailableError with an install hint when neither exists."""
    import onnx

    model = None
    try:
        autocast = importlib.import_module("modelopt.onnx.autocast")
        model = autocast.convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16",
                                                    keep_io_types=True)
    except ImportError:
        try:
            float16 = importlib.import_module("onnxconverter_common.float16")
        except ImportError as e:
            raise BackendUnavailableError(FP16_HINT) from e
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _atomic_write(dst, model.SerializeToString())
    return dst


def _build_one(trt: Any, major: int, onnx_path: Path, engine_path: Path, cache_path: Path,
               profile: DeployProfile, input_name: str, resolution: int) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag_enum = trt.NetworkDefinitionCreationFlag
    flags = 0
    if major >= 11:
        if hasattr(flag_enum, "STRONGLY_TYPED"):
            flags |= 1 << int(flag_enum.STRONGLY_TYPED)
    elif hasattr(flag_enum, "EXPLICIT_BATCH"):   # deprecated no-op on 10, gone in 11
        flags |= 1 << int(flag_enum.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mb << 20)
    if profile.precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    elif profile.precision == "int8":
        raise ExportUsageError("int8 engines need an ONNX with Q/DQ nodes, which this export "
                               "does not produce; use precision fp16 or fp32")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    opt = builder.create_optimization_profile()
    opt.set_shape(input_name, (profile.min_batch, 3, resolution, resolution),
                  (profile.opt_batch, 3, resolution, resolution),
                  (profile.max_batch, 3, resolution, resolution))
    config.add_optimization_profile(opt)
    if profile.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(profile.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; rerun with "
                          "the trtexec line in build_engines.sh --verbose to see why")
    _atomic_write(engine_path, bytes(memoryview(serialized)))
    _atomic_write(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))


# ============================================================================ engine runner

def _engine_io(shared: _TrtShared, path: Path) -> tuple[int, int, int]:
    """(resolution, classes, max batch of optimization profile 0) of the engine at ``path``."""
    engine = shared.runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT could not deserialize {path}; rebuild it with "
                          "`mutualnet build-engines`")
    mode = shared.trt.TensorIOMode.INPUT
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == mode]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{path}: expected one input and one output tensor, found "
                          f"{inputs} / {outputs}")
    shape = tuple(engine.get_tensor_shape(inputs[0]))
    classes = tuple(engine.get_tensor_shape(outputs[0]))
    max_shape = tuple(engine.get_tensor_profile_shape(inputs[0], 0)[2])
    return int(shape[-1]), int(classes[-1]), int(max_shape[0])


class EngineRunner:
    """A TensorRT engine file as a parity runner (``make_runner("tensorrt", path)``).

    Runs on the runtime's own engine code (:mod:`export.runtime`, the same as
    ``SubnetRuntime`` and engine parity use) with its own stream and activation buffer;
    batches above the engine's maximum batch are split. ``close()`` frees the GPU memory.
    """

    def __init__(self, path: str | os.PathLike[str], *, device_index: int = 0,
                 max_batch: int | None = None, name: str = "tensorrt") -> None:
        engine = Path(path)
        self.name = name
        self._shared = _TrtShared(device_index)  # BackendUnavailableError without tensorrt
        try:
            if not engine.is_file():
                raise ExportUsageError(f"engine file {engine} does not exist; build it with "
                                       "`mutualnet build-engines`")
            resolution, classes, engine_max = _engine_io(self._shared, engine)
            self.max_batch = min(max_batch or engine_max, engine_max)
            self._runner = _TrtRunner(self._shared, engine, resolution, classes, self.max_batch)
            size = self._runner.device_memory
            self._shared.activation_ptr = self._shared.malloc(size)
            self._shared.activation_bytes = size
            self._runner.attach(self._shared.activation_ptr, size)
        except BaseException:
            self._shared.close()
            raise

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outs = [self._runner.run(x[i:i + self.max_batch])
                for i in range(0, len(x), self.max_batch)]
        return np.concatenate(outs, 0)

    def close(self) -> None:
        self._runner.close()
        self._shared.close()

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


register_runner("tensorrt", EngineRunner)


@dataclass(frozen=True)
class EngineParity:
    """FP16/INT8 gates: top-1 agreement with the FP32 reference and accuracy drop."""

    subnet_id: str
    images: int
    top1_agreement: float
    reference_top1: float | None
    engine_top1: float | None
    accuracy_drop_pt: float | None
    max_abs_diff: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"top1_agreement": round(self.top1_agreement, 6),
                "accuracy_drop_pt": None if self.accuracy_drop_pt is None
                else round(self.accuracy_drop_pt, 4),
                "max_abs_diff": float(self.max_abs_diff), "passed": self.passed,
                # the elementwise tolerance that would have passed, for comparison
                "tolerance_that_passes": float(self.max_abs_diff),
                "agreement_that_passes": round(self.top1_agreement, 6),
                "drop_that_passes_pt": None if self.accuracy_drop_pt is None
                else round(max(self.accuracy_drop_pt, 0.0), 4),
                "reference": "onnxruntime fp32", "images": self.images}


def engine_parity(reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None,
                  profile: DeployProfile, subnet_id: str) -> EngineParity:
    """Compare engine logits with the FP32 reference logits under the profile's gates."""
    ref_top, eng_top = reference.argmax(1), engine.argmax(1)
    agree = float((ref_top == eng_top).mean())
    ref_acc = eng_acc = drop = None
    if labels is not None:
        ref_acc = float((ref_top == labels).mean() * 100)
        eng_acc = float((eng_top == labels).mean() * 100)
        drop = ref_acc - eng_acc
    diff = float(np.abs(reference.astype(np.float64) - engine).max())
    if profile.precision == "fp32":
        passed = diff <= profile.fp32_max_abs_diff
    else:
        passed = agree >= profile.min_top1_agreement and (
            drop is None or drop <= profile.max_accuracy_drop_pt)
    return EngineParity(subnet_id, len(reference), agree, ref_acc, eng_acc, drop, diff, passed)


@dataclass
class BuildReport:
    """What build_engines did: script path, engine records, parity, seconds per build."""

    script: Path
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: dict[str, EngineParity] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity.values())


def _profile_for(manifest: Manifest, profile: str | DeployProfile | None) -> DeployProfile:
    if isinstance(profile, DeployProfile):
        return profile
    if profile is not None:
        return load_profile(profile)
    return profile_from_dict(manifest.profile, source=f"{manifest.path} (profile)")


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="engines", unit="subnet", file=sys.stderr,
                disable=not enabled)


def build_engines(manifest_dir: str | os.PathLike[str],
                  profile: str | DeployProfile | None = None, *,
                  timing_cache: str | os.PathLike[str] | None = None,
                  parity_data: tuple[np.ndarray | Sequence[np.ndarray],
                                     np.ndarray | None] | None = None,
                  record_only: bool = False, progress: bool = True) -> BuildReport:
    """Write build_engines.sh, build one engine per subnet, record them, run engine parity.

    profile: name/path/DeployProfile; default the profile recorded in the manifest.
    parity_data: (uint8 NHWC images, labels or None) held out from training; without it no
    engine parity is run (the report says so). record_only: do not build, record engines
    that build_engines.sh already produced. Without tensorrt: BackendUnavailableError, after
    the script is written.
    """
    manifest = load_manifest(manifest_dir)
    prof = _profile_for(manifest, profile)
    if prof.runtime != "tensorrt" or prof.tensorrt_major is None:
        raise ExportUsageError(f"deploy profile {prof.name} targets {prof.runtime}, not "
                               "TensorRT; pass --profile jetson-orin-nano, server-a100, ... ")
    cache_rel = str(timing_cache) if timing_cache else _timing_cache_rel(prof)
    report = BuildReport(script=write_build_script(manifest, prof, cache_rel))
    try:
        trt, major = _tensorrt()
    except BackendUnavailableError as e:
        raise BackendUnavailableError(f"{e}. The equivalent trtexec commands are in "
                                      f"{report.script}") from e
    if major != prof.tensorrt_major:
        warnings.warn(f"profile {prof.name} expects TensorRT {prof.tensorrt_major}, this is "
                      f"{trt.__version__}; building with {trt.__version__}", stacklevel=2)
    gpu_name, cc = _gpu_identity(0)
    cache_path = Path(cache_rel) if Path(cache_rel).is_absolute() else manifest.root / cache_rel
    bar = _progress(len(manifest.subnets), progress)
    for sn in manifest.subnets:
        sid = sn["id"]
        engine_path = manifest.root / engine_relpath(prof, sid)
        t0 = time.perf_counter()
        if not record_only:
            onnx_path = manifest.file(sn["files"]["onnx"]["path"])
            if major >= 11 and prof.precision == "fp16":
                onnx_path = convert_onnx_fp16(onnx_path,
                                              manifest.root / _fp16_onnx_relpath(prof, sid))
            _build_one(trt, major, onnx_path, engine_path, cache_path, prof,
                       sn["input"]["name"], int(sn["resolution"]))
        elif not engine_path.is_file():
            raise ExportError(f"{engine_path} does not exist; run {report.script} first")
        report.seconds[sid] = time.perf_counter() - t0
        report.engines[sid] = {
            **file_entry(manifest.root, engine_path), "tensorrt_version": str(trt.__version__),
            "gpu_name": gpu_name, "compute_capability": cc, "precision": prof.precision,
            "dla_core": prof.dla_core, "built": utc_now(), "min_batch": prof.min_batch,
            "opt_batch": prof.opt_batch, "max_batch": prof.max_batch, "profile": prof.name,
        }
        bar.update(1)
    bar.close()
    _record(manifest, report)
    if parity_data is not None:
        _run_parity(manifest, prof, report, parity_data)
    return report


def _record(manifest: Manifest, report: BuildReport) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        for sn in doc["subnets"]:
            rec = report.engines.get(sn["id"])
            if rec is None:
                continue
            par = report.parity.get(sn["id"])
            if par is not None:
                rec["parity"] = par.to_dict()
                sn["parity"]["tensorrt"] = par.to_dict()
                if par.engine_top1 is not None:
                    sn["accuracy"]["tensorrt"] = {"top1": round(par.engine_top1, 4),
                                                  "images": par.images}
            sn["engines"] = [e for e in sn["engines"] if e["path"] != rec["path"]] + [rec]

    update_manifest(manifest.path, mutate)


def _run_parity(manifest: Manifest, profile: DeployProfile, report: BuildReport,
                data: tuple[np.ndarray | Sequence[np.ndarray], np.ndarray | None]) -> None:
    images, labels = data
    trt_rt = SubnetRuntime.load(manifest.root, backend="tensorrt")
    ort_rt = SubnetRuntime.load(manifest.root, backend="onnxruntime", device="cpu")
    try:
        for info in trt_rt.subnets:
            x = trt_rt.preprocess(images, info.resolution)
            ref = ort_rt.infer_tensor(x, subnet=info.id).logits
            eng = trt_rt.infer_tensor(x, subnet=info.id).logits
            report.parity[info.id] = engine_parity(ref, eng, labels, profile, info.id)
    finally:
        trt_rt.close()
        ort_rt.close()
    _record(load_manifest(manifest.root, verify_files=False), report)


def load_parity_images(path: str | os.PathLike[str], limit: int = 500,
                       split: str = "test") -> tuple[list[np.ndarray], np.ndarray | None]:
    """Held-out images for engine parity from an .npz: ``images`` (uint8 NHWC) + ``labels``,
    or the shared JPEG format (``<split>_jpeg`` + ``<split>_offsets`` + ``<split>_labels``);
    ``limit`` images taken evenly over the split."""
    p = Path(path)
    if not p.is_file():
        raise ExportUsageError(f"parity image file {p} does not exist")
    with np.load(p) as z:
        if "images" in z.files:
            imgs = z["images"]
            labels = np.asarray(z["labels"]) if "labels" in z.files else None
            idx = np.linspace(0, len(imgs) - 1, min(limit, len(imgs))).astype(int)
            return [imgs[i] for i in idx], None if labels is None else labels[idx]
        key = f"{split}_jpeg"
        if key not in z.files:
            raise ExportUsageError(f"{p} holds neither 'images' nor '{key}'; pass an .npz with "
                                   "images (uint8 NHWC) + labels, or the shared JPEG format")
        jpeg, off, labels = z[key], z[f"{split}_offsets"], z[f"{split}_labels"]
    try:
        from PIL import Image
    except ImportError as e:
        raise BackendUnavailableError("decoding JPEG parity images needs Pillow: "
                                      "`pip install pillow`") from e
    import io

    idx = np.linspace(0, len(labels) - 1, min(limit, len(labels))).astype(int)
    out = [np.asarray(Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes())).convert("RGB"))
           for i in idx]
    return out, np.asarray(labels)[idx]


def describe(report: BuildReport) -> str:
    """A short table of the build: subnet, seconds, size, parity."""
    rows = [f"{'subnet':<14} {'build s':>8} {'MB':>7}  parity"]
    for sid, rec in report.engines.items():
        par = report.parity.get(sid)
        ptxt = "not run (pass --images)" if par is None else (
            f"{'PASS' if par.passed else 'FAIL'} agreement {par.top1_agreement:.4f}"
            + (f", drop {par.accuracy_drop_pt:+.2f} pt" if par.accuracy_drop_pt is not None
               else "") + f", max|diff| {par.max_abs_diff:.3g}")
        rows.append(f"{sid:<14} {report.seconds.get(sid, 0.0):>8.1f} "
                    f"{rec['size'] / 1e6:>7.2f}  {ptxt}")
    return "\n".join(rows)
