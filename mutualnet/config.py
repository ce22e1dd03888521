"""Training configuration: one frozen :class:`TrainConfig`, read from YAML and ``--set`` overrides.

Precedence, lowest first: the defaults below (the tiny demo: ``tiny_mobilenet`` on the
bundled CIFAR-10 subset), a YAML file, ``--set key=value`` overrides, then explicit CLI
flags (applied by the CLI with :func:`dataclasses.replace`).

Keys follow the original MutualNet project where they overlap (SPEC section 8), so its
``apps/*.yml`` files run unchanged: original spellings (``models.mobilenet_v1``,
``imagenet1k``, ``imagenet1k_mobile``, ``depth``/``widen_factor``/``dropoutrate``,
``pretrained: ''``) are translated, keys that no longer mean anything are accepted and
ignored with a :class:`ConfigWarning`, and any other unknown key is a
:class:`~mutualnet.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .device import is_device_name
from .errors import ConfigError

if TYPE_CHECKING:
    from .data import DataSpec

METHODS = ("mutual", "us_net", "independent")
WEIGHT_DECAY_SCOPES = ("all", "conv_linear")
#: The data sets a config, ``--data`` and the export pipeline take (one list: the data
#: package, the CLI and export/pipeline.py import it from here).
DATASETS = ("cifar10_bundled", "npz", "cifar10", "cifar100", "imagefolder")
#: The original project's names for them.
DATASET_ALIASES = {"imagenet1k": "imagefolder", "imagenet": "imagefolder"}
TRANSFORMS = ("cifar", "imagenet_mobile", "imagenet_basic")
#: How evaluation resizes an image: "shorter_side" (keep the aspect ratio, shorter side ->
#: ``resize``, then center crop) or "stretch" (both sides -> ``resize``, squashing the aspect
#: ratio, as the TFLite interpreter's users feed its MobileNets). The torch-free runtime
#: (export/runtime.py) keeps its own copy; tests/test_data.py checks they agree.
RESIZE_MODES = ("shorter_side", "stretch")
#: The largest input side anything accepts (a 2048 px batch of 256 is 12 GB of float32).
MAX_RESOLUTION = 2048


class ConfigWarning(UserWarning):
    """A config key was accepted but ignored (it meant something only to the original code)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training or evaluation run needs; the defaults train the tiny demo."""

    # model
    model: str = "tiny_mobilenet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None  # None: the data set's class count
    width_mult_range: tuple[float, float] | None = None  # None: the model's registry default
    resolution_list: tuple[int, ...] | None = None  # None: the model's registry default
    width_mult_list: tuple[float, ...] | None = None  # widths `eval` reports (None: 4 spaced)
    # training method (SPEC 3): mutual | us_net | independent
    method: str = "mutual"
    num_sampled_widths: int = 2  # random widths between min and max per step
    independent_width: float | None = None  # width trained by method=independent (None: max)
    # data
    dataset: str = "cifar10_bundled"
    dataset_dir: str | None = None
    data_transforms: str | None = None  # None: cifar for CIFAR-style data, else imagenet_mobile
    image_size: int | None = None  # base resolution; None: max(resolution_list)
    image_resize: int | None = None  # eval resize of the shorter side (ImageNet: 256;
    # = image_size: "resize to the model size", as imported TFLite weights expect)
    image_resize_mode: str = "shorter_side"  # eval resize: shorter_side (keep the aspect
    # ratio, then center crop) | stretch (whole image to image_resize x image_resize, or
    # image_size x image_size when null; TFLite imports)
    input_mean: tuple[float, float, float] | None = None  # RGB, 0-1 units; None: the data set's
    input_std: tuple[float, float, float] | None = None  # RGB, 0-1 units; None: the data set's
    data_loader_workers: int = 2
    in_memory: bool | None = None
    max_train_images: int | None = None
    max_val_images: int | None = None
    # optimization (SPEC 3)
    num_epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    lr_batch_size: int | None = None  # batch size `lr` is meant for; lr scales linearly
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    weight_decay_scope: str | None = None  # all | conv_linear; None: by dataset
    random_seed: int = 0
    # runtime
    device: str = "auto"
    amp: bool | None = None  # bf16 autocast; None: on for CUDA
    channels_last: bool | None = None  # None: on for CUDA
    log_dir: str | None = None  # output dir; None: runs/<model>
    eval_each_epoch: bool = True
    # BN calibration and evaluation (SPEC 4)
    calib_images: int = 10000
    calib_batch_size: int = 256
    eval_batch_size: int = 256
    # original project's run switches
    test_only: bool = False
    pretrained: str | None = None  # a mutualnet checkpoint, or torchvision .pth / .tflite weights
    pretrained_allow_missing: bool = False  # external weights may leave tensors at init
    resume: str | None = None

    def __post_init__(self) -> None:
        _resolve_model_defaults(self)
        _validate(self)

    # -- derived values -------------------------------------------------------------------
    @property
    def base_resolution(self) -> int:
        assert self.image_size is not None
        return self.image_size

    @property
    def min_width(self) -> float:
        assert self.width_mult_range is not None
        return self.width_mult_range[0]

    @property
    def max_width(self) -> float:
        assert self.width_mult_range is not None
        return self.width_mult_range[1]

    @property
    def effective_lr(self) -> float:
        """``lr`` scaled linearly by ``batch_size / lr_batch_size`` (SPEC 3)."""
        if self.lr_batch_size is None:
            return self.lr
        return self.lr * self.batch_size / self.lr_batch_size

    @property
    def resolved_weight_decay_scope(self) -> str:
        if self.weight_decay_scope is not None:
            return self.weight_decay_scope
        return "conv_linear" if self.dataset == "imagefolder" else "all"

    @property
    def resolved_transforms(self) -> str:
        if self.data_transforms is not None:
            return self.data_transforms
        return "imagenet_mobile" if self.dataset == "imagefolder" else "cifar"

    def eval_widths(self) -> tuple[float, ...]:
        """Widths ``eval`` reports: ``width_mult_list`` if it has 3 or more, else 4 evenly spaced."""
        if self.width_mult_list is not None and len(self.width_mult_list) >= 3:
            return tuple(sorted(set(self.width_mult_list)))
        lo, hi = self.min_width, self.max_width
        spaced = {round(lo + (hi - lo) * i / 3, 4) for i in range(4)}
        return tuple(sorted(spaced | set(self.width_mult_list or ())))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``config_from_dict(c.to_dict()) == c``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict)
                                                                  else v)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def data_spec(self, split: str | None = None) -> DataSpec:
        """The data loader's spec; ``split`` applies ``max_train_images``/``max_val_images``."""
        from .data import DataSpec

        limit = {"train": self.max_train_images, "val": self.max_val_images}.get(split or "")
        kwargs: dict[str, Any] = {
            "dataset": self.dataset, "root": self.dataset_dir,
            "image_size": self.base_resolution, "resize": self.image_resize,
            "augment": self.resolved_transforms, "workers": self.data_loader_workers,
            "in_memory": self.in_memory, "max_images": limit,
            "input_mean": self.input_mean, "input_std": self.input_std,
            "resize_mode": self.image_resize_mode,
        }
        return DataSpec(**kwargs)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied and re-validated (CLI flags use this)."""
        return config_from_dict({**self.to_dict(), **changes}, source="<command line>")


# -- the original project's keys --------------------------------------------------------------

#: Keys that only meant something to the original code: accepted, ignored with a warning.
IGNORED_KEYS = {
    "print_freq": "progress is a tqdm bar",
    "profiling": "use `mutualnet flops` / benchmarks/",
    "reset_parameters": "models are always initialized",
    "data_loader": "the loader follows `dataset`",
    "optimizer": "SGD is the only optimizer",  # accepted silently when 'sgd'
    "lr_scheduler": "the schedule is cosine per iteration",  # accepted silently when 'cosine'
    "distributed": "run under torchrun for multi-GPU",
    "num_gpus_per_job": "run under torchrun for multi-GPU",
    "calibrate_bn": "evaluation always calibrates BN",
    "cumulative_bn_stats": "calibration always uses cumulative statistics",
    "inplace_distill": "distillation follows `method`",
}
_MODEL_ALIASES = {
    "mobilenet_v1": "mobilenet_v1", "us_mobilenet_v1": "mobilenet_v1",
    "mobilenet_v2": "mobilenet_v2", "us_mobilenet_v2": "mobilenet_v2",
    "resnet": "resnet", "s_resnet": "resnet", "us_resnet": "resnet",
    "wideresnet": "wideresnet", "wrn": "wrn",
}
_TRANSFORM_ALIASES = {"imagenet1k_mobile": "imagenet_mobile", "imagenet1k_basic": "imagenet_basic"}
_LEGACY_MODEL_ARGS = ("depth", "widen_factor", "dropoutrate")


def _warn(msg: str) -> None:
    warnings.warn(msg, ConfigWarning, stacklevel=3)


def _translate(d: dict[str, Any], source: str) -> dict[str, Any]:
    """Map the original project's spellings onto this config's keys and values."""
    d = dict(d)
    for key in list(d):
        if key in IGNORED_KEYS:
            value = d.pop(key)
            if key == "optimizer" and str(value).lower() != "sgd":
                raise ConfigError(f"{source}: optimizer {value!r} is not supported; only sgd "
                                  "(Nesterov, as SPEC 3): remove the key")
            if key == "lr_scheduler" and str(value).lower() != "cosine":
                raise ConfigError(f"{source}: lr_scheduler {value!r} is not supported; only "
                                  "cosine: remove the key")
            if key in ("optimizer", "lr_scheduler"):
                continue  # says what happens anyway
            _warn(f"{source}: key {key!r} is ignored ({IGNORED_KEYS[key]})")
    for key in ("pretrained", "resume", "dataset_dir", "log_dir"):
        if d.get(key) == "":
            d[key] = None
    legacy = {k: d.pop(k) for k in _LEGACY_MODEL_ARGS if k in d}
    if isinstance(d.get("dataset"), str):
        d["dataset"] = DATASET_ALIASES.get(d["dataset"], d["dataset"])
    if isinstance(d.get("data_transforms"), str):
        d["data_transforms"] = _TRANSFORM_ALIASES.get(d["data_transforms"], d["data_transforms"])
    model = d.get("model")
    if isinstance(model, str) and model.startswith("models."):
        family = _MODEL_ALIASES.get(model.split(".", 1)[1])
        if family is None:
            raise ConfigError(f"{source}: model {model!r} is not known; use one of "
                              f"{', '.join(_registry_names())}")
        d["model"] = model = family
    if model in ("resnet",):
        depth = legacy.pop("depth", 50)
        if depth != 50:
            raise ConfigError(f"{source}: ResNet depth {depth} is not available; only 50")
        d["model"] = "resnet50"
    elif model in ("wideresnet", "wrn"):
        kwargs = dict(d.get("model_kwargs") or {})
        depth = legacy.pop("depth", kwargs.pop("depth", 28))
        widen = legacy.pop("widen_factor", kwargs.pop("widen_factor", 10))
        if "dropoutrate" in legacy:
            kwargs.setdefault("dropout", float(legacy.pop("dropoutrate")))
        if (depth, widen) == (28, 10):
            d["model"] = "wrn28_10"
        else:
            d["model"] = "wrn"
            kwargs.update(depth=depth, widen_factor=widen)
        if kwargs:
            d["model_kwargs"] = kwargs
    for key in legacy:
        raise ConfigError(f"{source}: key {key!r} applies only to the original resnet/"
                          f"wideresnet models, not {d.get('model')!r}; remove it")
    return d


def _registry_names() -> list[str]:
    from .models import list_models

    return list_models()


# -- parsing ----------------------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{source}: {key} must be {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            if not value:
                raise bad
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise bad
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise bad
    raise bad  # pragma: no cover - every annotation above is handled


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        plural = {int: "integers", float: "numbers", str: "strings"}.get(args[0], "values")
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a non-empty list of {plural}"
        return f"a list of {len(args)} {plural}"
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, _type_name(tp))


_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(TrainConfig))
    return _HINTS


def config_from_dict(d: Mapping[str, Any], *, source: str = "<dict>") -> TrainConfig:
    """Build a validated config from a mapping of keys (original spellings accepted)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping of keys to values, "
                          f"got {type(d).__name__}")
    for key in d:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: config keys must be strings, got {key!r}")
    d = _translate(dict(d), source)
    unknown = [k for k in d if k not in _FIELDS]
    if unknown:
        raise ConfigError(f"{source}: unknown config key {unknown[0]!r}; known keys: "
                          f"{', '.join(sorted(_FIELDS))}")
    hints = _hints()
    values = {k: _coerce(v, hints[k], k, source) for k, v in d.items()}
    try:
        return TrainConfig(**values)
    except ConfigError as e:
        if str(e).startswith(source):
            raise
        raise ConfigError(f"{source}: {e}") from None


