"""The ONNX Runtime backend: one runner for export parity and the runtime.

Providers come from the deploy profile and the device (:func:`providers_for`). CPU fallback
is explicit: parity builds runners with ``allow_cpu_fallback=False`` (a CUDA provider that
silently became the CPU would compare the wrong thing), the runtime with ``True`` (keep
serving). Intra-op threads default to the cores this process may use. Torch-free.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ExportUsageError
from . import default_threads, device_index

ORT_HINT = ("install ONNX Runtime: `pip install onnxruntime` (CPU) or `pip install "
            "onnxruntime-gpu` (CUDA); on Jetson use the wheel for your JetPack")

#: parity backend name -> ONNX Runtime execution provider
ORT_BACKENDS: dict[str, str] = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}

#: Provider options for parity runs: fp32 must mean fp32 (no TF32 in the CUDA provider).
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}

__all__ = ["ORT_BACKENDS", "ORT_HINT", "OrtRunner", "available_backends", "import_ort",
           "providers_for"]


def import_ort() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise BackendUnavailableError(f"onnxruntime is not installed; {ORT_HINT}") from e


def has_nvidia_device() -> bool:
    """Whether this machine shows an NVIDIA GPU (desktop driver or Jetson)."""
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvhost-ctrl", "/dev/nvgpu"))


def providers_for(profile_providers: Sequence[str], device: str | None) -> list[Any]:
    """ONNX Runtime providers for ``device`` (None: CUDA when a GPU and the CUDA provider
    exist, else CPU). ``cuda``/``cuda:N`` without a usable CUDA provider is a usage error
    (exit 2), as ``train --device cuda`` is; the CPU provider is always last (fallback)."""
    ort = import_ort()
    available = set(ort.get_available_providers())
    if device is None:
        device = "cuda" if has_nvidia_device() and "CUDAExecutionProvider" in available \
            else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    index = device_index(device)
    if "CUDAExecutionProvider" not in available or not has_nvidia_device():
        raise ExportUsageError(f"--device {device}: no CUDA device or no CUDA provider in this "
                               f"onnxruntime; use --device cpu ({ORT_HINT})")
    wanted = [p for p in profile_providers if p in available
              and p not in ("TensorrtExecutionProvider", "CPUExecutionProvider")] \
        or ["CUDAExecutionProvider"]
    out: list[Any] = [(p, {"device_id": index}) if p == "CUDAExecutionProvider" else p
                      for p in wanted]
    return [*out, "CPUExecutionProvider"]


def available_backends(providers: Sequence[str] | None = None) -> list[str]:
    """Parity backends usable here: CPU always, CUDA/TensorRT providers only with a GPU.

    ``providers`` restricts the list to those execution providers (e.g. a profile's)."""
    try:
        ort = import_ort()
    except BackendUnavailableError:
        return []
    have = set(ort.get_available_providers())
    gpu = has_nvidia_device()
    out = []
    for backend, provider in ORT_BACKENDS.items():
        if provider not in have or (provider != "CPUExecutionProvider" and not gpu):
            continue
        if providers is not None and provider not in providers and backend != "onnxruntime":
            continue
        out.append(backend)
    return out


def _provider_name(p: Any) -> str:
    return str(p[0] if isinstance(p, tuple) else p)


class OrtRunner:
    """One ONNX Runtime session (safe to run from several threads).

    providers: ONNX Runtime's list (names or (name, options)); the first is the one wanted.
    allow_cpu_fallback: False refuses a session whose first provider is not the one asked
    for (parity); True accepts it (the runtime). threads: intra-op threads (None or 0: the
    cores this process may use). spin: let idle worker threads busy-wait (off for parity,
    which often runs on a shared CPU)."""

    def __init__(self, path: str | os.PathLike[str], *,
                 providers: Sequence[Any] = ("CPUExecutionProvider",),
                 threads: int | None = None, allow_cpu_fallback: bool = False,
                 max_batch: int = 0, name: str = "onnxruntime", spin: bool = True) -> None:
        ort = import_ort()
        wanted = _provider_name(providers[0])
        if wanted not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"ONNX Runtime has no {wanted} here (available: "
                f"{', '.join(ort.get_available_providers())}); use another backend")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = int(threads or default_threads())
        opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=list(providers))
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendUnavailableError(f"cannot start ONNX Runtime with {wanted} on "
                                          f"{path}: {str(e).splitlines()[0]}") from None
        self.providers = tuple(self.session.get_providers())
        if not allow_cpu_fallback and (not self.providers or self.providers[0] != wanted):
            raise BackendUnavailableError(f"ONNX Runtime fell back to {list(self.providers)} "
                                          f"instead of {wanted} for {path} (no usable device?)")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.max_batch = int(max_batch)
        self.name = name

    @classmethod
    def for_backend(cls, backend: str, path: Path, *,
                    provider_options: Mapping[str, str] | None = None,
                    **options: Any) -> OrtRunner:
        """The parity runner of a named backend: one provider, no CPU fallback, no spinning."""
        provider = ORT_BACKENDS[backend]
        opts = {**PROVIDER_OPTIONS.get(provider, {}), **(provider_options or {})}
        options.setdefault("spin", False)
        return cls(path, providers=[(provider, opts)], allow_cpu_fallback=False, name=backend,
                   **options)

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name],
                               {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.session = None
