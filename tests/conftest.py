"""Shared test configuration: markers that skip with a reason when hardware is missing."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

# The commands default to one torch thread per usable core unless OMP_NUM_THREADS says
# otherwise; the tests' tiny models run far faster with one on a shared CPU (in-process
# CLI calls and the subprocesses alike).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tests run tiny models: one intra-op thread is far faster on a shared 2-core CPU
    (reset before every test: the CLI commands set the thread count themselves)."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_cuda = _has_cuda()
    run_slow = bool(config.getoption("-m")) and "slow" in config.getoption("-m")
    for item in items:
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs the tensorrt package "
                                             "(pip install mutualnet[tensorrt]) and a GPU"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: run with -m slow"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A checkpoint of tiny_mobilenet trained with MutualNet for 2 short epochs (64 steps of
    64 images, 2048 training images) on the bundled CIFAR-10 subset.

    Returns the ``.safetensors`` path; its run dir also holds the training state. Accuracy
    is low (about 20-25% top-1 at width 1.0, BN calibrated) but above chance (10%).
    """

    from mutualnet.config import TrainConfig
    from mutualnet.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = TrainConfig(num_epochs=2, batch_size=64, lr=0.2, max_train_images=2048,
                      eval_each_epoch=False, device="cpu")
    return train(cfg, out, progress=False).checkpoint
