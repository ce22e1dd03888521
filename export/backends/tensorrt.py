"""The TensorRT backend (TensorRT 10 and 11): environment, engine runner, builder, script.

Running: all engines of a runtime share one ``IRuntime``, one CUDA stream and one device
activation buffer (sized for the largest engine, ``USER_MANAGED`` allocation), so enqueues are
serialized under one lock; inputs and outputs live in per-engine device buffers sized for the
largest batch. Building: INT8 and FP16 from the exported ``model.int8.onnx`` (Q/DQ) and
``model.fp16.onnx``, strongly typed on TensorRT 10 and 11 with no precision flag ("use
explicit quantization with strong typing", TensorRT's guide), the DLA profile included
(default device DLA, ``GPU_FALLBACK`` for what the DLA cannot run); an fp16 engine from an
export without ``model.fp16.onnx`` uses ``BuilderFlag.FP16`` on 10 and a converted ONNX on
11 (which is always strongly typed). ``build_engines.sh`` holds the equivalent ``trtexec``
lines.

tensorrt and cuda-python are imported lazily; without them BackendUnavailableError says how
to install them. Torch-free.
"""

from __future__ import annotations

import importlib
import json
import shlex
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, ExportError, ExportUsageError
from ..manifest import EngineRecord, atomic_write_bytes

if TYPE_CHECKING:
    from ..manifest import FileRecord, Manifest, SubnetEntry
    from ..profiles import DeployProfile

SCRIPT_NAME = "build_engines.sh"
# TensorRT's DLA restrictions (developer guide, "DLA Supported Layers and Restrictions"): a
# DLA core holds at most 16 loadables at once, a loadable being one DLA subgraph of an
# engine. The runtime preloads every subnet, so at most 16 subnet engines per core (fewer
# if GPU fallback splits an engine into several DLA subgraphs).
DLA_MAX_LOADABLES = 16
FP16_HINT = ("TensorRT 11 builds FP16 from an FP16 ONNX: install NVIDIA ModelOpt "
             "(`pip install nvidia-modelopt[onnx]`) or onnxconverter-common "
             "(`pip install onnxconverter-common`)")

__all__ = ["DLA_MAX_LOADABLES", "SCRIPT_NAME", "EngineEnvironment", "EngineRunner",
           "TrtShared", "TrtRunner", "build_one", "check_buildable", "check_engine_record",
           "convert_onnx_fp16", "cuda_python_requirement", "engine_layer_precisions",
           "engine_relpath", "gpu_identity", "import_tensorrt", "layer_precisions",
           "tensorrt_environment", "tensorrt_hint", "trtexec_script", "write_build_script"]


# ============================================================================ imports / hints

def cuda_python_requirement(major: int | None) -> str:
    """The cuda-python that matches a TensorRT major: TensorRT 10 wheels and JetPack 6 are
    CUDA 12 (``cuda-python>=12,<13``); TensorRT 11 packages are CUDA 13 (``cuda-python>=13``;
    cuda-python's major follows CUDA's)."""
    return "'cuda-python>=13'" if major is not None and major >= 11 else "'cuda-python>=12,<13'"


def tensorrt_hint(major: int | None = None) -> str:
    return ("install TensorRT's Python package: on Jetson it comes with JetPack "
            "(`sudo apt install python3-libnvinfer`), elsewhere `pip install tensorrt` "
            "(or `pip install mutualnet[tensorrt]`); the TensorRT backend also needs "
            f"`pip install {cuda_python_requirement(major)}`")


def import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailableError(f"the TensorRT backend needs the tensorrt package; "
                                      f"{tensorrt_hint()}") from e


def tensorrt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _installed_major() -> int | None:
    try:
        return tensorrt_major(importlib.import_module("tensorrt"))
    except (ImportError, ValueError):
        return None


def import_cudart() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailableError("the TensorRT backend needs CUDA's Python bindings; "
                                  f"`pip install {cuda_python_requirement(_installed_major())}`")


