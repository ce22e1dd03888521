"""The on-device runtime: load every subnet of a manifest, switch between them on the fly.

Torch-free (numpy + onnxruntime or tensorrt). Typical use::

    rt = SubnetRuntime.load("export_dir")             # verifies every checksum first
    rt.select_budget(mflops=50)                       # most accurate subnet within 50 M MACs
    result = rt.infer(images)                         # uint8 NHWC, any size
    print(result.subnet_id, result.top1)

Switching (:meth:`SubnetRuntime.select`, :meth:`select_budget`, the :class:`LatencyController`)
replaces one reference between requests: a request reads the active subnet once when it
starts and finishes on it, so switching never blocks, never rebuilds, and is thread-safe.

TensorRT backend: all engines are deserialized up front; every execution context gets the
same device activation buffer (sized for the largest engine, ``USER_MANAGED`` allocation),
so enqueues are serialized on one CUDA stream under one lock. Inputs and outputs live in
per-subnet device buffers sized for the profile's largest batch.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import BackendUnavailableError, ExportError, ExportUsageError, ManifestError
from .manifest import Manifest, load_manifest

BACKENDS = ("auto", "tensorrt", "onnxruntime")
ON_STALE = ("error", "fallback")
# cuda-python's major follows CUDA's: 13 needs CUDA 13, JetPack 6 ships CUDA 12
CUDA_PYTHON = "'cuda-python>=12,<13'"

TENSORRT_HINT = ("install TensorRT's Python package: on Jetson it comes with JetPack "
                 "(`sudo apt install python3-libnvinfer`), elsewhere `pip install tensorrt` "
                 "(or `pip install mutualnet[tensorrt]`); the TensorRT backend also needs "
                 "`pip install 'cuda-python>=12,<13'` (CUDA 12, as JetPack 6 ships)")
ORT_HINT = ("install ONNX Runtime: `pip install onnxruntime` (CPU) or `pip install "
            "onnxruntime-gpu` (CUDA); on Jetson use the wheel for your JetPack")

__all__ = [
    "BudgetChoice", "EngineEnvironment", "InferResult", "LatencyController", "SubnetInfo",
    "SubnetRuntime", "check_engine_record", "preprocess_images", "resolve_backend",
    "tensorrt_environment",
]


# ============================================================================ preprocessing

from .preprocess import preprocess_images  # noqa: E402

# ============================================================================ results

@dataclass(frozen=True)
class SubnetInfo:
    """What the runtime knows about one subnet (from the manifest)."""

    id: str
    width: float
    resolution: int
    macs: int
    params: int
    top1: float | None          # best known accuracy (backend's own, else ORT, else PyTorch)
    latency_ms: float | None    # measured p90 at batch 1 on this device and backend, if any
    batch_sizes: tuple[int, ...] = (1,)   # (min, opt, max) this subnet is built/run for

    @property
    def mflops(self) -> float:
        """Millions of MACs (the MutualNet paper's "MFLOPs")."""
        return self.macs / 1e6


@dataclass(frozen=True)
class InferResult:
    """Logits of one request and the subnet that computed them."""

    logits: np.ndarray
    subnet_id: str
    latency_ms: float

    @property
    def top1(self) -> np.ndarray:
        return np.asarray(self.logits.argmax(axis=1))

    def probabilities(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class BudgetChoice:
    """Result of :meth:`SubnetRuntime.select_budget`: the subnet and whether it fits."""

    subnet_id: str
    fits: bool
    message: str


@dataclass(frozen=True)
class EngineEnvironment:
    """The TensorRT version and GPU this process would run engines with."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def check_engine_record(record: dict[str, Any], env: EngineEnvironment) -> str | None:
    """Why an engine record cannot run in ``env`` (stale), or None when it matches."""
    reasons = []
    if record.get("tensorrt_version") != env.tensorrt_version:
        reasons.append(f"built with TensorRT {record.get('tensorrt_version')}, this is "
                       f"{env.tensorrt_version}")
    if record.get("gpu_name") != env.gpu_name:
        reasons.append(f"built on {record.get('gpu_name')}, this GPU is {env.gpu_name}")
    elif record.get("compute_capability") != env.compute_capability:
        reasons.append(f"built for compute capability {record.get('compute_capability')}, "
                       f"this GPU has {env.compute_capability}")
    return "; ".join(reasons) or None


# ============================================================================ runners

class _Runner(Protocol):
    max_batch: int

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def _import_ort() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise BackendUnavailableError(f"onnxruntime is not installed; {ORT_HINT}") from e


def _has_nvidia_device() -> bool:
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvhost-ctrl", "/dev/nvgpu"))


def _ort_providers(profile: dict[str, Any], device: str | None) -> list[Any]:
    ort = _import_ort()
    available = set(ort.get_available_providers())
    if device is None:
        device = "cuda" if _has_nvidia_device() and "CUDAExecutionProvider" in available else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise ExportUsageError(f"device {device!r} is not understood; use cpu, cuda or cuda:N")
    dev_id = int(device.split(":", 1)[1]) if ":" in device else 0
    wanted = [p for p in profile.get("ort_providers", []) if p in available
              and p != "TensorrtExecutionProvider"] or ["CUDAExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(f"device {device} needs ONNX Runtime's CUDA provider, "
                                      f"which this onnxruntime lacks; {ORT_HINT}")
    out: list[Any] = []
    for p in wanted:
        out.append((p, {"device_id": dev_id}) if p == "CUDAExecutionProvider" else p)
    if "CPUExecutionProvider" not in wanted:
        out.append("CPUExecutionProvider")
    return out


class _OrtRunner:
    """One ONNX Runtime session (sessions are safe to run from several threads)."""

    def __init__(self, path: Path, providers: list[Any], threads: int, max_batch: int) -> None:
        ort = _import_ort()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads > 0:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.providers = list(self.session.get_providers())
        self.max_batch = max_batch

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.session = None


# ---------------------------------------------------------------------------- TensorRT

def _import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailableError(f"the TensorRT backend needs the tensorrt package; "
                                      f"{TENSORRT_HINT}") from e


def _import_cudart() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailableError("the TensorRT backend needs CUDA's Python bindings; "
                                  f"`pip install {CUDA_PYTHON}`")


def _cuda_call(result: Any, what: str) -> Any:
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


def _gpu_identity(device_index: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "8.7") through cuda-python, else nvidia-smi."""
    try:
        cudart = _import_cudart()
        prop = _cuda_call(cudart.cudaGetDeviceProperties(device_index), "cudaGetDeviceProperties")
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
        raise BackendUnavailableError("cannot identify the GPU (no cuda-python, no "
                                      f"nvidia-smi); `pip install {CUDA_PYTHON}`") from e


def tensorrt_environment(device_index: int = 0) -> EngineEnvironment:
    """The TensorRT version and GPU engines would run on here (BackendUnavailableError if none)."""
    trt = _import_tensorrt()
    name, cc = _gpu_identity(device_index)
    return EngineEnvironment(tensorrt_version=str(trt.__version__), gpu_name=name,
                             compute_capability=cc)


class _TrtShared:
    """What all TensorRT subnets share: runtime, one stream, one activation buffer, one lock."""

    def __init__(self, device_index: int) -> None:
        self.trt = _import_tensorrt()
        self.cudart = _import_cudart()
        _cuda_call(self.cudart.cudaSetDevice(device_index), "cudaSetDevice")
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.stream = _cuda_call(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.lock = threading.Lock()
        self.activation_ptr = 0
        self.activation_bytes = 0
        self.unshared_bytes = 0
        self.allocations: list[int] = []

    def malloc(self, nbytes: int) -> int:
        ptr = int(_cuda_call(self.cudart.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self.allocations.append(ptr)
        return ptr

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


class _TrtRunner:
    """One deserialized engine with an execution context without its own activation memory."""

    def __init__(self, shared: _TrtShared, path: Path, resolution: int, num_classes: int,
                 max_batch: int) -> None:
        trt = shared.trt
        self.shared = shared
        self.engine = shared.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not deserialize {path}; rebuild it with "
                              "`mutualnet build-engines`")
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        if strategy is not None:
            self.context = self.engine.create_execution_context(strategy.USER_MANAGED)
        else:  # pragma: no cover - very old 10.x
            self.context = self.engine.create_execution_context_without_device_memory()
        if self.context is None:
            raise ExportError(f"TensorRT could not create an execution context for {path}")
        self.device_memory = _engine_device_memory(self.engine)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportError(f"{path}: expected one input and one output tensor, found "
                              f"{inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
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
        n = x.shape[0]
        out = np.empty((n, self.num_classes), dtype=self.out_dtype)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with sh.lock:  # one activation buffer => one enqueue at a time on one stream
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise ExportError(f"engine rejected input shape {tuple(x.shape)}")
            _cuda_call(cudart.cudaMemcpyAsync(self.in_ptr, x.ctypes.data, x.nbytes, h2d,
                                              sh.stream), "cudaMemcpyAsync")
            if not self.context.execute_async_v3(_handle(sh.stream)):
                raise ExportError("TensorRT execute_async_v3 failed")
            _cuda_call(cudart.cudaMemcpyAsync(out.ctypes.data, self.out_ptr, out.nbytes, d2h,
                                              sh.stream), "cudaMemcpyAsync")
            _cuda_call(cudart.cudaStreamSynchronize(sh.stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.context = None
        self.engine = None


# ============================================================================ runtime

@dataclass
class _Slot:
    info: SubnetInfo
    runner: _Runner


@dataclass
class _State:
    slots: dict[str, _Slot] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def _best_top1(sn: dict[str, Any], backend: str) -> float | None:
    acc = sn.get("accuracy") or {}
    for key in (backend, "onnxruntime", "pytorch"):
        v = (acc.get(key) or {}).get("top1")
        if v is not None:
            return float(v)
    return None


def _latency_for(sn: dict[str, Any], device: str, backend: str) -> float | None:
    mine = [e for e in (sn.get("latency") or {}).values()
            if e.get("backend") == backend and e.get("device") == device]
    for e in mine:
        if int(e.get("batch", 1)) == 1:
            return float(e["p90_ms"])
        for row in e.get("by_batch") or []:
            if int(row["batch"]) == 1:
                return float(row["p90_ms"])
    return None


class SubnetRuntime:
    """Every subnet of a manifest, preloaded; one of them active. Build with :meth:`load`."""

    def __init__(self, manifest: Manifest, backend: str, device: str, device_name: str,
                 state: _State, providers: tuple[str, ...] = (),
                 trt_shared: _TrtShared | None = None) -> None:
        self.manifest = manifest
        self.backend = backend
        self.device = device
        self.device_name = device_name
        self.providers = providers
        self._state = state
        self._trt = trt_shared
        self._fail_lock = threading.Lock()
        healthy = [s for s in manifest.subnet_ids if s in state.slots]
        self._active: _Slot = state.slots[healthy[-1]]   # the largest until told otherwise

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, manifest_dir: str | os.PathLike[str], backend: str = "auto",
             device: str | None = None, on_stale: str = "error", *, threads: int = 0,
             verify: bool = True, max_batch: int | None = None) -> SubnetRuntime:
        """Verify the manifest and preload every subnet.

        backend: ``auto`` (TensorRT when importable and engines for this GPU/TensorRT are
        recorded, else ONNX Runtime), ``tensorrt`` or ``onnxruntime``.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: a CUDA device when one is present).
        on_stale: what to do with engines built for another GPU or TensorRT version:
        ``error`` (ManifestError) or ``fallback`` (warn, run ONNX Runtime instead).
        threads: ONNX Runtime intra-op threads per session (0 = its default).
        """
        if backend not in BACKENDS:
            raise ExportUsageError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if on_stale not in ON_STALE:
            raise ExportUsageError(f"on_stale must be 'error' or 'fallback'; got {on_stale!r}")
        manifest = load_manifest(manifest_dir, verify_files=verify)
        profile = manifest.profile
        mb = int(max_batch or profile.get("max_batch", 1))
        chosen = cls._choose_backend(manifest, backend, device, on_stale)
        if chosen == "tensorrt":
            return cls._load_tensorrt(manifest, device, mb)
        return cls._load_onnxruntime(manifest, device, threads, mb)

    @staticmethod
    def _choose_backend(manifest: Manifest, backend: str, device: str | None,
                        on_stale: str) -> str:
        if backend == "onnxruntime" or device == "cpu":
            if backend == "tensorrt":
                raise ExportUsageError("the TensorRT backend runs on a GPU; drop device='cpu'")
            return "onnxruntime"
        with_engines = [s for s in manifest.subnets if s["engines"]]
        if backend == "auto" and not with_engines:
            return "onnxruntime"
        if backend == "tensorrt" and len(with_engines) < len(manifest.subnets):
            missing = [s["id"] for s in manifest.subnets if not s["engines"]]
            return _stale_or_fallback(on_stale, f"no TensorRT engine recorded for "
                                      f"{', '.join(missing)}; run `mutualnet build-engines "
                                      f"{manifest.root}` on this device")
        try:
            env = tensorrt_environment(_device_index(device))
        except BackendUnavailableError as e:
            if backend == "auto":
                return "onnxruntime"
            if on_stale == "fallback":
                warnings.warn(f"{e}; falling back to ONNX Runtime", stacklevel=3)
                return "onnxruntime"
            raise
        for sn in manifest.subnets:
            reasons = [check_engine_record(rec, env) for rec in sn["engines"]]
            if all(r is not None for r in reasons):
                why = reasons[0] if reasons else "no engine recorded"
                return _stale_or_fallback(
                    on_stale, f"stale TensorRT engine for {sn['id']} ({why}); rebuild with "
                    f"`mutualnet build-engines {manifest.root}` on this device, or load with "
                    "on_stale='fallback' to run ONNX Runtime")
        return "tensorrt"

    @classmethod
    def _load_onnxruntime(cls, manifest: Manifest, device: str | None, threads: int,
                          max_batch: int) -> SubnetRuntime:
        providers = _ort_providers(manifest.profile, device)
        state = _State()
        used: tuple[str, ...] = ()
        for sn in manifest.subnets:
            info = _info(sn, "onnxruntime", "", dict(manifest.profile, max_batch=max_batch))
            try:
                runner = _OrtRunner(manifest.file(sn["files"]["onnx"]["path"]), providers,
                                    threads, max_batch)
                used = tuple(runner.providers)
                state.slots[sn["id"]] = _Slot(info, runner)
            except Exception as e:  # noqa: BLE001 - one bad subnet must not stop the others
                state.failed[sn["id"]] = f"failed to load: {e}"
                warnings.warn(f"subnet {sn['id']} failed to load ({e}); serving from the "
                              "others", stacklevel=3)
        _require_some(state, manifest)
        dev = "cuda" if any("CUDA" in p for p in used) else "cpu"
        name = _cpu_name() if dev == "cpu" else _safe_gpu_name()
        rt = cls(manifest, "onnxruntime", dev, name, state, providers=used)
        rt._refresh_latency()
        return rt

    @classmethod
    def _load_tensorrt(cls, manifest: Manifest, device: str | None,
                       max_batch: int) -> SubnetRuntime:
        idx = _device_index(device)
        env = tensorrt_environment(idx)
        shared = _TrtShared(idx)
        state = _State()
        num_classes = int(manifest.model["num_classes"])
        runners: list[_TrtRunner] = []
        for sn in manifest.subnets:
            rec = next(r for r in reversed(sn["engines"])      # the newest matching build
                       if check_engine_record(r, env) is None)
            mb = min(max_batch, int(rec.get("max_batch", max_batch)))
            try:
                runner = _TrtRunner(shared, manifest.file(rec["path"]), int(sn["resolution"]),
                                    num_classes, mb)
                runners.append(runner)
                batch = {"min_batch": min(int(rec.get("min_batch", 1)), mb),
                         "opt_batch": min(int(rec.get("opt_batch", 1)), mb), "max_batch": mb}
                state.slots[sn["id"]] = _Slot(_info(sn, "tensorrt", env.gpu_name, batch), runner)
            except Exception as e:  # noqa: BLE001
                state.failed[sn["id"]] = f"failed to load: {e}"
                warnings.warn(f"engine of {sn['id']} failed to load ({e}); serving from the "
                              "others", stacklevel=3)
        _require_some(state, manifest)
        shared.activation_bytes = max(r.device_memory for r in runners)
        shared.unshared_bytes = sum(r.device_memory for r in runners)
        shared.activation_ptr = shared.malloc(shared.activation_bytes)
        for r in runners:
            r.attach(shared.activation_ptr, shared.activation_bytes)
        rt = cls(manifest, "tensorrt", f"cuda:{idx}", env.gpu_name, state,
                 trt_shared=shared)
        rt._refresh_latency()
        return rt

    def _refresh_latency(self) -> None:
        for sid, slot in self._state.slots.items():
            lat = _latency_for(self.manifest.subnet(sid), self.device_name, self.backend)
            slot.info = _replace_latency(slot.info, lat)

    # ------------------------------------------------------------------ introspection
    @property
    def subnets(self) -> list[SubnetInfo]:
        """Healthy subnets, MACs ascending."""
        slots = self._state.slots
        return [slots[s].info for s in self.manifest.subnet_ids if s in slots]

    @property
    def failed(self) -> dict[str, str]:
        """Subnets that failed to load or run, with the reason."""
        return dict(self._state.failed)

    @property
    def current(self) -> str:
        """Id of the active subnet."""
        return self._active.info.id

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    def memory_report(self) -> dict[str, int]:
        """TensorRT: shared activation bytes vs what separate buffers would take."""
        if self._trt is None:
            return {}
        return {"activation_shared_bytes": self._trt.activation_bytes,
                "activation_unshared_bytes": self._trt.unshared_bytes}

    # ------------------------------------------------------------------ switching
    def select(self, subnet_id: str) -> None:
        """Make ``subnet_id`` active for the next requests (a reference swap)."""
        slot = self._state.slots.get(subnet_id)
        if slot is None:
            if subnet_id in self._state.failed:
                raise ExportError(f"subnet {subnet_id} is unavailable: "
                                  f"{self._state.failed[subnet_id]}")
            raise ExportUsageError(f"no subnet {subnet_id!r}; available: "
                                   f"{', '.join(s.id for s in self.subnets)}")
        self._active = slot

    def choose_budget(self, *, mflops: float | None = None,
                      latency_ms: float | None = None) -> BudgetChoice:
        """The most accurate healthy subnet within a budget, without selecting it."""
        if (mflops is None) == (latency_ms is None):
            raise ExportUsageError("give exactly one budget: mflops=... or latency_ms=...")
        subnets = self.subnets
        if mflops is not None:
            if not mflops > 0:
                raise ExportUsageError(f"mflops budget must be positive, got {mflops}")
            cost = {s.id: s.mflops for s in subnets}
            budget, unit = float(mflops), "M MACs"
        else:
            assert latency_ms is not None
            if not latency_ms > 0:
                raise ExportUsageError(f"latency budget must be positive, got {latency_ms}")
            missing = [s.id for s in subnets if s.latency_ms is None]
            if missing:
                elsewhere = sorted({k for sn in self.manifest.subnets for k in sn["latency"]})
                seen = f" (measured only as: {'; '.join(elsewhere)})" if elsewhere else ""
                raise ManifestError(
                    f"no {self.backend} latency measured on {self.device_name} for "
                    f"{', '.join(missing)}{seen}; run `mutualnet profile {self.manifest.root} "
                    f"--backend {self.backend}` on this device first")
            cost = {s.id: float(s.latency_ms or 0.0) for s in subnets}
            budget, unit = float(latency_ms), "ms (p90, batch 1)"
        fitting = [s for s in subnets if cost[s.id] <= budget]
        if not fitting:
            smallest = min(subnets, key=lambda s: (cost[s.id], s.macs))
            return BudgetChoice(smallest.id, False,
                                f"budget {budget:g} {unit} is below the smallest subnet "
                                f"{smallest.id} ({cost[smallest.id]:.4g} {unit}); using it")
        best = max(fitting, key=lambda s: (s.top1 if s.top1 is not None else -1.0, s.macs))
        return BudgetChoice(best.id, True, f"{best.id} ({cost[best.id]:.4g} {unit}) is the "
                            f"most accurate within {budget:g} {unit}")

    def select_budget(self, *, mflops: float | None = None,
                      latency_ms: float | None = None) -> BudgetChoice:
        """Select the most accurate subnet within the budget (MACs in millions, or p90 ms).

        A budget below the smallest subnet selects the smallest and warns; no exception.
        """
        choice = self.choose_budget(mflops=mflops, latency_ms=latency_ms)
        if not choice.fits:
            warnings.warn(choice.message, stacklevel=2)
        self.select(choice.subnet_id)
        return choice

    def controller(self, target_ms: float, **kwargs: Any) -> LatencyController:
        """A :class:`LatencyController` holding ``target_ms`` on this runtime."""
        return LatencyController(self, target_ms, **kwargs)

    # ------------------------------------------------------------------ inference
    def preprocess(self, images: np.ndarray | Sequence[np.ndarray],
                   resolution: int) -> np.ndarray:
        return preprocess_images(images, self.manifest.preprocessing, resolution)

    def infer(self, images: np.ndarray | Sequence[np.ndarray], *,
              subnet: str | None = None) -> InferResult:
        """Classify uint8 RGB images (NHWC array or list, any size) with the active subnet."""
        slot = self._slot_for(subnet)
        t0 = time.perf_counter()
        x = self.preprocess(images, slot.info.resolution)
        return self._run(slot, x, t0)

    def infer_tensor(self, x: np.ndarray, *, subnet: str | None = None) -> InferResult:
        """Run an already preprocessed float NCHW batch at the active subnet's resolution."""
        slot = self._slot_for(subnet)
        t0 = time.perf_counter()
        x = np.asarray(x, dtype=np.float32)
        r = slot.info.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, r, r):
            raise ExportUsageError(f"subnet {slot.info.id} takes float NCHW [N, 3, {r}, {r}]; "
                                   f"got shape {tuple(x.shape)} (use infer() for raw images)")
        return self._run(slot, x, t0)

    def _slot_for(self, subnet: str | None) -> _Slot:
        if subnet is None:
            return self._active          # read once: this request finishes on it
        slot = self._state.slots.get(subnet)
        if slot is None:
            self.select(subnet)          # raises the right error
            raise ExportUsageError(f"no subnet {subnet!r}")  # pragma: no cover
        return slot

    def _run(self, slot: _Slot, x: np.ndarray, t0: float) -> InferResult:
        try:
            logits = self._run_batched(slot, x)
        except Exception as e:  # noqa: BLE001 - keep serving from the other subnets
            fallback = self._mark_failed(slot, e)
            if x.shape[2] != fallback.info.resolution:
                raise ExportError(f"subnet {slot.info.id} failed ({e}); switched to "
                                  f"{fallback.info.id}, retry the request") from e
            logits = self._run_batched(fallback, x)
            slot = fallback
        return InferResult(logits, slot.info.id, (time.perf_counter() - t0) * 1e3)

    @staticmethod
    def _run_batched(slot: _Slot, x: np.ndarray) -> np.ndarray:
        mb = max(1, slot.runner.max_batch)
        if x.shape[0] <= mb:
            return slot.runner.run(x)
        return np.concatenate([slot.runner.run(x[i:i + mb]) for i in range(0, len(x), mb)])

    def _mark_failed(self, slot: _Slot, error: Exception) -> _Slot:
        with self._fail_lock:
            sid = slot.info.id
            if sid in self._state.slots:
                slots = dict(self._state.slots)   # copy-on-write: readers never see a
                del slots[sid]                    # dict change size under them
                self._state.slots = slots
                self._state.failed = {**self._state.failed, sid: f"failed to run: {error}"}
                warnings.warn(f"subnet {sid} failed to run ({error}); serving from the "
                              "others", stacklevel=4)
            if not self._state.slots:
                raise ExportError(f"every subnet has failed; last error: {error}")
            if self._active is slot or self._active.info.id not in self._state.slots:
                self._active = _nearest(self._state.slots, slot.info)
            return _nearest(self._state.slots, slot.info, same_resolution=True)

    def close(self) -> None:
        for slot in self._state.slots.values():
            slot.runner.close()
        if self._trt is not None:
            self._trt.close()

    def __enter__(self) -> SubnetRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _nearest(slots: dict[str, _Slot], info: SubnetInfo, *, same_resolution: bool = False) -> _Slot:
    cands = list(slots.values())
    if same_resolution:
        cands = [s for s in cands if s.info.resolution == info.resolution] or cands
    return min(cands, key=lambda s: (abs(s.info.macs - info.macs), s.info.macs))


def resolve_backend(manifest_dir: str | os.PathLike[str], backend: str = "auto",
                    device: str | None = None, on_stale: str = "error") -> str:
    """The backend :meth:`SubnetRuntime.load` would pick with these arguments, without loading
    anything: ``tensorrt`` or ``onnxruntime``. Stale or missing engines raise ManifestError
    with ``on_stale="error"`` and warn + give ``onnxruntime`` with ``"fallback"``."""
    if backend not in BACKENDS:
        raise ExportUsageError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if on_stale not in ON_STALE:
        raise ExportUsageError(f"on_stale must be 'error' or 'fallback'; got {on_stale!r}")
    manifest = load_manifest(manifest_dir, verify_files=False)
    return SubnetRuntime._choose_backend(manifest, backend, device, on_stale)


def _stale_or_fallback(on_stale: str, message: str) -> str:
    if on_stale == "fallback":
        warnings.warn(f"{message}; falling back to ONNX Runtime", stacklevel=4)
        return "onnxruntime"
    raise ManifestError(message)


def _device_index(device: str | None) -> int:
    if device is None or device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ExportUsageError(f"device {device!r} is not understood; use cpu, cuda or cuda:N")


def _info(sn: dict[str, Any], backend: str, device_name: str,
          batch: dict[str, Any]) -> SubnetInfo:
    sizes = sorted({int(batch.get(k, 1)) for k in ("min_batch", "opt_batch", "max_batch")})
    return SubnetInfo(id=sn["id"], width=float(sn["width"]), resolution=int(sn["resolution"]),
                      macs=int(sn["macs"]), params=int(sn["params"]),
                      top1=_best_top1(sn, backend),
                      latency_ms=_latency_for(sn, device_name, backend),
                      batch_sizes=tuple(sizes))


def _replace_latency(info: SubnetInfo, latency: float | None) -> SubnetInfo:
    from dataclasses import replace

    return replace(info, latency_ms=latency)


def _require_some(state: _State, manifest: Manifest) -> None:
    if not state.slots:
        reasons = "; ".join(f"{k}: {v}" for k, v in state.failed.items())
        raise ExportError(f"no subnet of {manifest.path} could be loaded ({reasons})")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    import platform

    return f"CPU {platform.machine()}"


def _safe_gpu_name() -> str:
    try:
        return _gpu_identity(0)[0]
    except BackendUnavailableError:
        return "CUDA GPU"


# ============================================================================ controller

class LatencyController:
    """Moves between subnets to hold a latency target under changing load.

    Call :meth:`observe` with each request's latency (or use :meth:`infer`, which does it).
    Over a sliding window it compares the ``quantile`` latency with the target: above it,
    it steps down to the next smaller subnet; below ``headroom`` x target, and when the next
    larger subnet's expected latency (its measured latency scaled by the current load, or its
    MAC ratio when unmeasured) still fits, it steps up. After a switch it waits ``cooldown``
    requests before judging again.
    """

    def __init__(self, runtime: SubnetRuntime, target_ms: float, *, window: int = 20,
                 quantile: float = 0.9, headroom: float = 0.7, cooldown: int = 10) -> None:
        if not target_ms > 0:
            raise ExportUsageError(f"latency target must be positive, got {target_ms}")
        if window < 1 or cooldown < 0 or not 0 < quantile <= 1 or not 0 < headroom < 1:
            raise ExportUsageError("controller needs window >= 1, cooldown >= 0, "
                                   "0 < quantile <= 1, 0 < headroom < 1")
        self.runtime = runtime
        self.target_ms = float(target_ms)
        self.quantile = quantile
        self.headroom = headroom
        self.cooldown = cooldown
        self._window: deque[float] = deque(maxlen=window)
        self._since_switch = 0
        self._lock = threading.Lock()
        self.switches: list[tuple[str, str]] = []

    def infer(self, images: np.ndarray | Sequence[np.ndarray]) -> InferResult:
        result = self.runtime.infer(images)
        self.observe(result.latency_ms, subnet_id=result.subnet_id)
        return result

    def observe(self, latency_ms: float, *, subnet_id: str | None = None) -> str | None:
        """Record one latency; returns the newly selected subnet id when it switched."""
        with self._lock:
            if subnet_id is not None and subnet_id != self.runtime.current:
                return None      # a request that started before the last switch
            self._window.append(float(latency_ms))
            self._since_switch += 1
            if self._since_switch < max(self.cooldown, 1) or \
                    len(self._window) < self._window.maxlen:  # type: ignore[operator]
                return None
            observed = float(np.quantile(np.asarray(self._window), self.quantile))
            subnets = self.runtime.subnets
            ids = [s.id for s in subnets]
            i = ids.index(self.runtime.current) if self.runtime.current in ids else 0
            target: str | None = None
            if observed > self.target_ms and i > 0:
                target = ids[i - 1]
            elif observed < self.headroom * self.target_ms and i + 1 < len(ids):
                cur, nxt = subnets[i], subnets[i + 1]
                if cur.latency_ms and nxt.latency_ms:
                    expected = observed * nxt.latency_ms / cur.latency_ms
                else:
                    expected = observed * max(nxt.macs, 1) / max(cur.macs, 1)
                if expected <= self.target_ms:
                    target = ids[i + 1]
            if target is None:
                return None
            self.switches.append((self.runtime.current, target))
            self.runtime.select(target)
            self._window.clear()
            self._since_switch = 0
            return target
