"""The on-device runtime: load every subnet of a manifest, switch between them on the fly.

Torch-free (numpy + onnxruntime or tensorrt). Typical use::

    rt = SubnetRuntime.load("export_dir")             # verifies every checksum first
    rt.select_budget(mmacs=50)                        # most accurate subnet within 50 M MACs
    result = rt.infer(images)                         # uint8 NHWC, any size
    print(result.subnet_id, result.top1)

Switching (:meth:`SubnetRuntime.select`, :meth:`select_budget`, the
:class:`~export.controller.LatencyController`) replaces one reference between requests: a
request reads the active subnet once when it starts and finishes on it, so switching never
blocks, never rebuilds, and is thread-safe. Budgets go through the one rule of
:mod:`export.budget`; the subnets run on the runners of :mod:`export.backends`.
"""

from __future__ import annotations

import os
import platform
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import Runner, device_index, run_batched
from .backends.onnxruntime import OrtRunner, providers_for
from .backends.tensorrt import (
    EngineEnvironment,
    TrtRunner,
    TrtShared,
    check_engine_record,
    gpu_identity,
    tensorrt_environment,
)
from .budget import BudgetChoice, Candidate, choose
from .errors import BackendUnavailableError, ExportError, ExportUsageError, ManifestError
from .manifest import EngineRecord, Manifest, SubnetEntry, load_manifest
from .profiles import PRECISIONS

if TYPE_CHECKING:
    from .controller import LatencyController

BACKENDS = ("auto", "tensorrt", "onnxruntime")
ON_STALE = ("error", "fallback")

