"""A fake ``tensorrt`` + cuda-python runtime for the TensorRT code paths on machines without
either: enough of the real Python APIs (TensorRT 10/11 ``IRuntime``, ``ICudaEngine``,
``IExecutionContext``, the builder, cuda-python's ``(err, value)`` tuples) for
``export.backends.tensorrt`` to load, run and build. Engine files are tiny JSON documents
``{"resolution", "classes", "marker", "max_batch"}``; an engine's logits put 1000 on its
marker class. Calls are recorded so tests can check what the code asked for."""

from __future__ import annotations

import ctypes
import json
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np


def engine_bytes(resolution: int, classes: int, marker: int, max_batch: int = 8) -> bytes:
    return json.dumps({"resolution": resolution, "classes": classes, "marker": marker,
                       "max_batch": max_batch}).encode()


class FakeCuda:
    """cuda.bindings.runtime: device memory as bytearrays keyed by fake pointers."""

    class cudaMemcpyKind:  # noqa: N801 - the real name
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, gpu_name: str = "FakeGPU", cc: tuple[int, int] = (8, 7)) -> None:
        self.memory: dict[int, bytearray] = {}
        self.next_ptr = 1 << 20
        self.set_device: list[tuple[int, int]] = []      # (thread id, device)
        self.gpu_name, self.cc = gpu_name, cc

    def cudaSetDevice(self, index: int) -> tuple[int]:  # noqa: N802
        self.set_device.append((threading.get_ident(), index))
        return (0,)

    def cudaGetDeviceProperties(self, index: int) -> tuple[int, Any]:  # noqa: N802
        return 0, types.SimpleNamespace(name=self.gpu_name.encode(), major=self.cc[0],
                                        minor=self.cc[1])

    def cudaStreamCreate(self) -> tuple[int, int]:  # noqa: N802
        return 0, 7

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaMalloc(self, n: int) -> tuple[int, int]:  # noqa: N802
        ptr = self.next_ptr
        self.next_ptr += n + 256
        self.memory[ptr] = bytearray(n)
        return 0, ptr

    def cudaFree(self, ptr: int) -> tuple[int]:  # noqa: N802
        self.memory.pop(ptr, None)
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int,  # noqa: N802
                        stream: int) -> tuple[int]:
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.memory[dst][:n] = ctypes.string_at(src, n)
        else:
            ctypes.memmove(dst, bytes(self.memory[src][:n]), n)
        return (0,)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.addresses, self.shape = engine, {}, None
        self.device_memory: tuple[int, int] | None = None

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.device_memory = (ptr, size)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape = shape
        return shape[0] <= self.engine.spec["max_batch"]

    def execute_async_v3(self, stream: int) -> bool:
        cuda, spec = self.engine.trt.cuda, self.engine.spec
        n, classes = self.shape[0], spec["classes"]
        logits = np.zeros((n, classes), np.float32)
        logits[:, spec["marker"]] = 1000.0
        cuda.memory[self.addresses["logits"]][:logits.nbytes] = logits.tobytes()
        return self.device_memory is not None


class _Engine:
    num_io_tensors = 2
    device_memory_size_v2 = 4096

    def __init__(self, trt: FakeTensorRT, spec: dict[str, Any]) -> None:
        self.trt, self.spec = trt, spec

    def get_tensor_name(self, i: int) -> str:
        return ("input", "logits")[i]

    def get_tensor_mode(self, name: str) -> int:
        return self.trt.TensorIOMode.INPUT if name == "input" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        r = self.spec["resolution"]
        return (-1, 3, r, r) if name == "input" else (-1, self.spec["classes"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        r = self.spec["resolution"]
        return [(1, 3, r, r), (1, 3, r, r), (self.spec["max_batch"], 3, r, r)]

    def create_execution_context(self, strategy: Any) -> _Context:
        return _Context(self)


class _Runtime:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt, self.DLA_core = trt, 0

    def deserialize_cuda_engine(self, data: bytes) -> _Engine:
        self.trt.deserialized_on_core.append(self.DLA_core)
        return _Engine(self.trt, json.loads(data))


class FakeTensorRT(types.ModuleType):
    """The ``tensorrt`` module (runtime side)."""

    class Logger:
        WARNING = ERROR = 0

        def __init__(self, level: int = 0) -> None:
            pass

    class TensorIOMode:
        INPUT, OUTPUT = 1, 2

    class ExecutionContextAllocationStrategy:
        USER_MANAGED = 2

    def __init__(self, cuda: FakeCuda, version: str = "10.3.0") -> None:
        super().__init__("tensorrt")
        self.cuda, self.__version__ = cuda, version
        self.deserialized_on_core: list[int] = []

    def Runtime(self, logger: Any) -> _Runtime:  # noqa: N802
        return _Runtime(self)

    @staticmethod
    def nptype(dtype: str) -> type:
        return np.float32


def install(monkeypatch: Any, version: str = "10.3.0") -> FakeTensorRT:
    """Make ``import tensorrt`` and ``import cuda.bindings.runtime`` give the fakes."""
    cuda = FakeCuda()
    trt = FakeTensorRT(cuda, version)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    monkeypatch.setitem(__import__("sys").modules, "cuda.bindings.runtime", cuda)
    return trt


def record_engines(root: Path, version: str = "10.3.0", dla_core: int | None = None) -> None:
    """Write a fake engine per subnet of the export at ``root`` and record it."""
    from export.manifest import file_entry, update_manifest

    def mutate(doc: dict) -> None:
        for marker, sn in enumerate(doc["subnets"]):
            p = root / "engines" / "fake" / f"{sn['id']}.plan"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(engine_bytes(sn["resolution"], 10, marker))
            sn["engines"] = [{**file_entry(root, p), "tensorrt_version": version,
                              "gpu_name": "FakeGPU", "compute_capability": "8.7",
                              "precision": "fp16", "dla_core": dla_core, "max_batch": 8,
                              "built": "2026-01-01T00:00:00Z"}]

    update_manifest(root, mutate)
