"""Importing torchvision state dicts by name and shape; bad input gives one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from mutualnet.cli import cli
from mutualnet.errors import UsageError
from mutualnet.models import create_model
from mutualnet.weights import detect_format, import_weights, load_pretrained


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Non-default BN statistics and affine, so that a mis-mapped BN changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)


def _save_torchvision(name: str, path: Path, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    _randomize_bn(ref, seed)
    torch.save(ref.state_dict(), path)
    return ref


@pytest.fixture(scope="module")
def mbv2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    path = tmp_path_factory.mktemp("tv") / "mobilenet_v2.pth"
    return path, _save_torchvision("mobilenet_v2", path)


@pytest.fixture(scope="module")
def r50(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    return path, _save_torchvision("resnet50", path, seed=1)


@pytest.mark.parametrize("which", ["mbv2", "r50"])
def test_torchvision_import_gives_the_same_logits(which: str,
                                                  request: pytest.FixtureRequest) -> None:
    path, ref = request.getfixturevalue(which)
    name = {"mbv2": "mobilenet_v2", "r50": "resnet50"}[which]
    model, report = import_weights(path, name)
    assert report.format == "torchvision" and report.width == 1.0
    assert report.complete and not report.skipped
    assert len(report.mapped) == len(ref.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), model.subnet(1.0):
        ours = model.eval()(x)
        theirs = ref(x)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5), (ours - theirs).abs().max()


def test_state_dict_of_another_architecture_names_the_right_model(r50: tuple[Path, nn.Module],
                                                                 mbv2: tuple[Path, nn.Module]
                                                                 ) -> None:
    with pytest.raises(UsageError, match="not a mobilenet_v2.*pass --model resnet50"):
        import_weights(r50[0], "mobilenet_v2")
    with pytest.raises(UsageError, match="not a mobilenet_v1.*pass --model mobilenet_v2"):
        import_weights(mbv2[0], "mobilenet_v1")


def test_wrong_shape_under_a_known_name_is_an_error(tmp_path: Path,
                                                    mbv2: tuple[Path, nn.Module]) -> None:
    state = dict(mbv2[1].state_dict())
    state["features.2.conv.0.0.weight"] = torch.zeros(8, 16, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UsageError, match=r"features\.2\.conv\.0\.0\.weight: file \[8, 16, 1, 1\]"):
        import_weights(tmp_path / "bad.pth", "mobilenet_v2")


def test_unmapped_tensors_are_listed_and_refused_unless_allowed(
        tmp_path: Path, mbv2: tuple[Path, nn.Module]) -> None:
    state = dict(mbv2[1].state_dict())
    del state["features.18.1.running_var"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UsageError, match="features.18.1.running_var.*extra.weight.*"
                                         "--allow-missing"):
        import_weights(tmp_path / "partial.pth", "mobilenet_v2")
    _, report = import_weights(tmp_path / "partial.pth", "mobilenet_v2", allow_missing=True)
    assert report.missing == ("features.18.1.running_var",)
    assert report.unused == ("extra.weight",)


def test_other_class_count_leaves_the_classifier_at_init(mbv2: tuple[Path, nn.Module]) -> None:
    with pytest.raises(UsageError, match="1000 classes, the model 10"):
        import_weights(mbv2[0], "mobilenet_v2", num_classes=10)
    model, report = import_weights(mbv2[0], "mobilenet_v2", num_classes=10, allow_missing=True)
    assert {n for n, _ in report.skipped} == {"classifier.1.weight", "classifier.1.bias"}
    ref = mbv2[1].state_dict()
    assert torch.equal(model.state_dict()["features.5.conv.1.0.weight"],
                       ref["features.5.conv.1.0.weight"])


def test_load_pretrained_fills_an_existing_supernet(mbv2: tuple[Path, nn.Module]) -> None:
    model = create_model("mobilenet_v2", width_range=(0.7, 1.0)).eval()
    report = load_pretrained(model, mbv2[0])
    assert report.complete
    assert torch.equal(model.state_dict()["features.0.0.weight"],
                       mbv2[1].state_dict()["features.0.0.weight"])


def test_a_torchvision_file_holds_width_one(mbv2: tuple[Path, nn.Module]) -> None:
    with pytest.raises(UsageError, match="holds width 1, not 0.5"):
        import_weights(mbv2[0], "mobilenet_v2", width=0.5)


def test_files_that_are_neither_format(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="neither a torchvision state dict"):
        detect_format(tmp_path / "notes.txt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled object, not a state dict
    with pytest.raises(UsageError, match="refused: it holds Python objects besides tensors"):
        import_weights(tmp_path / "module.pth", "mobilenet_v2")
    torch.save({"epoch": 3}, tmp_path / "nothing.pth")
    with pytest.raises(UsageError, match="holds no tensors"):
        import_weights(tmp_path / "nothing.pth", "mobilenet_v2")
    with pytest.raises(UsageError, match="no such file"):
        import_weights(tmp_path / "absent.pth", "mobilenet_v2")


def test_cli_writes_a_checkpoint_with_the_same_logits(tmp_path: Path,
                                                      mbv2: tuple[Path, nn.Module]) -> None:
    from mutualnet.checkpoint import load_checkpoint

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["import-weights", str(mbv2[0]), "--model", "mobilenet_v2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "314 tensors mapped, 0 missing, 0 unused" in result.output
    ckpt = load_checkpoint(out)
    assert ckpt.config.model == "mobilenet_v2" and ckpt.config.num_classes == 1000
    assert ckpt.extra["imported"]["format"] == "torchvision"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ckpt.model.eval()(x), mbv2[1](x), rtol=0, atol=1e-5)
    again = CliRunner().invoke(cli, ["import-weights", str(mbv2[0]), "--model", "mobilenet_v2",
                                     "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet50"], "not a resnet50"),
    (["--model", "mobilenet_v2", "--width", "0.75"], "holds width 1, not 0.75"),
    (["--model", "no_such_model"], "unknown model"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, mbv2: tuple[Path, nn.Module],
                                          args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["import-weights", str(mbv2[0]), *args,
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "checkpoint.safetensors").exists()


def test_truncated_file_is_a_failure_not_a_traceback(tmp_path: Path,
                                                     mbv2: tuple[Path, nn.Module]) -> None:
    (tmp_path / "cut.pth").write_bytes(mbv2[0].read_bytes()[:100_000])
    result = CliRunner().invoke(cli, ["import-weights", str(tmp_path / "cut.pth"), "--model",
                                      "mobilenet_v2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert "cannot read it as a torch file" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_padding_is_a_mobilenet_v1_option(mbv2: tuple[Path, nn.Module]) -> None:
    with pytest.raises(UsageError, match="mobilenet_v1 only"):
        import_weights(mbv2[0], "mobilenet_v2", model_kwargs={"padding": "symmetric"})


def test_external_format_tells_foreign_weights_from_checkpoints(
        tmp_path: Path, mbv2: tuple[Path, nn.Module]) -> None:
    from safetensors.torch import save_file

    from mutualnet.weights import external_format

    save_file({"w": torch.zeros(2)}, str(tmp_path / "checkpoint.safetensors"))
    assert external_format(mbv2[0]) == "torchvision"
    assert external_format(tmp_path / "checkpoint.safetensors") is None
    assert external_format(tmp_path) is None


def test_cli_not_a_weight_file(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"\x00\x01garbage" * 10)
    result = CliRunner().invoke(cli, ["import-weights", str(tmp_path / "x.bin"), "--model",
                                      "mobilenet_v1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "neither a torchvision state dict" in result.output


def test_imported_checkpoint_config_carries_the_preprocessing(
        mbv2: tuple[Path, nn.Module]) -> None:
    from mutualnet.data import preprocessing
    from mutualnet.weights import IMAGENET_PREPROCESSING
    from mutualnet.weights.save import checkpoint_config

    model, report = import_weights(mbv2[0], "mobilenet_v2")
    config = checkpoint_config(model, report, dataset_dir="/data/imagenet")
    assert (config.image_size, config.image_resize) == (224, 256)
    assert config.input_mean == tuple(IMAGENET_PREPROCESSING["mean"])
    assert preprocessing(config.data_spec()) == IMAGENET_PREPROCESSING


def test_import_to_checkpoint_refuses_before_reading(tmp_path: Path) -> None:
    """The library call behind `import-weights`: bad --out / --width fail before any work."""
    from mutualnet.checkpoint import CHECKPOINT_FILE
    from mutualnet.weights.save import import_to_checkpoint

    missing = tmp_path / "never_read.pth"
    with pytest.raises(UsageError, match="give a directory"):
        import_to_checkpoint(missing, "mobilenet_v2", tmp_path / "x.safetensors")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CHECKPOINT_FILE).write_bytes(b"old")
    with pytest.raises(UsageError, match="pass --force"):
        import_to_checkpoint(missing, "mobilenet_v2", tmp_path / "run")
    with pytest.raises(UsageError, match="--width must be a positive number"):
        import_to_checkpoint(missing, "mobilenet_v2", tmp_path / "new", width=float("inf"))
    assert (tmp_path / "run" / CHECKPOINT_FILE).read_bytes() == b"old"


def test_test_only_source_is_a_mutualnet_checkpoint_as_given(tiny_checkpoint: Path,
                                                             tmp_path: Path) -> None:
    from mutualnet.config import TrainConfig
    from mutualnet.weights.save import import_pretrained_for_eval

    cfg = TrainConfig(test_only=True, pretrained=str(tiny_checkpoint))
    assert import_pretrained_for_eval(cfg, tmp_path) == (str(tiny_checkpoint), None)
    assert not (tmp_path / "imported").exists()
