"""The one torch-side device resolution and the thread defaults (mutualnet.device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mutualnet import device as dev
from mutualnet.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def test_auto_and_cpu_resolve_here() -> None:
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert dev.resolve_device("auto").type == expect
    assert dev.resolve_device(None).type == expect
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device("cpu", local_rank=3) == torch.device("cpu")


@pytest.mark.parametrize("name", ["npu", "cuda:x", "cuda:-1", "tpu", "", "CPU"])
def test_unknown_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="use auto, cpu, cuda or cuda:N"):
        dev.resolve_device(name)
    assert not dev.is_device_name(name)


def test_cuda_without_cuda_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match="CUDA is not available; use --device cpu"):
            dev.resolve_device(name)
    assert dev.resolve_device("auto") == torch.device("cpu")


def test_cuda_index_and_torchrun_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert dev.resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert dev.resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert dev.resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # explicit wins
    with pytest.raises(UsageError, match="has 2 CUDA device.*cuda:0 to cuda:1"):
        dev.resolve_device("cuda:2")


def test_the_config_and_the_export_pipeline_use_the_same_rule() -> None:
    from export import pipeline
    from mutualnet.config import TrainConfig
    from mutualnet.errors import ConfigError

    assert pipeline.resolve_device is dev.resolve_device
    assert TrainConfig(device="cuda:3").device == "cuda:3"
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(device="cuda:x")


def test_usable_cores_follow_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert dev.usable_cores() == 3
    assert dev.default_threads() == 3
    assert dev.default_threads(decode_workers=2) == 1
    assert dev.default_threads(decode_workers=8) == 1  # never below one
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's explicit choice wins
    assert dev.default_threads(decode_workers=2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert dev.default_threads() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    assert dev.usable_cores() == 64  # no affinity call on this OS: all cores


def test_configure_threads_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(dev, "usable_cores", lambda: 3)
    try:
        assert dev.configure_threads() == 3 and torch.get_num_threads() == 3
        assert dev.configure_threads(decode_workers=1) == 2 and torch.get_num_threads() == 2
        assert dev.configure_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(UsageError, match="--threads must be at least 1"):
            dev.configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_a_fresh_process_gets_affinity_threads_and_one_interop_thread() -> None:
    code = ("import os, torch\n"
            "from mutualnet.device import configure_threads\n"
            "n = configure_threads()\n"
            "print(n, torch.get_num_threads(), torch.get_num_interop_threads(),"
            " len(os.sched_getaffinity(0)))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    n, intra, inter, cores = map(int, p.stdout.split())
    assert n == intra == cores and inter == 1, p.stderr


def test_passive_omp_default_keeps_a_users_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    dev.passive_omp_default()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    dev.passive_omp_default()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_importing_the_device_module_loads_no_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import mutualnet.device, mutualnet.config\nprint('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert p.stdout.strip() == "ok", p.stderr
