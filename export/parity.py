"""Parity: run one batch stream through several backends and compare their logits.

Runners turn a float32 NCHW batch (numpy) into logits (numpy):

- :class:`TorchRunner` - a PyTorch module (the supernet inside ``subnet(width)``, or the
  sliced plain model);
- :class:`OrtRunner` - an ONNX file in ONNX Runtime with a chosen execution provider;
- ``tensorrt`` - a TensorRT engine file: :mod:`export.tensorrt_build` registers its
  :class:`~export.tensorrt_build.EngineRunner` with :func:`register_runner` (imported on the
  first ``make_runner("tensorrt", engine_path)``, which raises
  :class:`BackendUnavailableError` with an install hint where tensorrt is missing).

:func:`compare` turns reference and candidate logits (and labels, when known) into a
:class:`ParityResult`: max/mean abs diff, top-1 agreement, top-1 accuracy of both, whether
the gate passed and the elementwise tolerance that would have passed. FP32 candidates are
gated elementwise (``max_abs_diff``); FP16/INT8 ones on top-1 agreement and accuracy drop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import BackendUnavailableError, ExportUsageError, ParityError

#: backend name -> ONNX Runtime execution provider
ORT_BACKENDS: dict[str, str] = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}

#: Provider options for parity runs: fp32 must mean fp32 (no TF32 in the CUDA provider).
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}


class Runner(Protocol):
    """Anything that maps a float32 NCHW batch to float32 logits."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------- runners
class TorchRunner:
    """Run a PyTorch module (eval mode, no grad); ``width`` runs a supernet at that width."""

    def __init__(self, module: Any, *, width: float | None = None, device: str = "cpu",
                 name: str = "pytorch") -> None:
        self.module = module.eval()
        self.width = width
        self.device = device
        self.name = name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import contextlib

        import torch

        ctx = self.module.subnet(self.width) if self.width is not None else \
            contextlib.nullcontext()
        with torch.no_grad(), ctx:
            y = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return np.asarray(y.float().cpu().numpy())


class OrtRunner:
    """An ONNX Runtime session on one execution provider (no silent CPU fallback)."""

    def __init__(self, path: str | os.PathLike[str], *, provider: str = "CPUExecutionProvider",
                 threads: int | None = None, name: str | None = None,
                 provider_options: Mapping[str, str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError("onnxruntime is missing; pip install onnxruntime "
                                          "(or onnxruntime-gpu)") from None
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"ONNX Runtime has no {provider} here (available: "
                f"{', '.join(ort.get_available_providers())}); use another backend")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # no busy-waiting worker threads: parity often runs on a shared, busy CPU
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            options = dict(PROVIDER_OPTIONS.get(provider, {}))
            options.update(provider_options or {})
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=[(provider, options)])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendUnavailableError(f"cannot start ONNX Runtime with {provider} on "
                                          f"{path}: {str(e).splitlines()[0]}") from None
        used = self.session.get_providers()
        if not used or used[0] != provider:
            raise BackendUnavailableError(f"ONNX Runtime fell back to {used} instead of "
                                          f"{provider} for {path} (no usable device?)")
        self.input_name = self.session.get_inputs()[0].name
        self.provider = provider
        self.name = name or next((k for k, v in ORT_BACKENDS.items() if v == provider),
                                 provider)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return np.asarray(out[0], dtype=np.float32)


RunnerFactory = Callable[..., Runner]
_FACTORIES: dict[str, RunnerFactory] = {}


def register_runner(backend: str, factory: RunnerFactory) -> None:
    """Make ``make_runner(backend, path, **options)`` call ``factory(path, **options)``.

    The TensorRT side registers ``"tensorrt"`` (engine file -> runner) this way.
    """
    _FACTORIES[backend] = factory


def make_runner(backend: str, path: str | os.PathLike[str], **options: Any) -> Runner:
    """A runner for ``backend`` over the artifact at ``path`` (ONNX file or engine)."""
    if backend == "tensorrt" and backend not in _FACTORIES:
        # registers its engine runner; imports neither tensorrt nor torch until one is made
        from . import tensorrt_build  # noqa: F401
    if backend in _FACTORIES:
        return _FACTORIES[backend](path, **options)
    if backend in ORT_BACKENDS:
        return OrtRunner(path, provider=ORT_BACKENDS[backend], name=backend, **options)
    raise ExportUsageError(f"unknown backend {backend!r}; use one of "
                           f"{', '.join(sorted({*ORT_BACKENDS, 'tensorrt', *_FACTORIES}))}")


