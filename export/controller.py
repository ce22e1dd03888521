"""The latency controller: hold a latency target on a :class:`~export.runtime.SubnetRuntime`
under changing load by stepping between its subnets (torch-free)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import ExportUsageError

if TYPE_CHECKING:
    from .runtime import InferResult, SubnetRuntime

__all__ = ["LatencyController"]


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
