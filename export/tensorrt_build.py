"""TensorRT engines for every subnet of a manifest (TensorRT 10 and 11), plus a trtexec script.

- TensorRT 10 (JetPack 6 on Jetson): FP16 through ``BuilderFlag.FP16`` on an FP32 ONNX.
- TensorRT 11 (servers): networks are strongly typed and the precision builder flags are
  gone, so FP16 comes from converting the ONNX itself (ModelOpt AutoCast, else
  onnxconverter-common), keeping FP32 inputs/outputs.

Both: one optimization profile over the deploy profile's batch range, a timing cache shared
by all builds (read before, written after each build), the workspace pool limit, and a DLA
core with GPU fallback when the profile names one (the DLA needs a static shape: such
profiles have min = opt = max batch). INT8 is refused (no Q/DQ export exists yet).
``build_engines.sh`` with the equivalent ``trtexec`` lines is always written first, so a
device with only trtexec can build too.

Each engine is recorded in the manifest with its path, sha256, size, TensorRT version, GPU
name and compute capability, the precision *requested* (``precision`` and
``precision_requested``) and, where TensorRT's engine inspector reports them (engines are
built with detailed profiling verbosity), the datatypes its layers actually produce
(``layer_precisions``); ``dla_core`` is the core requested, with GPU fallback allowed. The
engine file itself holds nothing else (no prepended metadata). Engine parity on held-out
images gates FP16 by top-1 agreement and accuracy drop against the FP32 ONNX (== PyTorch to
~1e-5, checked at export); by default it uses the images the export stored in
``parity_images.npz``.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import shlex
import sys
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, ExportError, ExportUsageError, reason
from .manifest import (
    Manifest,
    atomic_write_bytes,
    file_entry,
    load_manifest,
    update_manifest,
    utc_now,
)
from .parity import register_runner
from .profiles import DeployProfile, load_profile, profile_from_dict
from .runtime import (
    SubnetRuntime,
    _gpu_identity,
    _import_tensorrt,
    _TrtRunner,
    _TrtShared,
    preprocess_images,
)

SCRIPT_NAME = "build_engines.sh"
PARITY_IMAGES_KEY = "parity_images"        # key in the manifest's top-level "files"
PARITY_IMAGES_FILE = "parity_images.npz"
CROPPED = "cropped"   # stage of stored images: already resized + center-cropped to "crop"
FP16_HINT = ("TensorRT 11 builds FP16 from an FP16 ONNX: install NVIDIA ModelOpt "
             "(`pip install nvidia-modelopt[onnx]`) or onnxconverter-common "
             "(`pip install onnxconverter-common`)")

__all__ = ["PARITY_IMAGES_FILE", "PARITY_IMAGES_KEY", "BuildReport", "EngineParity",
           "EngineRunner", "ParityImages", "build_engines", "check_buildable",
           "convert_onnx_fp16", "describe", "engine_dir", "engine_parity", "engine_relpath",
           "layer_precisions", "load_parity_images", "read_parity_images",
           "stored_parity_images", "trtexec_script", "write_build_script",
           "write_parity_images"]


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


def check_buildable(profile: DeployProfile) -> None:
    """ExportUsageError for what neither builder nor trtexec script may do: INT8 (no Q/DQ
    export exists), and a DLA core with a dynamic batch (the DLA runs static shapes only).
    Profiles loaded from YAML are already validated; this guards hand-made DeployProfiles."""
    if profile.precision == "int8":
        raise ExportUsageError("int8 engines need an ONNX with Q/DQ nodes, which this export "
                               "does not produce; use precision fp16 or fp32")
    if profile.dla_core is not None and \
            not profile.min_batch == profile.opt_batch == profile.max_batch:
        raise ExportUsageError(
            f"deploy profile {profile.name}: the DLA needs a static shape, but the batch range "
            f"is {profile.min_batch}/{profile.opt_batch}/{profile.max_batch}; set min_batch = "
            "opt_batch = max_batch (e.g. 1) or dla_core: null")


def trtexec_script(manifest: Manifest, profile: DeployProfile,
                   timing_cache: str | None = None) -> str:
    """A bash script with one ``trtexec`` line per subnet, equivalent to the Python builder."""
    check_buildable(profile)
    major = profile.tensorrt_major or 10
    cache = timing_cache or _timing_cache_rel(profile)
    lines = [
        "#!/usr/bin/env bash",
        f"# Build the TensorRT engines of this export for deploy profile '{profile.name}'",
        f"# (TensorRT {major}.x, {profile.precision}, batch {profile.min_batch}-"
        f"{profile.max_batch}"
        + (f", DLA core {profile.dla_core} with GPU fallback, static batch"
           if profile.dla_core is not None else "")
        + "). Written by mutualnet; run it from anywhere on the device.",
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
        args += [f"--timingCacheFile={cache}", f"--memPoolSize=workspace:{profile.workspace_mb}M",
                 "--profilingVerbosity=detailed"]
        if profile.dla_core is not None:
            args += [f"--useDLACore={profile.dla_core}", "--allowGPUFallback"]
        lines.append(f"echo 'building {sid}' >&2")
        lines.append('"$TRTEXEC" ' + " \\\n    ".join(shlex.quote(a) for a in args))
        lines.append("")
    return "\n".join(lines)


def write_build_script(manifest: Manifest, profile: DeployProfile,
                       timing_cache: str | None = None) -> Path:
    """Write ``build_engines.sh`` (executable) next to the manifest; returns its path."""
    path = manifest.root / SCRIPT_NAME
    atomic_write_bytes(path, trtexec_script(manifest, profile, timing_cache).encode(), 0o755)
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
    atomic_write_bytes(dst, model.SerializeToString())
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
    check_buildable(profile)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mb << 20)
    if profile.precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    if hasattr(trt, "ProfilingVerbosity"):   # layer datatypes for the engine inspector
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
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
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))


# ============================================================================ layer datatypes

# (name, substrings of TensorRT's "Format/Datatype" text), most specific first
_DATATYPES = (("bf16", ("bf16", "bfloat")), ("fp16", ("fp16", "half")), ("fp8", ("fp8",)),
              ("uint8", ("uint8",)), ("int8", ("int8",)), ("int4", ("int4",)),
              ("int32", ("int32",)), ("int64", ("int64",)), ("bool", ("bool",)),
              ("fp32", ("fp32", "float")))


def _datatype(text: str) -> str | None:
    low = text.lower()
    for name, keys in _DATATYPES:
        if any(k in low for k in keys):
            return name
    return None


def layer_precisions(info_json: str) -> dict[str, int] | None:
    """Count the output datatypes of an engine's compute layers (reformat layers left out)
    from TensorRT's engine-inspector JSON; None when it names no datatype (an engine built
    without detailed profiling verbosity lists layer names only)."""
    try:
        doc = json.loads(info_json)
    except (TypeError, ValueError):
        return None
    layers = doc.get("Layers") if isinstance(doc, dict) else None
    counts: dict[str, int] = {}
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or layer.get("LayerType") == "Reformat":
            continue
        for out in layer.get("Outputs") or []:
            kind = _datatype(str(out.get("Format/Datatype", ""))) if isinstance(out, dict) \
                else None
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items())) or None


def engine_layer_precisions(trt: Any, engine_path: Path, input_name: str, batch: int,
                            resolution: int) -> dict[str, int] | None:
    """:func:`layer_precisions` of a built engine through TensorRT's engine inspector, with an
    execution context (no device memory) at ``batch`` so formats are resolved. Best effort:
    None when the inspector is missing or reports nothing (the build itself never fails)."""
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            return None
        inspector = engine.create_engine_inspector()
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        context = (engine.create_execution_context(strategy.USER_MANAGED) if strategy
                   else engine.create_execution_context_without_device_memory())
        if context is not None and context.set_input_shape(
                input_name, (batch, 3, resolution, resolution)):
            for attr in ("execution_context", "context"):   # 10.x+ name, then 8.x's
                try:
                    setattr(inspector, attr, context)
                    break
                except (AttributeError, TypeError):
                    continue
        return layer_precisions(str(inspector.get_engine_information(
            trt.LayerInformationFormat.JSON)))
    except Exception:  # noqa: BLE001 - inspection is informative only
        return None


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


@dataclass(frozen=True)
class ParityImages:
    """Held-out images for engine parity: uint8 RGB HWC, with labels where known.

    ``cropped``: the images are already resized and center-cropped to the manifest's
    ``preprocessing.crop`` (as the export stores them), so parity only normalizes them and
    resizes them to each subnet's resolution; otherwise the full preprocessing runs.
    """

    images: np.ndarray | Sequence[np.ndarray]
    labels: np.ndarray | None
    cropped: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class BuildReport:
    """What build_engines did: script path, engine records, parity, seconds per build."""

    script: Path
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: dict[str, EngineParity] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    parity_source: str | None = None    # where the parity images came from (None: no parity)

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


def _as_parity_images(data: ParityImages | tuple[Any, Any]) -> ParityImages:
    if isinstance(data, ParityImages):
        return data
    images, labels = data
    return ParityImages(images, labels, cropped=False, source="images given")


def _cache_path(manifest: Manifest, cache_rel: str) -> Path:
    path = Path(cache_rel) if Path(cache_rel).is_absolute() else manifest.root / cache_rel
    if path.exists() and not path.is_file():
        raise ExportUsageError(f"timing cache {path} is not a file; pass a file path to "
                               "--timing-cache (it is created when missing)")
    return path


def build_engines(manifest_dir: str | os.PathLike[str],
                  profile: str | DeployProfile | None = None, *,
                  timing_cache: str | os.PathLike[str] | None = None,
                  parity_data: ParityImages | tuple[np.ndarray | Sequence[np.ndarray],
                                                    np.ndarray | None] | None = None,
                  parity_limit: int = 500, record_only: bool = False,
                  progress: bool = True) -> BuildReport:
    """Write build_engines.sh, build one engine per subnet, record them, run engine parity.

    profile: name/path/DeployProfile; default the profile recorded in the manifest.
    parity_data: held-out images (:class:`ParityImages`, or a tuple of uint8 NHWC images and
    labels or None); default: the ``parity_images.npz`` the export stored (at most
    ``parity_limit`` of them); without either no engine parity is run (the report says so).
    record_only: do not build, record engines that build_engines.sh already produced.
    Without tensorrt: BackendUnavailableError, after the script is written.
    """
    manifest = load_manifest(manifest_dir)
    prof = _profile_for(manifest, profile)
    if prof.runtime != "tensorrt" or prof.tensorrt_major is None:
        raise ExportUsageError(f"deploy profile {prof.name} targets {prof.runtime}, not "
                               "TensorRT; pass --profile jetson-orin-nano, server-a100, ... ")
    data = _as_parity_images(parity_data) if parity_data is not None else \
        stored_parity_images(manifest, parity_limit)
    cache_rel = str(timing_cache) if timing_cache else _timing_cache_rel(prof)
    cache_path = _cache_path(manifest, cache_rel)
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
            "gpu_name": gpu_name, "compute_capability": cc,
            # what was asked of the builder; layer_precisions is what the engine reports
            "precision": prof.precision, "precision_requested": prof.precision,
            "layer_precisions": engine_layer_precisions(trt, engine_path, sn["input"]["name"],
                                                        prof.opt_batch, int(sn["resolution"])),
            # the core requested; layers the DLA cannot run fall back to the GPU
            "dla_core": prof.dla_core, "gpu_fallback": prof.dla_core is not None,
            "built": utc_now(), "min_batch": prof.min_batch,
            "opt_batch": prof.opt_batch, "max_batch": prof.max_batch, "profile": prof.name,
        }
        bar.update(1)
    bar.close()
    _record(manifest, report)
    if data is not None:
        report.parity_source = data.source
        _run_parity(manifest, prof, report, data)
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


def _parity_inputs(manifest: Manifest, data: ParityImages, resolution: int) -> np.ndarray:
    pre = manifest.preprocessing
    if data.cropped:   # stored already resized + cropped: only normalize and resize
        pre = {**pre, "resize": None, "resize_mode": "shorter_side"}
    return preprocess_images(data.images, pre, resolution)


def _run_parity(manifest: Manifest, profile: DeployProfile, report: BuildReport,
                data: ParityImages) -> None:
    trt_rt = SubnetRuntime.load(manifest.root, backend="tensorrt")
    ort_rt = SubnetRuntime.load(manifest.root, backend="onnxruntime", device="cpu")
    try:
        for info in trt_rt.subnets:
            x = _parity_inputs(manifest, data, info.resolution)
            ref = ort_rt.infer_tensor(x, subnet=info.id).logits
            eng = trt_rt.infer_tensor(x, subnet=info.id).logits
            report.parity[info.id] = engine_parity(ref, eng, data.labels, profile, info.id)
    finally:
        trt_rt.close()
        ort_rt.close()
    _record(load_manifest(manifest.root, verify_files=False), report)


# ============================================================================ parity images

def write_parity_images(path: str | os.PathLike[str], images: np.ndarray,
                        labels: np.ndarray | None, *, crop: int) -> Path:
    """Store held-out images for engine parity (atomic): uint8 RGB NHWC, already resized and
    center-cropped to ``crop`` (the stage :class:`ParityImages` calls ``cropped``)."""
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[1:] != (crop, crop, 3):
        raise ExportError(f"parity images must be uint8 [N, {crop}, {crop}, 3]; got "
                          f"{imgs.dtype} {list(imgs.shape)}")
    arrays: dict[str, np.ndarray] = {"images": imgs, "stage": np.array(CROPPED),
                                     "crop": np.array(crop)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    out = Path(path)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle kw
    atomic_write_bytes(out, buf.getvalue())
    return out


def _evenly(n: int, limit: int) -> np.ndarray:
    return np.linspace(0, n - 1, min(limit, n)).astype(int)


def _open_npz(p: Path) -> Any:
    if not p.is_file():
        raise ExportUsageError(f"parity image file {p} does not exist")
    hint = ("pass an .npz with images (uint8 NHWC) + labels, or the shared JPEG format")
    try:
        if not zipfile.is_zipfile(p):
            raise ExportUsageError(f"{p} is not an .npz file (numpy's zip format); {hint}")
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ExportUsageError(f"{p} is not a readable .npz of images ({reason(e)}); "
                               f"{hint}") from None


def read_parity_images(path: str | os.PathLike[str], limit: int = 500,
                       split: str = "test") -> ParityImages:
    """Held-out images for engine parity from an .npz: ``images`` (uint8 NHWC) + ``labels``
    (optionally ``stage="cropped"``, as the export stores them), or the shared JPEG format
    (``<split>_jpeg`` + ``<split>_offsets`` + ``<split>_labels``); at most ``limit`` images,
    taken evenly over the file."""
    p = Path(path)
    with _open_npz(p) as z:
        try:
            if "images" in z.files:
                imgs = z["images"]
                labels = np.asarray(z["labels"]) if "labels" in z.files else None
                cropped = "stage" in z.files and str(z["stage"]) == CROPPED
                if cropped and (imgs.ndim != 4 or imgs.dtype != np.uint8):
                    raise ExportUsageError(f"{p}: stored parity images must be uint8 NHWC; "
                                           f"got {imgs.dtype} {list(imgs.shape)}")
                idx = _evenly(len(imgs), limit)
                return ParityImages(imgs[idx] if cropped else [imgs[i] for i in idx],
                                    None if labels is None else labels[idx], cropped,
                                    str(p))
            key = f"{split}_jpeg"
            if key not in z.files:
                raise ExportUsageError(f"{p} holds neither 'images' nor '{key}'; pass an .npz "
                                       "with images (uint8 NHWC) + labels, or the shared JPEG "
                                       "format")
            jpeg, off, labels = z[key], z[f"{split}_offsets"], z[f"{split}_labels"]
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise ExportUsageError(f"{p}: cannot read the parity images ({reason(e)})") from None
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise BackendUnavailableError("decoding JPEG parity images needs Pillow: "
                                      "`pip install pillow`") from e
    idx = _evenly(len(labels), limit)
    try:
        out = [np.asarray(Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes()))
                          .convert("RGB")) for i in idx]
    except (UnidentifiedImageError, OSError) as e:
        raise ExportUsageError(f"{p}: a JPEG in '{key}' cannot be decoded ({e})") from e
    return ParityImages(out, np.asarray(labels)[idx], False, str(p))


def load_parity_images(path: str | os.PathLike[str], limit: int = 500,
                       split: str = "test") -> tuple[list[np.ndarray], np.ndarray | None]:
    """:func:`read_parity_images` as (list of images, labels or None)."""
    data = read_parity_images(path, limit, split)
    return list(data.images), data.labels


def stored_parity_images(manifest: Manifest, limit: int = 500) -> ParityImages | None:
    """The parity images the export stored (``files.parity_images``), at most ``limit``;
    None for exports without them (written before they were stored)."""
    entry = (manifest.document.get("files") or {}).get(PARITY_IMAGES_KEY)
    if entry is None:
        return None
    data = read_parity_images(manifest.file(entry["path"]), limit)
    crop = int(manifest.preprocessing["crop"])
    shape = tuple(np.asarray(data.images).shape[1:]) if data.cropped else None
    if shape != (crop, crop, 3):
        raise ExportError(f"{entry['path']} holds images of shape {shape}, not the manifest's "
                          f"crop {crop}x{crop}x3; re-export, or pass --images")
    return ParityImages(data.images, data.labels, True, entry["path"])


def describe(report: BuildReport) -> str:
    """A short table of the build: subnet, seconds, size, parity."""
    rows = [f"{'subnet':<14} {'build s':>8} {'MB':>7}  parity"]
    for sid, rec in report.engines.items():
        par = report.parity.get(sid)
        ptxt = "not run (no stored parity images; pass --images)" if par is None else (
            f"{'PASS' if par.passed else 'FAIL'} agreement {par.top1_agreement:.4f}"
            + (f", drop {par.accuracy_drop_pt:+.2f} pt" if par.accuracy_drop_pt is not None
               else "") + f", max|diff| {par.max_abs_diff:.3g}")
        rows.append(f"{sid:<14} {report.seconds.get(sid, 0.0):>8.1f} "
                    f"{rec['size'] / 1e6:>7.2f}  {ptxt}")
    return "\n".join(rows)
