"""Parity: one comparator and one gate for any two runners (torch-free).

Export parity (supernet vs sliced model vs each ONNX Runtime backend) and engine parity
(FP32 ONNX vs TensorRT engine) both call :func:`compare` with a :class:`ParityGate` built
from the deploy profile (:meth:`ParityGate.from_profile`), so both decide alike:

- non-finite candidate logits (NaN / inf) always fail;
- fp32 candidates are gated elementwise (``max_abs_diff``);
- fp16 / int8 / tf32 candidates on top-1 agreement and accuracy drop.

Every :class:`ParityResult` reports what would have passed (the elementwise tolerance, the
agreement and the drop it reached), so a failing gate says how far off it was. Runners are
:class:`export.backends.Runner` objects; :func:`collect` and :func:`run_parity` feed them
the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import Runner
from .errors import ParityError

__all__ = ["ParityGate", "ParityResult", "collect", "compare", "run_parity", "top1_percent"]


@dataclass(frozen=True)
class ParityGate:
    """When a candidate passes: elementwise for fp32, agreement/accuracy otherwise."""

    precision: str = "fp32"
    max_abs_diff: float = 1e-4
    min_top1_agreement: float = 0.99
    max_accuracy_drop_pt: float = 0.5

    @classmethod
    def from_profile(cls, profile: Any, *, precision: str | None = None) -> ParityGate:
        """The gate of a :class:`export.profiles.DeployProfile` (``precision`` overrides):
        fp16 and int8 take the profile's ``fp16_*`` / ``int8_*`` agreement and drop keys,
        other precisions (tf32) its ``min_top1_agreement`` / ``max_accuracy_drop_pt``."""
        prec = precision or profile.precision
        agreement = getattr(profile, f"{prec}_min_top1_agreement", profile.min_top1_agreement)
        drop = getattr(profile, f"{prec}_max_accuracy_drop_pt", profile.max_accuracy_drop_pt)
        return cls(prec, float(profile.fp32_max_abs_diff), float(agreement), float(drop))

    @property
    def rule(self) -> str:
        if self.precision == "fp32":
            return f"finite and max_abs_diff <= {self.max_abs_diff:g}"
        return (f"{self.precision}: finite, top1_agreement >= {self.min_top1_agreement:g} and "
                f"accuracy drop <= {self.max_accuracy_drop_pt:g} pt")

    def passes(self, *, finite: bool, max_abs_diff: float, agreement: float,
               drop: float | None) -> bool:
        if not finite:
            return False
        if self.precision == "fp32":
            return max_abs_diff <= self.max_abs_diff
        return agreement >= self.min_top1_agreement and \
            (drop or 0.0) <= self.max_accuracy_drop_pt


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
    finite: bool = True

    @property
    def accuracy_drop_pt(self) -> float | None:
        if self.reference_top1 is None or self.top1 is None:
            return None
        return self.reference_top1 - self.top1

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's per-backend parity object (what would have passed included)."""
        drop = self.accuracy_drop_pt
        return {"max_abs_diff": _finite(self.max_abs_diff),
                "top1_agreement": round(self.top1_agreement, 6),
                "accuracy_drop_pt": None if drop is None else round(drop, 4),
                "passed": self.passed,
                "tolerance_that_passes": _finite(self.tolerance_that_passes),
                "agreement_that_passes": round(self.top1_agreement, 6),
                "drop_that_passes_pt": None if drop is None else round(max(drop, 0.0), 4),
                "images": self.images, "reference": self.reference, "gate": self.gate}

    def to_dict(self) -> dict[str, Any]:
        d = self.manifest_entry()
        d.update(backend=self.backend, mean_abs_diff=_finite(self.mean_abs_diff),
                 reference_top1=self.reference_top1, top1=self.top1, finite=self.finite)
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
    drop = None if ref_top1 is None or top1 is None else ref_top1 - top1
    passed = gate.passes(finite=finite, max_abs_diff=max_diff, agreement=agreement, drop=drop)
    return ParityResult(backend, reference_name, int(len(reference)), max_diff, mean_diff,
                        agreement, ref_top1, top1, bool(passed), gate.rule, max_diff, finite)


def collect(runner: Runner, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenated logits of ``runner`` over ``batches``."""
    outs = [runner.run(x) for x in batches]
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