def available_backends(providers: Sequence[str] | None = None) -> list[str]:
    """ORT backends usable here: CPU always, CUDA/TensorRT providers only with a CUDA device.

    ``providers`` restricts the list to those execution providers (e.g. a profile's).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    have = set(ort.get_available_providers())
    gpu = _cuda_device_present()
    out = []
    for backend, provider in ORT_BACKENDS.items():
        if provider not in have or (provider != "CPUExecutionProvider" and not gpu):
            continue
        if providers is not None and provider not in providers and backend != "onnxruntime":
            continue
        out.append(backend)
    return out


def _cuda_device_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - the export side always has torch
        return False


# --------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class ParityGate:
    """When a candidate passes: elementwise for fp32, agreement/accuracy otherwise."""

    precision: str = "fp32"
    max_abs_diff: float = 1e-4
    min_top1_agreement: float = 0.99
    max_accuracy_drop_pt: float = 0.5

    @classmethod
    def from_profile(cls, profile: Any, *, precision: str | None = None) -> ParityGate:
        """The gate of a :class:`export.profiles.DeployProfile` (``precision`` overrides)."""
        return cls(precision or profile.precision, float(profile.fp32_max_abs_diff),
                   float(profile.min_top1_agreement), float(profile.max_accuracy_drop_pt))


@dataclass(frozen=True)
class ParityResult:
    """How a candidate backend's logits compare with the reference's on the same images."""

    backend: str
    reference: str
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float  # fraction of images with the same arg-max, 0..1
    reference_top1: float | None  # percent; None without labels
    top1: float | None
    passed: bool
    gate: str  # human-readable rule that decided ``passed``
    tolerance_that_passes: float  # smallest elementwise tolerance this candidate meets

    @property
    def accuracy_drop_pt(self) -> float | None:
        if self.reference_top1 is None or self.top1 is None:
            return None
        return self.reference_top1 - self.top1

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's per-backend parity object."""
        drop = self.accuracy_drop_pt
        return {"max_abs_diff": _finite(self.max_abs_diff),
                "top1_agreement": round(self.top1_agreement, 6),
                "accuracy_drop_pt": None if drop is None else round(drop, 4),
                "passed": self.passed,
                "tolerance_that_passes": _finite(self.tolerance_that_passes),
                "images": self.images, "reference": self.reference, "gate": self.gate}

    def to_dict(self) -> dict[str, Any]:
        d = self.manifest_entry()
        d.update(backend=self.backend, mean_abs_diff=_finite(self.mean_abs_diff),
                 reference_top1=self.reference_top1, top1=self.top1)
        return d


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def top1_percent(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or len(labels) == 0:
        return None
    return float(np.mean(logits.argmax(1) == labels) * 100.0)


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None, *,
            gate: ParityGate = ParityGate(), backend: str = "candidate",
            reference_name: str = "pytorch") -> ParityResult:
    """Compare two ``[N, classes]`` logit arrays (and accuracy against ``labels``)."""
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise ParityError(f"{backend}: logits of shape {candidate.shape} cannot be compared with "
                          f"the reference's {reference.shape}; the export is broken")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    finite = bool(np.all(np.isfinite(candidate)))
    max_diff = float(diff.max()) if finite else float("inf")
    mean_diff = float(diff.mean()) if finite else float("inf")
    agreement = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    ref_top1, top1 = top1_percent(reference, labels), top1_percent(candidate, labels)
    if gate.precision == "fp32":
        passed = finite and max_diff <= gate.max_abs_diff
        rule = f"max_abs_diff <= {gate.max_abs_diff:g}"
    else:
        drop = 0.0 if ref_top1 is None or top1 is None else ref_top1 - top1
        passed = finite and agreement >= gate.min_top1_agreement and \
            drop <= gate.max_accuracy_drop_pt
        rule = (f"{gate.precision}: top1_agreement >= {gate.min_top1_agreement:g} and "
                f"accuracy drop <= {gate.max_accuracy_drop_pt:g} pt")
    return ParityResult(backend, reference_name, int(len(reference)), max_diff, mean_diff,
                        agreement, ref_top1, top1, bool(passed), rule, max_diff)


def collect(runner: Callable[[np.ndarray], np.ndarray],
            batches: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenated logits of ``runner`` over ``batches``."""
    outs = [runner(x) for x in batches]
    if not outs:
        raise ParityError("no images to compare on; give parity at least one image")
    return np.concatenate(outs, 0)


def run_parity(reference: Runner, candidates: Mapping[str, Runner],
               batches: Sequence[np.ndarray], labels: np.ndarray | None = None, *,
               gate: ParityGate = ParityGate()) -> tuple[np.ndarray, dict[str, ParityResult]]:
    """Reference logits and one :class:`ParityResult` per candidate, same batches for all."""
    ref = collect(reference, batches)
    results = {name: compare(ref, collect(run, batches), labels, gate=gate, backend=name,
                             reference_name=reference.name)
               for name, run in candidates.items()}
    return ref, results


def onnx_runners(path: str | os.PathLike[str], backends: Sequence[str]) -> dict[str, Runner]:
    """One runner per backend for the ONNX file at ``path`` (backends from
    :func:`available_backends`)."""
    return {b: make_runner(b, Path(path)) for b in backends}
