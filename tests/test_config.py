"""Config: defaults, apps/*.yml, the original project's keys, precedence and errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from mutualnet.config import (
    ConfigWarning,
    TrainConfig,
    config_from_dict,
    load_config,
    parse_override,
)
from mutualnet.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

#: The original project's apps/mobilenet_v1.yml (SPEC 8), machine path replaced.
ORIGINAL_MOBILENET_V1 = """\
# data
dataset: imagenet1k
data_transforms: imagenet1k_mobile
dataset_dir: /some/where/ImageNet
data_loader_workers: 4
num_classes: 1000
image_resize: 256
image_size: 224
num_epochs: 250
print_freq: 100
optimizer: sgd
momentum: 0.9
weight_decay: 0.0001
nesterov: True
lr: 0.5
lr_scheduler: cosine
profiling: [gpu]
random_seed: 1995
batch_size: 1024
log_dir: logs/
model: models.mobilenet_v1
reset_parameters: True
width_mult_list: [0.25, 1.0]
width_mult_range: [0.25, 1.0]
resolution_list: [224, 192, 160, 128]
test_only: False
pretrained: ''
resume: ''
"""


def test_defaults_are_the_tiny_demo_and_match_apps_tiny_yml() -> None:
    c = TrainConfig()
    assert (c.model, c.dataset, c.width_mult_range, c.resolution_list, c.image_size) == (
        "tiny_mobilenet", "cifar10_bundled", (0.25, 1.0), (32, 28, 24, 20), 32)
    assert load_config(None) == c
    tiny = load_config("app:apps/tiny.yml")
    assert tiny == c.replace(num_classes=10, weight_decay_scope="all")


@pytest.mark.parametrize("name, model, lr, batch, epochs, wd, wr, res, scope", [
    ("mobilenet_v1", "mobilenet_v1", 0.5, 1024, 250, 1e-4, (0.25, 1.0), (224, 192, 160, 128),
     "conv_linear"),
    ("mobilenet_v2", "mobilenet_v2", 0.5, 1024, 250, 1e-4, (0.7, 1.0), (224, 192, 160, 128),
     "conv_linear"),
    ("resnet50", "resnet50", 0.2, 512, 120, 1e-4, (0.9, 1.0), (224, 192, 160, 128),
     "conv_linear"),
    ("wrn28_10_cifar10", "wrn28_10", 0.1, 128, 200, 5e-4, (0.9, 1.0), (32, 28, 24, 20), "all"),
    ("wrn28_10_cifar100", "wrn28_10", 0.1, 128, 200, 5e-4, (0.9, 1.0), (32, 28, 24, 20), "all"),
])
def test_apps_carry_the_spec_hyperparameters(name, model, lr, batch, epochs, wd, wr, res,
                                            scope) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # our own files need no translation
        c = load_config(f"app:apps/{name}.yml")
    assert (c.model, c.lr, c.batch_size, c.num_epochs, c.weight_decay) == (
        model, lr, batch, epochs, wd)
    assert (c.width_mult_range, c.resolution_list, c.resolved_weight_decay_scope) == (
        wr, res, scope)
    assert c.nesterov and c.momentum == 0.9 and c.method == "mutual"
    assert c.effective_lr == lr


def test_original_project_file_runs_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "mobilenet_v1.yml"
    f.write_text(ORIGINAL_MOBILENET_V1)
    with pytest.warns(ConfigWarning) as record:
        c = load_config(f"app:{f}")
    ignored = {str(w.message).split("'")[1] for w in record}
    assert ignored == {"print_freq", "profiling", "reset_parameters"}
    assert all(str(f) in str(w.message) for w in record)
    assert c.model == "mobilenet_v1" and c.dataset == "imagefolder"
    assert c.resolved_transforms == "imagenet_mobile" and c.image_resize == 256
    assert c.pretrained is None and c.resume is None and c.log_dir == "logs/"
    assert c.num_classes == 1000 and c.random_seed == 1995 and c.data_loader_workers == 4
    spec = c.data_spec("train")
    assert (spec.dataset, spec.root, spec.image_size, spec.resize, spec.augment) == (
        "imagefolder", "/some/where/ImageNet", 224, 256, "imagenet_mobile")


def test_original_wideresnet_and_resnet_keys_are_translated() -> None:
    c = config_from_dict({"model": "models.wideresnet", "depth": 28, "widen_factor": 10,
                          "dropoutrate": 0.3, "dataset": "cifar100", "num_classes": 100})
    assert c.model == "wrn28_10" and c.model_kwargs == {"dropout": 0.3}
    c = config_from_dict({"model": "models.wideresnet", "depth": 16, "widen_factor": 4})
    assert c.model == "wrn" and c.model_kwargs == {"depth": 16, "widen_factor": 4}
    assert config_from_dict({"model": "models.resnet", "depth": 50}).model == "resnet50"
    with pytest.raises(ConfigError, match="depth 18"):
        config_from_dict({"model": "models.resnet", "depth": 18})
    with pytest.raises(ConfigError, match="optimizer 'adam'"):
        config_from_dict({"optimizer": "adam"})


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yml"
    f.write_text("lr: 0.1\nlearning_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"bad\.yml.*'learning_rate'") as e:
        load_config(str(f))
    assert e.value.exit_code == 2
    with pytest.raises(ConfigError, match=r"--set.*'bogus'"):
        load_config(None, ["bogus=1"])


@pytest.mark.parametrize("override, match", [
    ("lr=fast", "lr must be a number"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("width_mult_range=[1.0, 0.5]", "0 < min <= max"),
    ("width_mult_range=0.5", "width_mult_range must be a list of 2 numbers"),
    ("method=magic", "method must be one of"),
    ("nesterov=maybe", "nesterov must be true/false"),
    ("model=resnet18", "unknown model 'resnet18'"),
    ("test_only=true", "needs pretrained"),
    ("lr", "expected key=value"),
])
def test_bad_values_are_config_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_precedence_defaults_yaml_set_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("lr: 0.2\nbatch_size: 64\nnum_epochs: 3\n")
    c = load_config(str(f), ["lr=0.05", "resolution_list=[32, 24]"])
    assert (c.lr, c.batch_size, c.num_epochs, c.resolution_list) == (0.05, 64, 3, (32, 24))
    assert c.replace(num_epochs=7).num_epochs == 7  # CLI flags go last
    assert c.image_size == 32 and c.weight_decay == TrainConfig.weight_decay


def test_linear_lr_scaling_and_eval_widths() -> None:
    c = config_from_dict({"lr": 0.5, "lr_batch_size": 1024, "batch_size": 256})
    assert c.effective_lr == pytest.approx(0.125)
    assert TrainConfig().eval_widths() == (0.25, 0.5, 0.75, 1.0)
    assert config_from_dict({"width_mult_list": [0.25, 0.6, 1.0]}).eval_widths() == (0.25, 0.6, 1.0)


def test_round_trip_and_yaml_values() -> None:
    c = config_from_dict({"model_kwargs": {"padding": "tf_same"}, "resolution_list": [32, 20],
                          "lr": 1})
    assert config_from_dict(c.to_dict()) == c and isinstance(c.lr, float)
    assert parse_override("resolution_list=[32, 24]") == ("resolution_list", [32, 24])
    assert parse_override("pretrained=") == ("pretrained", None)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("app:apps/nope.yml")
    f = tmp_path / "broken.yml"
    f.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(f))
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(f))


def test_input_mean_std_reach_the_data_spec_and_preprocessing(tmp_path: Path) -> None:
    from mutualnet.data import preprocessing

    f = tmp_path / "c.yml"
    f.write_text("input_mean: [0.5, 0.5, 0.5]\ninput_std: [0.25, 0.25, 0.25]\n")
    c = load_config(str(f))
    assert (c.input_mean, c.input_std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    spec = c.data_spec("val")
    assert (spec.mean, spec.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert preprocessing(spec)["mean"] == [0.5] * 3 and preprocessing(spec)["std"] == [0.25] * 3
    assert config_from_dict(c.to_dict()) == c
    default = TrainConfig()
    assert default.input_mean is None and default.data_spec().input_std is None


def test_configs_without_the_new_keys_still_load() -> None:
    """A config stored before input_mean/input_std/pretrained_allow_missing existed."""
    old = TrainConfig().to_dict()
    for key in ("input_mean", "input_std", "pretrained_allow_missing", "image_resize_mode"):
        old.pop(key)
    c = config_from_dict(old)
    assert (c.input_mean, c.input_std, c.pretrained_allow_missing) == (None, None, False)
    assert c.image_resize_mode == "shorter_side" and c.data_spec().resize_mode == "shorter_side"


def test_image_resize_mode_round_trips_into_the_data_spec(tmp_path: Path) -> None:
    from mutualnet.data import preprocessing

    f = tmp_path / "c.yml"
    f.write_text("model: mobilenet_v1\ndataset: imagefolder\ndataset_dir: /x\n"
                 "image_size: 160\nimage_resize_mode: stretch\n")
    c = load_config(str(f))
    assert c.image_resize_mode == "stretch"
    assert config_from_dict(c.to_dict()) == c and c.to_dict()["image_resize_mode"] == "stretch"
    spec = c.data_spec("val")
    assert (spec.resize_mode, spec.eval_resize) == ("stretch", 160)
    pre = preprocessing(spec)
    assert (pre["resize_mode"], pre["resize"], pre["crop"]) == ("stretch", 160, 160)
    assert load_config(str(f), ["image_resize_mode=shorter_side"]).data_spec().eval_resize == 183


def test_resize_to_the_model_size_is_allowed() -> None:
    c = config_from_dict({"model": "mobilenet_v1", "dataset": "imagefolder",
                          "dataset_dir": "/x", "image_size": 160, "image_resize": 160})
    assert c.data_spec().eval_resize == 160


@pytest.mark.parametrize("override, match", [
    ("input_mean=[0.5, 0.5]", "input_mean must be a list of 3 numbers or null"),
    ("input_mean=[128, 128, 128]", "divide 0-255 values by 255"),
    ("input_std=[0.5, 0, 0.5]", r"input_std must be 3 numbers in \(0, 1\]"),
    ("input_std=0.5", "input_std must be a list of 3 numbers"),
    ("image_resize=24", r"image_resize must be >= image_size \(32\)"),
    ("pretrained_allow_missing=maybe", "pretrained_allow_missing must be true/false"),
    ("image_resize_mode=squash", "image_resize_mode must be one of shorter_side, stretch"),
])
def test_bad_normalization_values_are_config_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])
