"""trtexec-style latency measurement of every subnet, written into the manifest.

For each subnet and batch size: warm up (~200 ms), then run for at least ``duration`` seconds
(and at least ``min_runs`` times) on an already preprocessed random batch kept in memory,
timing each synchronous call; report p50/p90/p99 and throughput. The device's name and, on
Jetson, its power mode (``nvpmodel -q``) are recorded with the figures, so that
``SubnetRuntime.select_budget(latency_ms=...)`` can use them later on the same device.

Torch-free (numpy + the runtime's backend).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ExportUsageError
from .manifest import update_manifest, utc_now
from .runtime import SubnetRuntime

WARMUP_S = 0.2
DEFAULT_DURATION_S = 3.0

__all__ = ["LatencyStats", "jetson_power_mode", "latency_key", "load_average", "measure",
           "measure_runtime", "profile_manifest", "record_latencies"]


@dataclass(frozen=True)
class LatencyStats:
    """One measurement: percentiles of per-call latency and throughput."""

    subnet_id: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_ips: float
    load: float | None = None   # the 1-minute load average when the measurement ended

    def row(self) -> dict[str, Any]:
        return {"batch": self.batch, "p50_ms": _sig(self.p50_ms), "p90_ms": _sig(self.p90_ms),
                "p99_ms": _sig(self.p99_ms), "throughput_ips": _sig(self.throughput_ips),
                "runs": self.runs}


def _sig(v: float) -> float:
    return float(f"{v:.5g}")


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the platform has none); it counts
    the measuring process itself."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def jetson_power_mode() -> str | None:
    """``nvpmodel -q`` summary on Jetson ("MAXN (mode 0)"), None where nvpmodel is absent."""
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    name = next((ln.split(":", 1)[1].strip() for ln in lines if "Power Mode" in ln), None)
    mode = next((ln for ln in lines if ln.isdigit()), None)
    if name and mode:
        return f"{name} (mode {mode})"
    return name or (lines[0] if lines else None)


def latency_key(device_name: str, backend: str, precision: str = "fp32") -> str:
    """The manifest key of a measurement: device, backend and (but fp32) precision."""
    return f"{device_name} [{backend}]" if precision == "fp32" else \
        f"{device_name} [{backend} {precision}]"


def measure(run: Callable[[], Any], *, subnet_id: str, batch: int,
            duration_s: float = DEFAULT_DURATION_S, warmup_s: float = WARMUP_S,
            min_runs: int = 10) -> LatencyStats:
    """Time ``run()`` trtexec-style: warm-up, then >= ``duration_s`` and >= ``min_runs`` calls."""
    if duration_s <= 0 or warmup_s < 0:
        raise ExportUsageError("duration must be positive and warm-up non-negative")
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        run()
    times: list[float] = []
    start = time.perf_counter()
    stop = start + duration_s
    while True:
        t0 = time.perf_counter()
        run()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= stop and len(times) >= min_runs:
            break
    total = time.perf_counter() - start
    ms = np.asarray(times) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return LatencyStats(subnet_id=subnet_id, batch=batch, runs=len(times), p50_ms=p50,
                        p90_ms=p90, p99_ms=p99, mean_ms=float(ms.mean()),
                        throughput_ips=batch * len(times) / total, load=load_average())


def _runner(rt: SubnetRuntime, x: np.ndarray, sid: str) -> Callable[[], Any]:
    def run() -> Any:
        return rt.infer_tensor(x, subnet=sid)

    return run


def _progress(total: int, enabled: bool) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="profile", unit="run", file=sys.stderr,
                    disable=not enabled)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None


def measure_runtime(rt: SubnetRuntime, batches: Sequence[int] | None = None, *,
                    duration_s: float = DEFAULT_DURATION_S, progress: bool = True,
                    seed: int = 0) -> list[LatencyStats]:
    """:func:`measure` every subnet of a loaded runtime at each batch size (default: each
    subnet's own), on random preprocessed input; what ``profile`` and ``export --auto`` time."""
    if batches is not None and (not batches or any(b < 1 for b in batches)):
        raise ExportUsageError(f"batch sizes must be >= 1, got {list(batches)}")
    plan = {info.id: sorted(set(batches or info.batch_sizes)) for info in rt.subnets}
    rng = np.random.default_rng(seed)
    results: list[LatencyStats] = []
    bar = _progress(sum(len(v) for v in plan.values()), progress)
    for info in rt.subnets:
        for b in plan[info.id]:
            x = rng.standard_normal((b, 3, info.resolution, info.resolution)).astype(
                np.float32)
            results.append(measure(_runner(rt, x, info.id), subnet_id=info.id, batch=b,
                                   duration_s=duration_s))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results


def record_latencies(rt: SubnetRuntime, results: Sequence[LatencyStats],
                     precision: str = "fp32") -> None:
    """Write ``results`` into the runtime's manifest under this device and backend: the
    smallest batch's figures at the top level, every batch in ``by_batch``."""
    power = jetson_power_mode()
    key = latency_key(rt.device_name, rt.backend, precision)
    provider = ",".join(rt.providers) if rt.providers else rt.backend
    stamp = utc_now()

    def write(doc: dict[str, Any]) -> None:
        for sn in doc["subnets"]:
            rows = [r for r in results if r.subnet_id == sn["id"]]
            if not rows:
                continue
            first = rows[0]
            sn["latency"][key] = {
                "device": rt.device_name, "backend": rt.backend, "provider": provider,
                **first.row(), "power_mode": power, "measured": stamp,
                "precision": precision,
                "by_batch": [r.row() for r in rows],
            }

    update_manifest(rt.manifest.path, write)


def profile_manifest(manifest_dir: str | os.PathLike[str], *, backend: str = "auto",
                     device: str | None = None, duration_s: float = DEFAULT_DURATION_S,
                     batches: Sequence[int] | None = None, threads: int | None = None,
                     progress: bool = True, seed: int = 0,
                     precision: str = "fp32") -> list[LatencyStats]:
    """Measure every subnet at each batch size and record the figures in the manifest.

    batches: default = each subnet's (min, opt, max) batch sizes (the engine's for TensorRT,
    the manifest profile's for ONNX Runtime). The manifest entry
    keeps batch-1 (or the smallest batch) figures at its top level and every batch in
    ``by_batch``. Only ``subnets[*].latency`` changes; no file is re-hashed.
    """
    rt = SubnetRuntime.load(manifest_dir, backend=backend, device=device, threads=threads,
                            precision=precision)
    try:
        results = measure_runtime(rt, batches, duration_s=duration_s, progress=progress,
                                  seed=seed)
        record_latencies(rt, results, precision)
        return results
    finally:
        rt.close()