def _resolve_model_defaults(c: TrainConfig) -> None:
    """Fill the model-dependent defaults (width range, resolutions, base resolution) in place."""
    from .errors import UsageError
    from .models import get_model_info

    try:
        info = get_model_info(c.model)
    except UsageError as e:
        raise ConfigError(str(e)) from None
    if c.width_mult_range is None:
        object.__setattr__(c, "width_mult_range", tuple(info.width_range))
    if c.resolution_list is None:
        object.__setattr__(c, "resolution_list", tuple(info.resolutions))
    if c.image_size is None:
        assert c.resolution_list is not None
        object.__setattr__(c, "image_size", max(c.resolution_list))


def _validate(c: TrainConfig) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(c.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {c.method!r}")
    need(c.dataset in DATASETS,
         f"dataset must be one of {', '.join(DATASETS)} (or imagenet1k), got {c.dataset!r}")
    need(c.data_transforms is None or c.data_transforms in TRANSFORMS,
         f"data_transforms must be one of {', '.join(TRANSFORMS)}, got {c.data_transforms!r}")
    need(c.weight_decay_scope is None or c.weight_decay_scope in WEIGHT_DECAY_SCOPES,
         f"weight_decay_scope must be one of {', '.join(WEIGHT_DECAY_SCOPES)}, "
         f"got {c.weight_decay_scope!r}")
    need(is_device_name(c.device),
         f"device must be auto, cpu, cuda or cuda:N, got {c.device!r}")
    if c.width_mult_range is not None:
        lo, hi = c.width_mult_range
        need(0 < lo <= hi, f"width_mult_range must be [min, max] with 0 < min <= max, "
                           f"got {list(c.width_mult_range)}")
        for w in c.width_mult_list or ():
            need(lo - 1e-9 <= w <= hi + 1e-9,
                 f"width_mult_list entry {w} is outside width_mult_range {list(c.width_mult_range)}")
        if c.independent_width is not None:
            need(lo - 1e-9 <= c.independent_width <= hi + 1e-9,
                 f"independent_width {c.independent_width} is outside width_mult_range "
                 f"{list(c.width_mult_range)}")
    for r in c.resolution_list or ():
        need(0 < r <= MAX_RESOLUTION, f"resolution_list entries must be in 1..{MAX_RESOLUTION} "
                                      f"px, got {r}")
    for key in ("image_size", "image_resize"):
        v = getattr(c, key)
        need(v is None or 0 < v <= MAX_RESOLUTION,
             f"{key} must be in 1..{MAX_RESOLUTION} px or null, got {v}")
    need(c.image_resize is None or c.image_size is None or c.image_resize >= c.image_size,
         f"image_resize must be >= image_size ({c.image_size}) or null, got {c.image_resize}; "
         "image_resize = image_size resizes images to the model size")
    need(c.image_resize_mode in RESIZE_MODES,
         f"image_resize_mode must be one of {', '.join(RESIZE_MODES)}, "
         f"got {c.image_resize_mode!r}")
    _validate_stats(c)
    need(c.num_classes is None or c.num_classes > 0,
         f"num_classes must be positive, got {c.num_classes}")
    need(c.num_sampled_widths >= 0, "num_sampled_widths must be >= 0")
    need(c.num_epochs >= 1, f"num_epochs must be >= 1, got {c.num_epochs}")
    need(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}")
    need(c.lr_batch_size is None or c.lr_batch_size >= 1, "lr_batch_size must be >= 1")
    need(c.lr >= 0, f"lr must be >= 0, got {c.lr}")
    need(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}")
    need(not c.nesterov or c.momentum > 0, "nesterov needs momentum > 0")
    need(c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    need(c.data_loader_workers >= 0, "data_loader_workers must be >= 0")
    need(c.calib_images >= 1 and c.calib_batch_size >= 1 and c.eval_batch_size >= 1,
         "calib_images, calib_batch_size and eval_batch_size must be >= 1")
    for key in ("max_train_images", "max_val_images"):
        v = getattr(c, key)
        need(v is None or v >= 1, f"{key} must be >= 1 or null, got {v}")
    need(not c.test_only or bool(c.pretrained),
         "test_only: true needs pretrained: PATH (the checkpoint to evaluate)")


def _validate_stats(c: TrainConfig) -> None:
    from .data.spec import check_stats
    from .errors import UsageError

    for key, positive in (("input_mean", False), ("input_std", True)):
        try:
            check_stats(getattr(c, key), key, positive=positive)
        except UsageError as e:
            raise ConfigError(str(e)) from None


# -- files and overrides ----------------------------------------------------------------------

#: Where the repository's apps/ live (for ``app:apps/x.yml`` outside the repo root).
REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_config_path(source: str) -> Path:
    """``app:apps/x.yml`` or a path -> an existing file (cwd first, then the repo root)."""
    raw = source[4:] if source.startswith("app:") else source
    path = Path(raw).expanduser()
    candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path]
    for p in candidates:
        if p.is_file():
            return p
    raise ConfigError(f"config file {raw!r} not found (looked in {Path.cwd()} and {REPO_ROOT}); "
                      "give a path to a .yml file or app:apps/<name>.yml")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "parse error"
        raise ConfigError(f"{path}: not valid YAML ({first}); fix the file") from None
    if data is None:
        raise ConfigError(f"{path} is empty (no keys); write the keys to change, e.g. "
                          "'model: tiny_mobilenet', or omit CONFIG to train the tiny default")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``lr=0.05``, ``resolution_list=[32,24]``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return key, value


def load_config(source: str | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults < YAML file ``source`` (None: the tiny default) < ``key=value`` overrides."""
    data: dict[str, Any] = {}
    name = "<defaults>"
    if source is not None:
        path = resolve_config_path(source)
        name = str(path)
        data = read_yaml(path)
        # validate the file on its own first, so an error names the file
        data = _translate(data, name)
        _check_keys(data, name)
    for item in overrides:
        key, value = parse_override(item)
        _check_keys(_translate({key: value}, f"--set {key}"), f"--set {key}")
        data[key] = value
    return config_from_dict(data, source=name if not overrides else f"{name} with --set")


def _check_keys(d: Mapping[str, Any], source: str) -> None:
    for key in d:
        if key not in _FIELDS:
            raise ConfigError(f"{source}: unknown config key {key!r}; known keys: "
                              f"{', '.join(sorted(_FIELDS))}")