__all__ = [
    "BudgetChoice", "EngineEnvironment", "InferResult", "SubnetInfo", "SubnetRuntime",
    "check_engine_record", "preprocess_images", "resolve_backend",
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
    top1: float | None          # the selection accuracy (full eval, else parity's)
    latency_ms: float | None    # measured p90 at batch 1 on this device and backend, if any
    batch_sizes: tuple[int, ...] = (1,)   # (min, opt, max) this subnet is built/run for

    @property
    def mmacs(self) -> float:
        """Millions of MACs."""
        return self.macs / 1e6

    @property
    def mflops(self) -> float:
        """Deprecated alias of :attr:`mmacs` (the MutualNet paper's "MFLOPs" are MACs)."""
        return self.mmacs

    def candidate(self) -> Candidate:
        """This subnet as the budget rule sees it."""
        return Candidate(self.id, self.width, self.resolution, self.macs, self.top1,
                         self.latency_ms)


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


# ============================================================================ loading

@dataclass
class _Slot:
    info: SubnetInfo
    runner: Runner


@dataclass
class _State:
    slots: dict[str, _Slot] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def _latency_for(sn: SubnetEntry, device: str, backend: str,
                 precision: str = "fp32") -> float | None:
    for rec in sn.latency.values():
        if rec.backend == backend and rec.device == device and rec.precision == precision:
            p90 = rec.p90_at(1)
            if p90 is not None:
                return p90
    return None


def _info(sn: SubnetEntry, batch: tuple[int, int, int]) -> SubnetInfo:
    return SubnetInfo(id=sn.id, width=sn.width, resolution=sn.resolution, macs=sn.macs,
                      params=sn.params, top1=sn.top1(), latency_ms=None,
                      batch_sizes=tuple(sorted(set(batch))))


def _add(state: _State, sn: SubnetEntry, make: Any) -> None:
    """Load one subnet with ``make()`` -> (info, runner); a failure is recorded, not raised."""
    try:
        info, runner = make()
        state.slots[sn.id] = _Slot(info, runner)
    except Exception as e:  # noqa: BLE001 - one bad subnet must not stop the others
        state.failed[sn.id] = f"failed to load: {e}"
        warnings.warn(f"subnet {sn.id} failed to load ({e}); serving from the others",
                      stacklevel=4)


def _require_some(state: _State, manifest: Manifest) -> None:
    if not state.slots:
        reasons = "; ".join(f"{k}: {v}" for k, v in state.failed.items())
        raise ExportError(f"no subnet of {manifest.path} could be loaded ({reasons})")


def _stale_or_fallback(on_stale: str, message: str) -> str:
    if on_stale == "fallback":
        warnings.warn(f"{message}; falling back to ONNX Runtime", stacklevel=4)
        return "onnxruntime"
    raise ManifestError(message)


def _check_choice(backend: str, on_stale: str) -> None:
    if backend not in BACKENDS:
        raise ExportUsageError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if on_stale not in ON_STALE:
        raise ExportUsageError(f"on_stale must be 'error' or 'fallback'; got {on_stale!r}")


def _environment(backend: str, device: str | None, on_stale: str) -> EngineEnvironment | None:
    try:
        return tensorrt_environment(device_index(device))
    except BackendUnavailableError as e:
        if backend == "auto":
            return None
        if on_stale == "fallback":
            warnings.warn(f"{e}; falling back to ONNX Runtime", stacklevel=4)
            return None
        raise


def choose_backend(manifest: Manifest, backend: str, device: str | None,
                   on_stale: str) -> str:
    """``tensorrt`` or ``onnxruntime`` for these arguments (see :meth:`SubnetRuntime.load`)."""
    if backend == "onnxruntime" or device == "cpu":
        if backend == "tensorrt":
            raise ExportUsageError("the TensorRT backend runs on a GPU; drop device='cpu'")
        return "onnxruntime"
    missing = [s.id for s in manifest.subnets if not s.engines]
    if backend == "auto" and len(missing) == len(manifest.subnets):
        return "onnxruntime"
    if backend == "tensorrt" and missing:
        return _stale_or_fallback(on_stale, f"no TensorRT engine recorded for "
                                  f"{', '.join(missing)}; run `mutualnet build-engines "
                                  f"{manifest.root}` on this device")
    env = _environment(backend, device, on_stale)
    if env is None:
        return "onnxruntime"
    for sn in manifest.subnets:
        reasons = [check_engine_record(rec, env) for rec in sn.engines]
        if all(r is not None for r in reasons):
            why = reasons[0] if reasons else "no engine recorded"
            return _stale_or_fallback(
                on_stale, f"stale TensorRT engine for {sn.id} ({why}); rebuild with "
                f"`mutualnet build-engines {manifest.root}` on this device, or load with "
                "on_stale='fallback' to run ONNX Runtime")
    return "tensorrt"


def resolve_backend(manifest_dir: str | os.PathLike[str], backend: str = "auto",
                    device: str | None = None, on_stale: str = "error") -> str:
    """The backend :meth:`SubnetRuntime.load` would pick with these arguments, without loading
    anything: ``tensorrt`` or ``onnxruntime``. Stale or missing engines raise ManifestError
    with ``on_stale="error"`` and warn + give ``onnxruntime`` with ``"fallback"``."""
    _check_choice(backend, on_stale)
    manifest = load_manifest(manifest_dir, verify_files=False)
    return choose_backend(manifest, backend, device, on_stale)


def precision_subnets(manifest: Manifest, precision: str) -> tuple[list[SubnetEntry], list[str]]:
    """(subnets with an artifact of ``precision``, notes on those without); ManifestError
    when none has one, naming the precisions the export holds."""
    have = [sn for sn in manifest.subnets if sn.onnx_for(precision) is not None]
    if not have:
        exist = sorted({p for sn in manifest.subnets for p in sn.precisions})
        raise ManifestError(f"{manifest.path} holds no {precision} subnet (precisions: "
                            f"{', '.join(exist)}); load one of those, or re-export with "
                            f"--precision {precision}")
    notes = [f"{sn.id}: no {precision} artifact (failed its gate or not exported), skipped"
             for sn in manifest.subnets if sn not in have]
    return have, notes


def _load_onnxruntime(manifest: Manifest, device: str | None, threads: int | None,
                      max_batch: int, precision: str = "fp32"
                      ) -> tuple[_State, tuple[str, ...]]:
    providers = providers_for(manifest.profile.ort_providers, device)
    p = manifest.profile
    batch = (min(p.min_batch, max_batch), min(p.opt_batch, max_batch), max_batch)
    state = _State()
    used: list[tuple[str, ...]] = []

    def make(sn: SubnetEntry) -> tuple[SubnetInfo, Runner]:
        onnx = sn.onnx_for(precision)
        assert onnx is not None
        runner = OrtRunner(manifest.file(onnx), providers=providers, threads=threads,
                           allow_cpu_fallback=True, max_batch=max_batch)
        used.append(runner.providers)
        return _info(sn, batch), runner

    subnets, notes = precision_subnets(manifest, precision)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    for sn in subnets:
        _add(state, sn, lambda sn=sn: make(sn))
    _require_some(state, manifest)
    return state, (used[-1] if used else ())


def _newest_matching(sn: SubnetEntry, env: EngineEnvironment,
                     precision: str = "fp32") -> EngineRecord:
    """The newest engine of ``sn`` for this GPU and TensorRT; fp16 / int8 take only engines
    built in that precision, fp32 (the default) the engines as recorded."""
    for rec in reversed(sn.engines):
        if check_engine_record(rec, env) is None and precision in ("fp32", rec.precision):
            return rec
    raise ManifestError(f"no {precision} TensorRT engine of {sn.id} for this GPU; build one "
                        f"with `mutualnet build-engines EXPORT_DIR --precision {precision}`")


def _load_tensorrt(manifest: Manifest, index: int, max_batch: int, precision: str = "fp32"
                   ) -> tuple[_State, TrtShared, str]:
    env = tensorrt_environment(index)
    shared = TrtShared(index)
    state = _State()
    runners: list[TrtRunner] = []

    def make(sn: SubnetEntry) -> tuple[SubnetInfo, Runner]:
        rec = _newest_matching(sn, env, precision)
        mb = min(max_batch, rec.max_batch or max_batch)
        runner = TrtRunner(shared, manifest.file(rec.file), sn.resolution,
                           manifest.model.num_classes, mb, rec.dla_core)
        runners.append(runner)
        batch = (min(rec.min_batch or 1, mb), min(rec.opt_batch or 1, mb), mb)
        return _info(sn, batch), runner

    for sn in manifest.subnets:
        _add(state, sn, lambda sn=sn: make(sn))
    _require_some(state, manifest)
    shared.share_activations(runners)
    return state, shared, env.gpu_name


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {platform.machine()}"


def _safe_gpu_name() -> str:
    try:
        return gpu_identity(0)[0]
    except BackendUnavailableError:
        return "CUDA GPU"


def _nearest(slots: dict[str, _Slot], info: SubnetInfo, *, same_resolution: bool = False) -> _Slot:
    cands = list(slots.values())
    if same_resolution:
        cands = [s for s in cands if s.info.resolution == info.resolution] or cands
    return min(cands, key=lambda s: (abs(s.info.macs - info.macs), s.info.macs))


# ============================================================================ runtime

class SubnetRuntime:
    """Every subnet of a manifest, preloaded; one of them active. Build with :meth:`load`."""

    def __init__(self, manifest: Manifest, backend: str, device: str, device_name: str,
                 state: _State, providers: tuple[str, ...] = (),
                 trt_shared: TrtShared | None = None, precision: str = "fp32") -> None:
        self.manifest = manifest
        self.backend = backend
        self.device = device
        self.device_name = device_name
        self.providers = providers
        self.precision = precision
        self._state = state
        self._trt = trt_shared
        self._fail_lock = threading.Lock()
        # preprocess_images takes the manifest's mapping (same keys as on disk)
        self._pre: dict[str, Any] = manifest.preprocessing.as_dict()
        for sid, slot in state.slots.items():
            lat = _latency_for(manifest.subnet(sid), device_name, backend, precision)
            slot.info = replace(slot.info, latency_ms=lat)
        healthy = [s for s in manifest.subnet_ids if s in state.slots]
        self._active: _Slot = state.slots[healthy[-1]]   # the largest until told otherwise

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, manifest_dir: str | os.PathLike[str], backend: str = "auto",
             device: str | None = None, on_stale: str = "error", *, threads: int | None = None,
             verify: bool = True, max_batch: int | None = None,
             precision: str = "fp32") -> SubnetRuntime:
        """Verify the manifest (:func:`export.manifest.verify_manifest`) and preload every
        subnet.

        backend: ``auto`` (TensorRT when importable and engines for this GPU/TensorRT are
        recorded, else ONNX Runtime), ``tensorrt`` or ``onnxruntime``.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: a CUDA device when one is present;
        ``cuda`` without one is a usage error).
        on_stale: what to do with engines built for another GPU or TensorRT version:
        ``error`` (ManifestError) or ``fallback`` (warn, run ONNX Runtime instead).
        threads: ONNX Runtime intra-op threads per session (None or 0: the cores this
        process may use).
        precision: ``fp32``, ``fp16`` or ``int8``: ONNX Runtime loads that artifact of each
        subnet (subnets without one are skipped with a warning; none at all is a
        ManifestError naming the precisions there are); TensorRT loads engines built in
        it (fp32: the engines as recorded). Budgets use latencies measured at it.
        """
        _check_choice(backend, on_stale)
        if precision not in PRECISIONS:
            raise ExportUsageError(f"precision must be one of {', '.join(PRECISIONS)}; got "
                                   f"{precision!r}")
        manifest = load_manifest(manifest_dir, verify_files=verify)
        mb = int(max_batch or manifest.profile.max_batch)
        if choose_backend(manifest, backend, device, on_stale) == "tensorrt":
            index = device_index(device)
            state, shared, gpu = _load_tensorrt(manifest, index, mb, precision)
            return cls(manifest, "tensorrt", f"cuda:{index}", gpu, state, trt_shared=shared,
                       precision=precision)
        state, used = _load_onnxruntime(manifest, device, threads, mb, precision)
        dev = "cuda" if any("CUDA" in p for p in used) else "cpu"
        name = _cpu_name() if dev == "cpu" else _safe_gpu_name()
        return cls(manifest, "onnxruntime", dev, name, state, providers=used,
                   precision=precision)

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

    def _require_latency(self) -> None:
        missing = [s.id for s in self.subnets if s.latency_ms is None]
        if missing:
            elsewhere = sorted({k for sn in self.manifest.subnets for k in sn.latency})
            seen = f" (measured only as: {'; '.join(elsewhere)})" if elsewhere else ""
            raise ManifestError(
                f"no {self.backend} latency measured on {self.device_name} for "
                f"{', '.join(missing)}{seen}; run `mutualnet profile {self.manifest.root} "
                f"--backend {self.backend}` on this device first")

    def choose_budget(self, *, mmacs: float | None = None, latency_ms: float | None = None,
                      strict: bool = False, mflops: float | None = None) -> BudgetChoice:
        """The healthy subnet :func:`export.budget.choose` picks for a budget (millions of
        MACs, or p90 ms at batch 1), without selecting it. ``mflops``: deprecated alias of
        ``mmacs``. Below the smallest: the smallest (``fits`` False), or with ``strict``
        BudgetError."""
        if mflops is not None:
            if mmacs is not None:
                raise ExportUsageError("give mmacs= or its deprecated alias mflops=, not both")
            mmacs = mflops
        if latency_ms is not None and mmacs is None:
            self._require_latency()
        return choose([s.candidate() for s in self.subnets], mmacs=mmacs,
                      latency_ms=latency_ms, strict=strict)

    def select_budget(self, *, mmacs: float | None = None, latency_ms: float | None = None,
                      strict: bool = False, mflops: float | None = None) -> BudgetChoice:
        """Select what :meth:`choose_budget` picks. Below the smallest subnet it selects the
        smallest and warns, or with ``strict`` raises BudgetError (nothing changes)."""
        choice = self.choose_budget(mmacs=mmacs, latency_ms=latency_ms, strict=strict,
                                    mflops=mflops)
        if not choice.fits:
            warnings.warn(choice.message, stacklevel=2)
        self.select(choice.subnet_id)
        return choice

    def controller(self, target_ms: float, **kwargs: Any) -> LatencyController:
        """A :class:`~export.controller.LatencyController` holding ``target_ms`` here."""
        from .controller import LatencyController

        return LatencyController(self, target_ms, **kwargs)

    # ------------------------------------------------------------------ inference
    def preprocess(self, images: np.ndarray | Sequence[np.ndarray],
                   resolution: int) -> np.ndarray:
        return preprocess_images(images, self._pre, resolution)

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
            logits = run_batched(slot.runner, x)
        except Exception as e:  # noqa: BLE001 - keep serving from the other subnets
            fallback = self._mark_failed(slot, e)
            if x.shape[2] != fallback.info.resolution:
                raise ExportError(f"subnet {slot.info.id} failed ({e}); switched to "
                                  f"{fallback.info.id}, retry the request") from e
            logits = run_batched(fallback.runner, x)
            slot = fallback
        return InferResult(logits, slot.info.id, (time.perf_counter() - t0) * 1e3)

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
