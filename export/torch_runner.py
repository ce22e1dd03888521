"""The PyTorch runner of export parity (torch side: the device never imports this).

A :class:`export.backends.Runner` over a PyTorch module: the supernet inside
``subnet(width)``, or the sliced plain model.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np


class TorchRunner:
    """Run a PyTorch module (eval mode, no grad); ``width`` runs a supernet at that width."""

    max_batch = 0

    def __init__(self, module: Any, *, width: float | None = None, device: str = "cpu",
                 name: str = "pytorch") -> None:
        self.module = module.eval()
        self.width = width
        self.device = device
        self.name = name

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        ctx = self.module.subnet(self.width) if self.width is not None else \
            contextlib.nullcontext()
        with torch.no_grad(), ctx:
            y = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return np.asarray(y.float().cpu().numpy())

    def close(self) -> None:
        pass
