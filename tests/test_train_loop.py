"""The training loop: resume bit for bit, NaN guard, metrics, DDP smoke (gloo, 1 process)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from mutualnet.checkpoint import CHECKPOINT_FILE, load_checkpoint, load_training_state
from mutualnet.config import TrainConfig
from mutualnet.errors import ConfigError, TrainingDivergedError
from mutualnet.train import loop, train
from mutualnet.train import step as step_mod

#: 3 epochs x 4 steps of 64 images; no per-epoch evaluation (speed).
SMALL = TrainConfig(num_epochs=3, batch_size=64, max_train_images=256, eval_each_epoch=False,
                    device="cpu", lr=0.2)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run).model.state_dict()


def test_resume_is_bit_for_bit(tmp_path: Path) -> None:
    full = train(SMALL, tmp_path / "full", progress=False)
    assert (full.epoch, full.step, len(full.lrs)) == (3, 12, 12)
    part = train(SMALL, tmp_path / "part", stop_after_epochs=1, progress=False)
    assert (part.epoch, part.step) == (1, 4)
    assert load_training_state(tmp_path / "part").step == 4
    rest = train(SMALL, tmp_path / "part", resume=True, progress=False)
    assert (rest.epoch, rest.step) == (3, 12)
    assert part.lrs + rest.lrs == full.lrs  # the same LR at every later step
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = load_training_state(tmp_path / "full").optimizer["state"]
    sb = load_training_state(tmp_path / "part").optimizer["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert [x["loss"] for x in lines] == [
        json.loads(x)["loss"] for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    train(SMALL.replace(num_epochs=1), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="lr: 0.2 -> 0.3"):
        train(SMALL.replace(num_epochs=1, lr=0.3), tmp_path, resume=True, progress=False)


def test_divergence_stops_with_a_clear_message_and_keeps_the_checkpoint(
        tmp_path: Path, monkeypatch) -> None:
    train(SMALL, tmp_path, stop_after_epochs=1, progress=False)
    good = (tmp_path / CHECKPOINT_FILE).read_bytes()
    calls = {"n": 0}
    real = step_mod.distill_loss

    def poisoned(student, teacher):
        calls["n"] += 1
        loss = real(student, teacher)
        return loss * float("inf") if calls["n"] == 5 else loss

    monkeypatch.setattr(step_mod, "distill_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 5.*last good checkpoint"):
        train(SMALL, tmp_path, resume=True, progress=False)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == good
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "diverged" and last["step"] == 5


def test_epoch_metrics_include_calibrated_validation(tmp_path: Path) -> None:
    cfg = SMALL.replace(num_epochs=1, eval_each_epoch=True, calib_images=256,
                        max_val_images=200)
    result = train(cfg, tmp_path, progress=False)
    (record,) = result.history
    assert set(record["val"]) == {"w1-r32", "w0.25-r20"}
    assert record["images_per_s"] > 0 and record["lr"] == result.lrs[-1]
    ck = load_checkpoint(tmp_path)
    assert ck.extra["val"] == record["val"] and ck.classes[0] == "airplane"


def test_ddp_single_process_gloo_matches_plain_training(tmp_path: Path, monkeypatch) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    cfg = SMALL.replace(num_epochs=1)
    plain = train(cfg, tmp_path / "plain", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    wrapped = []
    real_step = loop.train_step

    def spy(model, *a, **k):
        wrapped.append(type(model).__name__)
        return real_step(model, *a, **k)

    monkeypatch.setattr(loop, "train_step", spy)
    ddp = train(cfg, tmp_path / "ddp", progress=False)
    assert not torch.distributed.is_initialized()  # cleaned up
    assert set(wrapped) == {"DistributedDataParallel"}
    assert ddp.lrs == plain.lrs
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
