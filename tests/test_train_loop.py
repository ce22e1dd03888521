"""The training loop: resume bit for bit, NaN guard, metrics, DDP (gloo: 1 process, 2 processes)."""

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
    assert set(record["val"]) == {"w1.00-r32", "w0.25-r20"}
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


def _ddp_rank(rank: int, world: int, port: int, out: str, config: dict) -> None:
    """One torchrun-like rank (spawned): trains ``config`` and saves what it saw."""
    import os

    from mutualnet.config import config_from_dict

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    models: list[torch.nn.Module] = []
    real_step = loop.train_step

    def spy(model, optimizer, x, y, *a, **k):
        seen.append((x.clone(), y.clone()))
        models.append(model)
        return real_step(model, optimizer, x, y, *a, **k)

    loop.train_step = spy  # type: ignore[assignment]
    train(config_from_dict(config), Path(out) / "run", progress=False)
    params = {k: v.detach().clone() for k, v in models[-1].module.named_parameters()}
    torch.save({"batches": seen, "params": params}, Path(out) / f"rank{rank}.pt")


def test_ddp_two_gloo_processes_each_load_their_rows(tmp_path: Path) -> None:
    """Two real ranks: each trains on its half of every global batch (concatenated: the
    single-process batch) and the all-reduced parameters stay identical on both."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    import torch.multiprocessing as mp

    from mutualnet.data import load_data

    cfg = SMALL.replace(num_epochs=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path), cfg.to_dict()), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    data = load_data(cfg.data_spec("train"), "train")
    whole = list(data.batches(cfg.batch_size, augment=True, shuffle=True, seed=cfg.random_seed,
                              epoch=0, drop_last=True))
    assert len(r0["batches"]) == len(r1["batches"]) == len(whole) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(whole, r0["batches"], r1["batches"], strict=True):
        assert len(x0) == len(x1) == cfg.batch_size // 2
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k
    assert (tmp_path / "run" / CHECKPOINT_FILE).exists()


# --------------------------------------------------------------------------- pretrained: external


@pytest.fixture(scope="module")
def tv_mbv2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision mobilenet_v2 state dict (random init, 1000 classes) saved with torch.save."""
    import torchvision

    torch.manual_seed(3)
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    path = tmp_path_factory.mktemp("tv") / "mobilenet_v2.pth"
    torch.save(state, path)
    return path, state


def test_pretrained_torchvision_file_is_imported_into_the_built_net(
        tv_mbv2: tuple[Path, dict[str, torch.Tensor]]) -> None:
    from mutualnet.checkpoint import build_model
    from mutualnet.errors import UsageError

    path, state = tv_mbv2
    config = TrainConfig(model="mobilenet_v2", num_classes=10, pretrained=str(path))
    net = build_model(config)
    head = net.state_dict()["classifier.1.weight"].clone()
    with pytest.raises(UsageError, match="classifier"):  # 1000 classes in the file, 10 here
        loop.load_pretrained_weights(net, config)
    report = loop.load_pretrained_weights(net, config.replace(pretrained_allow_missing=True))
    assert report is not None and report.format == "torchvision"
    assert "classifier.1.weight" in report.summary()
    got = net.state_dict()
    for key in ("features.0.0.weight", "features.17.conv.2.weight", "features.18.1.running_var"):
        assert torch.equal(got[key], state[key]), key
    assert torch.equal(got["classifier.1.weight"], head)  # other class count: left at init
    full = TrainConfig(model="mobilenet_v2", num_classes=1000, pretrained=str(path))
    net = build_model(full)
    report = loop.load_pretrained_weights(net, full)
    assert report is not None and not report.missing
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_pretrained_checkpoint_and_bad_files(tmp_path: Path) -> None:
    from mutualnet.checkpoint import build_model, save_checkpoint
    from mutualnet.errors import MutualNetError, UsageError

    config = TrainConfig()
    torch.manual_seed(1)
    source = build_model(config)
    save_checkpoint(tmp_path / "run", source, config.replace(num_classes=10))
    net = build_model(config.replace(num_classes=10))
    assert loop.load_pretrained_weights(net, config.replace(
        num_classes=10, pretrained=str(tmp_path / "run"))) is None  # a mutualnet checkpoint
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 source.state_dict().values(), strict=True))
    assert loop.load_pretrained_weights(net, config) is None  # no pretrained: nothing to do
    (tmp_path / "w.tflite").write_bytes(b"not a model at all")
    with pytest.raises(UsageError, match="w.tflite: neither a torchvision"):
        loop.load_pretrained_weights(net, config.replace(pretrained=str(tmp_path / "w.tflite")))
    with pytest.raises(MutualNetError, match="does not exist"):
        loop.load_pretrained_weights(net, config.replace(pretrained=str(tmp_path / "nope")))


def test_train_starts_from_external_weights(tmp_path: Path,
                                            tv_mbv2: tuple[Path, dict[str, torch.Tensor]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """One lr-0 step of mobilenet_v2 on 4 images: the saved weights are the file's."""
    path, state = tv_mbv2
    config = TrainConfig(model="mobilenet_v2", num_classes=10, pretrained=str(path),
                         pretrained_allow_missing=True, resolution_list=(32,), num_epochs=1,
                         batch_size=4, max_train_images=4, eval_each_epoch=False,
                         device="cpu", lr=0.0, weight_decay=0.0, num_sampled_widths=0)
    result = train(config, tmp_path / "run")
    assert result.step == 1
    assert "pretrained: torchvision" in capsys.readouterr().err
    ckpt = load_checkpoint(result.checkpoint)
    assert "skipped classifier.1.weight" in ckpt.extra["pretrained_import"]
    weights = ckpt.model.state_dict()
    for key in ("features.0.0.weight", "features.10.conv.1.0.weight", "features.18.0.weight"):
        assert torch.equal(weights[key], state[key]), key


def test_loop_steps_compose_into_train(tmp_path: Path) -> None:
    """_start / _run_epoch / _end_epoch, called by hand, give what train() gives."""
    cfg = SMALL.replace(num_epochs=2)
    whole = train(cfg, tmp_path / "whole", stop_after_epochs=1, progress=False)
    from mutualnet.train.distributed import DistInfo

    run = loop._start(cfg, tmp_path / "steps", DistInfo(), torch.device("cpu"),
                      resume_from=None, progress=False)
    assert (run.epoch, run.step, run.steps_per_epoch) == (0, 0, 4)
    assert not (tmp_path / "steps" / CHECKPOINT_FILE).exists()
    sums = loop._run_epoch(run, progress=False, on_step=None)
    assert (run.epoch, run.step, sums.steps, sums.images) == (1, 4, 4, 256)
    record = loop._end_epoch(run, sums, progress=False)
    assert record["loss"] == whole.history[0]["loss"] and run.lrs == list(whole.lrs)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "steps")
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = loop._start(cfg, tmp_path / "steps", DistInfo(), torch.device("cpu"),
                        resume_from=tmp_path / "steps", progress=False)
    assert (again.epoch, again.step) == (1, 4)  # _restore read the checkpoint _end_epoch saved


def test_restore_refuses_a_schedule_of_other_data(tmp_path: Path) -> None:
    train(SMALL.replace(num_epochs=1), tmp_path, progress=False)
    from mutualnet.train.distributed import DistInfo

    run = loop._setup(SMALL.replace(num_epochs=1, max_train_images=384), tmp_path, DistInfo(),
                      torch.device("cpu"), fresh=False, progress=False)
    with pytest.raises(ConfigError, match="saved schedule .4 steps.*same data and batch_size"):
        loop._restore(run, tmp_path)
