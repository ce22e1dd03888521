"""Checkpoints: round trip by key, atomic writes, safe loading, clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mutualnet import checkpoint as ck
from mutualnet.checkpoint import (
    CHECKPOINT_FILE,
    STATE_FILE,
    BadCheckpointError,
    build_model,
    capture_rng,
    load_checkpoint,
    load_training_state,
    load_weights,
    read_metadata,
    restore_rng,
    save_checkpoint,
)
from mutualnet.config import TrainConfig
from mutualnet.errors import CheckpointError


def _model(cfg: TrainConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg)


def test_round_trip_by_key_with_config_and_state(tmp_path: Path) -> None:
    cfg = TrainConfig(lr=0.05, num_epochs=3)
    model = _model(cfg)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, model, cfg, step=7, epoch=2, optimizer=opt,
                           classes=[f"c{i}" for i in range(10)], extra_meta={"note": 1})
    assert path == tmp_path / CHECKPOINT_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE,
                                                          ck.state_path(tmp_path).name]
    loaded = load_checkpoint(tmp_path)
    assert loaded.config == cfg.replace(num_classes=10)  # class count resolved on save
    assert (loaded.step, loaded.epoch, loaded.extra) == (7, 2, {"note": 1})
    assert loaded.classes == tuple(f"c{i}" for i in range(10))
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    state = load_training_state(tmp_path)
    assert state.step == 7 and state.weights_sha256 == loaded.sha256
    opt2 = torch.optim.SGD(loaded.model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(state.optimizer)
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])
    # the state file is plain tensors + Python values: loadable with weights_only=True
    raw = torch.load(ck.state_path(tmp_path), weights_only=True)
    assert raw["format"] == "mutualnet-checkpoint"
    meta = read_metadata(path)
    assert meta["model"] == "tiny_mobilenet" and json.loads(meta["config"])["lr"] == 0.05


def test_rng_state_round_trip() -> None:
    state = capture_rng()
    a = (torch.rand(3), float(__import__("numpy").random.rand()), __import__("random").random())
    restore_rng(state)
    b = (torch.rand(3), float(__import__("numpy").random.rand()), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_save_is_atomic_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    cfg = TrainConfig()
    save_checkpoint(tmp_path, _model(cfg), cfg, step=1, epoch=1)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, _model(cfg, 1), cfg, step=2, epoch=2)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no temp file left
    assert load_checkpoint(tmp_path).step == 1


def test_corrupt_missing_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    cfg = TrainConfig()
    path = save_checkpoint(tmp_path / "run", _model(cfg), cfg)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "garbage": b"\x00\x01 not a checkpoint at all",
    }
    for name, content in cases.items():
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(content)
        with pytest.raises(BadCheckpointError, match=f"{name}.safetensors") as e:
            load_checkpoint(f)
        assert e.value.exit_code == 2 and "\n" not in str(e.value)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(BadCheckpointError, match="not a mutualnet checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(BadCheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(BadCheckpointError, match="holds no checkpoint.safetensors"):
        load_checkpoint(tmp_path)
    assert issubclass(BadCheckpointError, CheckpointError)


def test_weights_that_do_not_fit_are_rejected_by_shape(tmp_path: Path) -> None:
    cfg = TrainConfig()
    path = save_checkpoint(tmp_path, _model(cfg), cfg)
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors["classifier.weight"] = torch.zeros(10, 7)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(BadCheckpointError, match=r"classifier\.weight.*shape"):
        load_checkpoint(path)


def test_checkpoint_for_another_model_or_class_count_names_both(tmp_path: Path) -> None:
    cfg = TrainConfig()
    save_checkpoint(tmp_path / "tiny", _model(cfg), cfg)
    other = TrainConfig(model="mobilenet_v1", num_classes=10, resolution_list=(32,))
    with torch.device("meta"):
        big = build_model(other)
    with pytest.raises(BadCheckpointError, match="'tiny_mobilenet'.*'mobilenet_v1'") as e:
        load_weights(big, tmp_path / "tiny", other)
    assert e.value.exit_code == 2
    c100 = TrainConfig(num_classes=100)
    with pytest.raises(BadCheckpointError, match="10 classes.*wants 100"):
        load_weights(_model(c100), tmp_path / "tiny", c100)
    target = _model(cfg, seed=5)
    load_weights(target, tmp_path / "tiny", cfg)
    assert torch.equal(target.classifier.weight, _model(cfg).classifier.weight)


def test_training_state_must_match_its_weights(tmp_path: Path) -> None:
    cfg = TrainConfig()
    model = _model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, model, cfg, optimizer=opt)
    state = ck.state_path(tmp_path)
    good = state.read_bytes()
    raw = torch.load(state, weights_only=True)
    torch.save({**raw, "weights_sha256": "0" * 64}, state)  # a state of other weights
    with pytest.raises(BadCheckpointError, match="sha256 mismatch"):
        load_training_state(tmp_path)
    state.write_bytes(good[:100])
    with pytest.raises(BadCheckpointError, match="corrupt"):
        load_training_state(tmp_path)
    state.unlink()
    with pytest.raises(BadCheckpointError, match="cannot be resumed"):
        load_training_state(tmp_path)


def test_state_file_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    cfg = TrainConfig()
    model = _model(cfg)
    save_checkpoint(tmp_path, model, cfg, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "mutualnet-checkpoint", "evil": Evil()}, ck.state_path(tmp_path))
    with pytest.raises(BadCheckpointError, match="cannot read the training state"):
        ck.load_training_state(tmp_path)


def _strip_state_name(weights: Path) -> None:
    """Rewrite ``weights`` as a checkpoint written before state generations."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(weights), framework="pt") as h:
        meta = dict(h.metadata())
    del meta["state_file"]
    save_file(load_file(str(weights)), str(weights), metadata=meta)


