"""Backends: one :class:`Runner` protocol for everything that turns a batch into logits.

Export parity, engine parity, ``SubnetRuntime`` and ``profile`` all run subnets through a
``Runner``: ``run(x)`` maps a float32 NCHW batch (numpy) to float32 logits ``[N, classes]``,
``max_batch`` is the largest batch one call takes (0: no limit; :func:`run_batched` splits
larger ones) and ``close()`` frees what the runner holds.

- :mod:`export.backends.onnxruntime`: ONNX files in ONNX Runtime (one runner for parity and
  the runtime; CPU fallback is a parameter: parity refuses it, the runtime allows it);
- :mod:`export.backends.tensorrt`: TensorRT engines (runner, builder, trtexec script).

The PyTorch runner of export parity lives torch-side (:mod:`export.torch_runner`). Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ExportUsageError

__all__ = ["Runner", "default_threads", "device_index", "make_runner", "run_batched"]


class Runner(Protocol):
    """Anything that maps a float32 NCHW batch to float32 logits."""

    name: str
    max_batch: int

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def run_batched(runner: Runner, x: np.ndarray) -> np.ndarray:
    """``runner.run`` over ``x`` in chunks of at most ``runner.max_batch`` (0: one call)."""
    mb = int(runner.max_batch)
    if mb <= 0 or len(x) <= mb:
        return runner.run(x)
    return np.concatenate([runner.run(x[i:i + mb]) for i in range(0, len(x), mb)])


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def device_index(device: str | None) -> int:
    """N of ``cuda:N`` (0 for ``cuda`` or None); usage error for anything else."""
    if device is None or device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ExportUsageError(f"device {device!r} is not understood; use cpu, cuda or cuda:N")


def make_runner(backend: str, path: str | os.PathLike[str], **options: Any) -> Runner:
    """A runner for ``backend`` over the artifact at ``path``: ``onnxruntime``,
    ``onnxruntime-cuda``, ``onnxruntime-tensorrt`` (an ONNX file) or ``tensorrt`` (an
    engine file; imports tensorrt only now, BackendUnavailableError with a hint without it)."""
    from .onnxruntime import ORT_BACKENDS, OrtRunner

    if backend == "tensorrt":
        from .tensorrt import EngineRunner

        return EngineRunner(Path(path), **options)
    if backend in ORT_BACKENDS:
        return OrtRunner.for_backend(backend, Path(path), **options)
    raise ExportUsageError(f"unknown backend {backend!r}; use one of "
                           f"{', '.join(sorted({*ORT_BACKENDS, 'tensorrt'}))}")