def cuda_call(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple; raise on a CUDA error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    code: Any = getattr(err, "value", err)
    if int(code) != 0:
        raise ExportError(f"CUDA error {err} in {what}; check the GPU with nvidia-smi "
                          "(or tegrastats on Jetson)")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def _handle(obj: Any) -> int:
    """The integer value of a cuda-python handle (stream, pointer)."""
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


# ============================================================================ environment

@dataclass(frozen=True)
class EngineEnvironment:
    """The TensorRT version and GPU this process would run engines with."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def gpu_identity(device_index: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "8.7") through cuda-python, else nvidia-smi."""
    try:
        cudart = import_cudart()
        prop = cuda_call(cudart.cudaGetDeviceProperties(device_index), "cudaGetDeviceProperties")
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name.strip("\x00").strip(), f"{prop.major}.{prop.minor}"
    except (BackendUnavailableError, ExportError):
        pass
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap",
                              "--format=csv,noheader", f"--id={device_index}"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cc = (s.strip() for s in out.strip().splitlines()[0].split(",", 1))
        return name, cc
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        req = cuda_python_requirement(_installed_major())
        raise BackendUnavailableError("cannot identify the GPU (no cuda-python, no "
                                      f"nvidia-smi); `pip install {req}`") from e


def tensorrt_environment(device_index: int = 0) -> EngineEnvironment:
    """The TensorRT version and GPU engines would run on here (BackendUnavailableError if none)."""
    trt = import_tensorrt()
    name, cc = gpu_identity(device_index)
    return EngineEnvironment(tensorrt_version=str(trt.__version__), gpu_name=name,
                             compute_capability=cc)


def check_engine_record(record: EngineRecord, env: EngineEnvironment) -> str | None:
    """Why an engine record cannot run in ``env`` (stale), or None when it matches."""
    reasons = []
    if record.tensorrt_version != env.tensorrt_version:
        reasons.append(f"built with TensorRT {record.tensorrt_version}, this is "
                       f"{env.tensorrt_version}")
    if record.gpu_name != env.gpu_name:
        reasons.append(f"built on {record.gpu_name}, this GPU is {env.gpu_name}")
    elif record.compute_capability != env.compute_capability:
        reasons.append(f"built for compute capability {record.compute_capability}, "
                       f"this GPU has {env.compute_capability}")
    return "; ".join(reasons) or None


# ============================================================================ running

class TrtShared:
    """What all TensorRT subnets share: runtime, one stream, one activation buffer, one lock.

    cudaSetDevice "sets device as the current device for the calling host thread" (CUDA
    runtime API): every thread that enqueues work on ``cuda:N`` (N > 0) must select N
    itself, so :meth:`use_device` does it once per thread before its enqueues."""

    def __init__(self, device_index: int) -> None:
        self.trt = import_tensorrt()
        self.cudart = import_cudart()
        self.device_index = int(device_index)
        self._thread = threading.local()
        self.use_device()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.stream = cuda_call(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.lock = threading.Lock()
        self.activation_ptr = 0
        self.activation_bytes = 0
        self.unshared_bytes = 0
        self.allocations: list[int] = []

    def use_device(self) -> None:
        """Make this runtime's GPU current for the calling thread (once per thread)."""
        if getattr(self._thread, "device", None) != self.device_index:
            cuda_call(self.cudart.cudaSetDevice(self.device_index), "cudaSetDevice")
            self._thread.device = self.device_index

    def deserialize(self, path: Path, dla_core: int | None = None) -> Any:
        """Deserialize an engine; ``IRuntime.DLA_core`` ("the DLA core that the engine
        executes on", Python API of IRuntime) is set first from the engine record: left
        at its default an engine built for core 1 would run on core 0."""
        if dla_core is not None:
            self.runtime.DLA_core = int(dla_core)
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ExportError(f"TensorRT could not deserialize {path}; rebuild it with "
                              "`mutualnet build-engines`")
        return engine

    def malloc(self, nbytes: int) -> int:
        ptr = int(cuda_call(self.cudart.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self.allocations.append(ptr)
        return ptr

    def share_activations(self, runners: Sequence[TrtRunner]) -> None:
        """One activation buffer, sized for the largest engine, attached to every context."""
        self.activation_bytes = max(r.device_memory for r in runners)
        self.unshared_bytes = sum(r.device_memory for r in runners)
        self.activation_ptr = self.malloc(self.activation_bytes)
        for r in runners:
            r.attach(self.activation_ptr, self.activation_bytes)

    def close(self) -> None:
        for ptr in self.allocations:
            self.cudart.cudaFree(ptr)
        self.allocations.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


def _engine_device_memory(engine: Any) -> int:
    size = getattr(engine, "device_memory_size_v2", None)   # TRT >= 10.1, the only one in 11
    if size is None:
        size = engine.device_memory_size
    return int(size)


def _io_names(trt: Any, engine: Any, path: Path) -> tuple[str, str]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{path}: expected one input and one output tensor, found "
                          f"{inputs} / {outputs}")
    return inputs[0], outputs[0]


def engine_io(shared: TrtShared, path: Path) -> tuple[int, int, int]:
    """(resolution, classes, max batch of optimization profile 0) of the engine at ``path``."""
    engine = shared.deserialize(path)
    name_in, name_out = _io_names(shared.trt, engine, path)
    shape = tuple(engine.get_tensor_shape(name_in))
    classes = tuple(engine.get_tensor_shape(name_out))
    max_shape = tuple(engine.get_tensor_profile_shape(name_in, 0)[2])
    return int(shape[-1]), int(classes[-1]), int(max_shape[0])


class TrtRunner:
    """One deserialized engine with an execution context without its own activation memory."""

    name = "tensorrt"

    def __init__(self, shared: TrtShared, path: Path, resolution: int, num_classes: int,
                 max_batch: int, dla_core: int | None = None) -> None:
        trt = shared.trt
        self.shared = shared
        self.engine = shared.deserialize(path, dla_core)
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        if strategy is not None:
            self.context = self.engine.create_execution_context(strategy.USER_MANAGED)
        else:  # pragma: no cover - very old 10.x
            self.context = self.engine.create_execution_context_without_device_memory()
        if self.context is None:
            raise ExportError(f"TensorRT could not create an execution context for {path}")
        self.device_memory = _engine_device_memory(self.engine)
        self.input_name, self.output_name = _io_names(trt, self.engine, path)
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.resolution, self.num_classes, self.max_batch = resolution, num_classes, max_batch
        in_bytes = max_batch * 3 * resolution * resolution * self.in_dtype.itemsize
        out_bytes = max_batch * num_classes * self.out_dtype.itemsize
        self.in_ptr, self.out_ptr = shared.malloc(in_bytes), shared.malloc(out_bytes)
        self.context.set_tensor_address(self.input_name, self.in_ptr)
        self.context.set_tensor_address(self.output_name, self.out_ptr)

    def attach(self, ptr: int, size: int) -> None:
        """Point this context's activations at the shared buffer."""
        setter = getattr(self.context, "set_device_memory", None)
        if setter is not None:
            try:
                setter(ptr, size)           # 10.x (x >= 1) and 11: memory + size ("V2")
                return
            except TypeError:
                pass
        self.context.device_memory = ptr    # 10.0: property setter, size implicit

    def run(self, x: np.ndarray) -> np.ndarray:
        cudart, sh = self.shared.cudart, self.shared
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        out = np.empty((x.shape[0], self.num_classes), dtype=self.out_dtype)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        sh.use_device()
        with sh.lock:  # one activation buffer => one enqueue at a time on one stream
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise ExportError(f"engine rejected input shape {tuple(x.shape)}")
            cuda_call(cudart.cudaMemcpyAsync(self.in_ptr, x.ctypes.data, x.nbytes, h2d,
                                             sh.stream), "cudaMemcpyAsync")
            if not self.context.execute_async_v3(_handle(sh.stream)):
                raise ExportError("TensorRT execute_async_v3 failed")
            cuda_call(cudart.cudaMemcpyAsync(out.ctypes.data, self.out_ptr, out.nbytes, d2h,
                                             sh.stream), "cudaMemcpyAsync")
            cuda_call(cudart.cudaStreamSynchronize(sh.stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.context = None
        self.engine = None


class EngineRunner:
    """One engine file as a standalone :class:`~export.backends.Runner` (engine parity,
    ``make_runner("tensorrt", path)``): its own stream and activation buffer, batches above
    the engine's maximum split. ``close()`` frees the GPU memory."""

    def __init__(self, path: str | Path, *, device_index: int = 0, max_batch: int | None = None,
                 dla_core: int | None = None, name: str = "tensorrt") -> None:
        engine = Path(path)
        self.name = name
        self._shared = TrtShared(device_index)  # BackendUnavailableError without tensorrt
        try:
            if not engine.is_file():
                raise ExportUsageError(f"engine file {engine} does not exist; build it with "
                                       "`mutualnet build-engines`")
            resolution, classes, engine_max = engine_io(self._shared, engine)
            self.max_batch = min(max_batch or engine_max, engine_max)
            self._runner = TrtRunner(self._shared, engine, resolution, classes, self.max_batch,
                                     dla_core)
            self._shared.share_activations([self._runner])
        except BaseException:
            self._shared.close()
            raise

    def run(self, x: np.ndarray) -> np.ndarray:
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


# ============================================================================ building

def engine_dir(profile: DeployProfile) -> str:
    return f"engines/{profile.name}"


def engine_relpath(profile: DeployProfile, sid: str, precision: str | None = None) -> str:
    prec = precision or profile.precision
    dla = f".dla{profile.dla_core}" if profile.dla_core is not None else ""
    return f"{engine_dir(profile)}/{sid}.{prec}{dla}.plan"


def fp16_onnx_relpath(profile: DeployProfile, sid: str) -> str:
    return f"{engine_dir(profile)}/{sid}.fp16.onnx"


def timing_cache_relpath(profile: DeployProfile) -> str:
    return f"{engine_dir(profile)}/timing.cache"


def typed_onnx(profile: DeployProfile, sn: SubnetEntry) -> FileRecord | None:
    """The exported ONNX that carries the profile's precision itself (``model.int8.onnx``
    with Q/DQ, ``model.fp16.onnx``), built strongly typed on TensorRT 10 and 11; None for
    fp32, or fp16 from an export without one (then 10 uses BuilderFlag.FP16 and 11 converts
    first). INT8 without the Q/DQ ONNX is a usage error."""
    if profile.precision == "fp32":
        return None
    rec = sn.onnx_for(profile.precision)
    if rec is None and profile.precision == "int8":
        raise ExportUsageError(f"int8 engines need the Q/DQ ONNX of every subnet, and {sn.id} "
                               "has none (model.int8.onnx); re-export with --precision int8, "
                               "or build engines of another precision (--precision fp16)")
    return rec


def check_buildable(profile: DeployProfile, subnets: int = 0) -> None:
    """ExportUsageError for what neither builder nor trtexec script may do: a DLA core with a
    dynamic batch (the DLA runs static shapes only), and more than
    :data:`DLA_MAX_LOADABLES` subnets on one DLA core (the runtime preloads all). INT8 needs
    the Q/DQ ONNX of each subnet (:func:`typed_onnx`)."""
    if profile.dla_core is None:
        return
    if not profile.min_batch == profile.opt_batch == profile.max_batch:
        raise ExportUsageError(
            f"deploy profile {profile.name}: the DLA needs a static shape, but the batch range "
            f"is {profile.min_batch}/{profile.opt_batch}/{profile.max_batch}; set min_batch = "
            "opt_batch = max_batch (e.g. 1) or dla_core: null")
    if subnets > DLA_MAX_LOADABLES:
        raise ExportUsageError(
            f"deploy profile {profile.name}: {subnets} subnets on DLA core {profile.dla_core}, "
            f"but a DLA core loads at most {DLA_MAX_LOADABLES} engines (loadables); export at "
            f"most {DLA_MAX_LOADABLES} (width, resolution) pairs, or use a GPU profile")


def _shape(name: str, batch: int, r: int) -> str:
    return f"{name}:{batch}x3x{r}x{r}"


def _script_header(profile: DeployProfile, major: int) -> list[str]:
    dla = (f", DLA core {profile.dla_core} with GPU fallback, static batch"
           if profile.dla_core is not None else "")
    return [
        "#!/usr/bin/env bash",
        f"# Build the TensorRT engines of this export for deploy profile '{profile.name}'",
        f"# (TensorRT {major}.x, {profile.precision}, batch {profile.min_batch}-"
        f"{profile.max_batch}{dla}). Written by mutualnet; run it from anywhere on the device.",
        "# Afterwards record the engines in manifest.json (sha256, TensorRT version, GPU):",
        f"#   mutualnet build-engines . --profile {profile.name} --record-only",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        f"mkdir -p {shlex.quote(engine_dir(profile))}",
        "",
    ]


def _trtexec_lines(profile: DeployProfile, major: int, sid: str, r: int, name: str,
                   onnx_rel: str, cache: str, typed: bool = False) -> list[str]:
    lines = []
    if major >= 11 and profile.precision == "fp16" and not typed:
        fp16 = fp16_onnx_relpath(profile, sid)
        lines.append(f"# {sid}: TensorRT 11 is strongly typed: convert the ONNX to FP16 first")
        lines.append(f"python3 -m modelopt.onnx.autocast --onnx_path {shlex.quote(onnx_rel)} "
                     f"--output_path {shlex.quote(fp16)} --low_precision_type fp16 "
                     "--keep_io_types")
        onnx_rel = fp16
    args = [f"--onnx={onnx_rel}", f"--saveEngine={engine_relpath(profile, sid)}",
            f"--minShapes={_shape(name, profile.min_batch, r)}",
            f"--optShapes={_shape(name, profile.opt_batch, r)}",
            f"--maxShapes={_shape(name, profile.max_batch, r)}"]
    if major >= 11 or typed:   # precision from the ONNX itself (Q/DQ, fp16 tensors)
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
    return lines


def trtexec_script(manifest: Manifest, profile: DeployProfile,
                   timing_cache: str | None = None) -> str:
    """A bash script with one ``trtexec`` line per subnet, equivalent to the Python builder."""
    check_buildable(profile, len(manifest.subnets))
    major = profile.tensorrt_major or 10
    cache = timing_cache or timing_cache_relpath(profile)
    lines = _script_header(profile, major)
    for sn in manifest.subnets:
        typed = typed_onnx(profile, sn)
        lines += _trtexec_lines(profile, major, sn.id, sn.resolution, sn.input.name,
                                (typed or sn.onnx).path, cache, typed is not None)
    return "\n".join(lines)


def write_build_script(manifest: Manifest, profile: DeployProfile,
                       timing_cache: str | None = None) -> Path:
    """Write ``build_engines.sh`` (executable) next to the manifest; returns its path."""
    path = manifest.root / SCRIPT_NAME
    atomic_write_bytes(path, trtexec_script(manifest, profile, timing_cache).encode(), 0o755)
    return path


def convert_onnx_fp16(src: Path, dst: Path) -> Path:
    """FP16 copy of an FP32 ONNX with FP32 inputs/outputs: the one converter,
    :func:`export.quantize.convert_fp16` (for exports made without ``model.fp16.onnx``)."""
    from ..quantize import convert_fp16

    return convert_fp16(src, dst)


def _network(trt: Any, major: int, builder: Any, logger: Any, onnx_path: Path,
             typed: bool = False) -> Any:
    flag_enum = trt.NetworkDefinitionCreationFlag
    flags = 0
    if major >= 11 or typed:
        if hasattr(flag_enum, "STRONGLY_TYPED"):
            flags |= 1 << int(flag_enum.STRONGLY_TYPED)
    elif hasattr(flag_enum, "EXPLICIT_BATCH"):   # deprecated no-op on 10, gone in 11
        flags |= 1 << int(flag_enum.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def _config(trt: Any, major: int, builder: Any, profile: DeployProfile, cache_bytes: bytes,
            input_name: str, resolution: int, typed: bool = False) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mb << 20)
    if profile.precision == "fp16" and major < 11 and not typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if hasattr(trt, "ProfilingVerbosity"):   # layer datatypes for the engine inspector
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    opt = builder.create_optimization_profile()
    opt.set_shape(input_name, (profile.min_batch, 3, resolution, resolution),
                  (profile.opt_batch, 3, resolution, resolution),
                  (profile.max_batch, 3, resolution, resolution))
    config.add_optimization_profile(opt)
    if profile.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(profile.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return config


def _save_timing_cache(config: Any, cache_path: Path) -> bool:
    """Write the builder's timing cache; False when there is none. The cache is set with
    ignore_mismatch False, and ITimingCache's docs say ignore_mismatch "must be set to true
    if combining a timing cache created from a different device": a cache file from
    another device is refused, and ``get_timing_cache()`` can then give None after a good
    build, which must not fail the build."""
    cache = config.get_timing_cache()
    if cache is None:
        warnings.warn(f"TensorRT kept no timing cache for {cache_path} (a cache from another "
                      "device or TensorRT version?); the engine is fine, the next build "
                      "starts a new cache", stacklevel=3)
        return False
    atomic_write_bytes(cache_path, bytes(memoryview(cache.serialize())))
    return True


def build_one(trt: Any, major: int, onnx_path: Path, engine_path: Path, cache_path: Path,
              profile: DeployProfile, input_name: str, resolution: int,
              typed: bool = False) -> None:
    """Build one engine from ``onnx_path`` into ``engine_path``, sharing ``cache_path``;
    ``typed``: the ONNX carries its precision (Q/DQ or fp16), built strongly typed and
    without precision flags on TensorRT 10 as on 11."""
    check_buildable(profile)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _network(trt, major, builder, logger, onnx_path, typed)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    config = _config(trt, major, builder, profile, cache_bytes, input_name, resolution, typed)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; rerun with "
                          "the trtexec line in build_engines.sh --verbose to see why")
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    _save_timing_cache(config, cache_path)


# ============================================================================ layer datatypes

# (name, substrings of TensorRT's datatype text), most specific first
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


def _output_datatype(out: Any) -> str | None:
    """One layer output's datatype. TensorRT 10 writes one ``"Format/Datatype"`` text;
    TensorRT 11's inspector JSON has "the split of the Format/DataType field" (migration
    guide, IEngineInspector JSON output) into ``"DataType"`` and ``"Format"``."""
    if not isinstance(out, dict):
        return None
    for key in ("DataType", "Format/Datatype", "Format/DataType"):
        if out.get(key):
            return _datatype(str(out[key]))
    return None


def layer_precisions(info_json: str) -> dict[str, int] | None:
    """Count the output datatypes of an engine's compute layers (reformat layers left out)
    from TensorRT's engine-inspector JSON (10 or 11); None when it names no datatype (an
    engine built without detailed profiling verbosity lists layer names only)."""
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
            kind = _output_datatype(out)
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
            inspector.execution_context = context
        return layer_precisions(str(inspector.get_engine_information(
            trt.LayerInformationFormat.JSON)))
    except Exception:  # noqa: BLE001 - inspection is informative only
        return None
