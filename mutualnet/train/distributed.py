"""Data-parallel plumbing for runs under ``torchrun`` (one process per GPU).

Outside torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op and
the run is single-process. Each rank asks the data for its own rows of every deterministic
global batch (``ImageData.batches(..., rank=, world_size=)``), so it decodes and augments
only those images; the subnet draws are seeded by the step index, so every rank runs the
same widths and resolutions (SPEC 3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); else no-op."""
    if "WORLD_SIZE" not in os.environ or not dist.is_available():
        return DistInfo()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        here = True
    return DistInfo(rank, world, local, here)


def shutdown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def local_batch_size(batch_size: int, info: DistInfo) -> int:
    if batch_size % info.world_size:
        raise UsageError(f"batch_size {batch_size} (global) is not divisible by the "
                         f"{info.world_size} processes; choose a multiple")
    return batch_size // info.world_size


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when running distributed."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # BN running statistics are recalibrated per subnet after training (SPEC 4), so
    # broadcasting buffers every forward would only cost bandwidth.
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    sync: dict[str, Any] = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
                            else {"broadcast_buffers": False})
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **sync)


def mean_across(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size
