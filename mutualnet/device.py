"""Where the torch side computes: the one device resolution, and the CPU threads it uses.

:func:`resolve_device` turns a user's ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` into a
``torch.device`` (train, eval, calibration, export and the benchmarks all call it; the
torch-free runtime in ``export/`` keeps its own). :func:`configure_threads` sets torch's
intra-op and inter-op threads for a process: by default the cores this process may run
on (its CPU affinity, as under ``taskset`` or a container's cpuset), less the decode
workers that run beside it.

Torch is imported inside the functions, so the config module can import :data:`DEVICES`
without loading torch.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch

#: The device names a config or ``--device`` takes (besides ``cuda:N``).
DEVICES = ("auto", "cpu", "cuda")
_CUDA_N = re.compile(r"cuda:(\d+)")

#: Set before torch is first imported (see :func:`passive_omp_default`): OpenMP threads
#: that finish a parallel region sleep instead of spinning for the others.
OMP_WAIT_POLICY = "PASSIVE"


def is_device_name(name: str) -> bool:
    """Whether ``name`` is one of :data:`DEVICES` or ``cuda:N``."""
    return name in DEVICES or _CUDA_N.fullmatch(name) is not None


def resolve_device(name: str | None = "auto", *, local_rank: int | None = None
                   ) -> torch.device:
    """``auto`` (or None) -> CUDA when available, else the CPU; ``cpu``, ``cuda``, ``cuda:N``
    are checked against this machine. ``local_rank`` (a torchrun rank's GPU) turns a bare
    ``cuda`` into ``cuda:<local_rank>``. A usage error says what to pass instead."""
    import torch

    name = "auto" if name is None else str(name).strip()
    if not is_device_name(name):
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; use --device "
                         "cpu (or auto)")
    match = _CUDA_N.fullmatch(name)
    if match is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise UsageError(f"device {name!r}: this machine has {count} CUDA device(s); "
                             f"use cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(decode_workers: int = 0) -> int:
    """torch threads for this process: ``OMP_NUM_THREADS`` when the user set it, else the
    usable cores less the decode worker processes that share them (at least 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, usable_cores() - max(0, int(decode_workers)))


def configure_threads(threads: int | None = None, *, decode_workers: int = 0) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`) and its
    inter-op threads to 1 (the training and export code runs one op at a time); returns
    the intra-op count. A usage error for ``threads`` < 1."""
    import torch

    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise UsageError(f"--threads must be at least 1, got {threads}")
    n = default_threads(decode_workers) if threads is None else int(threads)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op work; keep what is set
        pass
    return n


def passive_omp_default() -> None:
    """Make OpenMP threads sleep rather than spin while waiting (``OMP_WAIT_POLICY``), unless
    the user set it. Only takes effect before torch is first imported: the ``mutualnet``
    command calls it at start. Beside another busy process, spinning threads of a 2-core
    run were measured 4x slower than alone; passive ones 2x (BENCHMARKS.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)


__all__ = ["DEVICES", "configure_threads", "default_threads", "is_device_name",
           "passive_omp_default", "resolve_device", "usable_cores"]