def test_runs_written_before_generations_still_resume(tmp_path: Path) -> None:
    cfg = TrainConfig()
    model = _model(cfg)
    save_checkpoint(tmp_path, model, cfg, step=3, epoch=1,
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    state = ck.state_path(tmp_path)
    _strip_state_name(tmp_path / CHECKPOINT_FILE)
    raw = torch.load(state, weights_only=True)
    raw["weights_sha256"] = hashlib.sha256((tmp_path / CHECKPOINT_FILE).read_bytes()).hexdigest()
    torch.save(raw, tmp_path / STATE_FILE)
    state.unlink()
    assert ck.state_path(tmp_path) == tmp_path / STATE_FILE
    assert load_training_state(tmp_path).step == 3
    save_checkpoint(tmp_path, model, cfg, step=6, epoch=2,
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE,
                                                          ck.state_path(tmp_path).name]
    assert load_training_state(tmp_path).step == 6


def test_a_failed_save_keeps_the_previous_pair(tmp_path: Path, monkeypatch) -> None:
    cfg = TrainConfig()
    model = _model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, model, cfg, step=1, epoch=1, optimizer=opt)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for point in ("checkpoint.weights-written", "checkpoint.state-written",
                  "checkpoint.state-renamed"):
        monkeypatch.setenv("MUTUALNET_FAULT", f"{point}:enospc")
        monkeypatch.setattr("mutualnet.fileio._fault_passes", {})
        with pytest.raises(ck.CheckpointWriteError, match="No space left on device"):
            save_checkpoint(tmp_path, _model(cfg, 4), cfg, step=2, epoch=2, optimizer=opt)
        after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        if point == "checkpoint.state-renamed":  # an orphan state of the failed generation
            after = {k: v for k, v in after.items() if k in before}
        assert after == before, point
        assert load_training_state(tmp_path).step == 1
    monkeypatch.delenv("MUTUALNET_FAULT")
    save_checkpoint(tmp_path, _model(cfg, 4), cfg, step=2, epoch=2, optimizer=opt)
    assert len(list(tmp_path.glob("checkpoint.state*.pt"))) == 1
    assert load_training_state(tmp_path).step == 2
