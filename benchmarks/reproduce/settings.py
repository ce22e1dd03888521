"""The study's settings: one frozen :class:`Scale` per size, the run matrix, each run's config.

Every run of a scale shares the data, epochs, batch size, schedule, augmentation,
resolutions and seeds; runs differ only in the training method and the trained width
range (the issue's fairness rule, checked by ``tests/test_reproduce_cifar.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mutualnet.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10_jpeg.npz"
RESOLUTIONS = (32, 28, 24, 20)
WIDTH_RANGE = (0.25, 1.0)
INDEPENDENT_WIDTHS = (1.0, 0.5, 0.25)
#: Method groups, in table/legend order. "Independent" at width 1.00 is also the plain
#: full-width network of the boosting claim (the same config: training it twice would
#: repeat one run bit for bit).
GROUPS = ("MutualNet", "US-Net", "Independent")


@dataclass(frozen=True)
class ModelRef:
    """A registered model and its keyword arguments, written ``name[:key=value,...]``."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        import yaml

        from mutualnet.models import get_model_info

        name, _, rest = text.partition(":")
        kwargs = []
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"bad model spec {text!r}: write NAME or NAME:key=value,... "
                                 "e.g. wrn:depth=16,widen_factor=4")
            kwargs.append((key.strip(), yaml.safe_load(raw)))
        get_model_info(name.strip())  # unknown name: UsageError listing the known ones
        return cls(name.strip(), tuple(kwargs))

    @property
    def kw(self) -> dict[str, Any]:
        return dict(self.kwargs)

    @property
    def label(self) -> str:
        kw = self.kw
        if self.name == "wrn":
            return f"WRN-{kw.get('depth', 28)}-{kw.get('widen_factor', 10)}"
        return str(self)

    def __str__(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.kwargs)
        return self.name + (f":{extra}" if extra else "")


@dataclass(frozen=True)
class Scale:
    """Everything the runs of one study share. ``data`` None: the bundled subset."""

    name: str
    model: str
    epochs: int
    batch_size: int = 128
    lr: float = 0.1  # per 128 images, scaled linearly with the batch size (SPEC 3)
    seeds: tuple[int, ...] = (0, 1)
    grid_widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    train_images: int | None = None
    val_images: int | None = None
    calib_images: int = 2000
    bundled: bool = False  # train on the bundled subset instead of --data

    def __post_init__(self) -> None:
        ModelRef.parse(self.model)
        for key in ("epochs", "batch_size", "calib_images"):
            if getattr(self, key) < 1:
                raise UsageError(f"scale {self.name}: {key} must be at least 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"scale {self.name}: seeds must be distinct, at least one")
        lo, hi = WIDTH_RANGE
        if any(not lo - 1e-9 <= w <= hi + 1e-9 for w in self.grid_widths):
            raise UsageError(f"scale {self.name}: grid_widths must lie in [{lo}, {hi}]")

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef.parse(self.model)

    def replace(self, **changes: Any) -> Scale:
        """A copy with ``changes``; an unknown key is refused, naming the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise UsageError(f"unknown scale key {bad[0]!r}; known: {', '.join(sorted(known))}")
        tuples = {f.name for f in dataclasses.fields(self) if isinstance(f.default, tuple)}
        fixed: dict[str, Any] = {k: (v,) if k in tuples and not isinstance(v, tuple) else v
                 for k, v in changes.items()}
        return dataclasses.replace(self, **fixed)

    def fairness(self) -> dict[str, Any]:
        """The settings that must match for two results to be compared (seeds excluded)."""
        d = dataclasses.asdict(self)
        d.pop("seeds")
        d["grid_widths"] = list(self.grid_widths)
        return d


SCALES: Mapping[str, Scale] = {
    # A few steps per method on 96 images of the bundled subset: keeps the script working.
    "smoke": Scale("smoke", "tiny_mobilenet", epochs=1, batch_size=32, seeds=(0, 1),
                   grid_widths=(0.25, 1.0), train_images=96, val_images=64,
                   calib_images=32, bundled=True),
    # The CPU study (issue 15): full CIFAR-10, about 10 minutes per MutualNet run on 2
    # quiet cores (6 epochs of 1.4 min; docs/reproduce.md: the probe behind this choice).
    "cpu": Scale("cpu", "tiny_mobilenet", epochs=6),
    # The GPU study (benchmarks/gpu_check.py): a 25x larger CIFAR net, one seed, shortened
    # to fit its share of the 8-minute device budget.
    "gpu": Scale("gpu", "wrn:depth=16,widen_factor=4", epochs=6, batch_size=256,
                 seeds=(0,), calib_images=2000),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the matrix: ``name`` is its file stem without the seed."""

    name: str  # mutual, us_net, independent-w1.00, independent-w0.50, independent-w0.25
    group: str
    seed: int
    method: str
    width_range: tuple[float, float]
    eval_widths: tuple[float, ...]

    @property
    def key(self) -> str:
        return f"{self.name}-s{self.seed}"


def run_names() -> tuple[str, ...]:
    return ("mutual", "us_net", *(f"independent-w{w:.2f}" for w in INDEPENDENT_WIDTHS))


def plan_runs(scale: Scale, seeds: tuple[int, ...] | None = None) -> list[RunSpec]:
    """The run matrix, seed-major (a partial study already holds one whole seed)."""
    runs = []
    for seed in seeds if seeds is not None else scale.seeds:
        for name in ("mutual", "us_net"):
            group = "MutualNet" if name == "mutual" else "US-Net"
            runs.append(RunSpec(name, group, seed, name, WIDTH_RANGE, scale.grid_widths))
        for w in INDEPENDENT_WIDTHS:
            runs.append(RunSpec(f"independent-w{w:.2f}", "Independent", seed, "independent",
                                (w, w), (w,)))
    return runs


def find_run(scale: Scale, key: str) -> RunSpec:
    """The run called ``key`` (``mutual-s0``) in the matrix; else a UsageError listing them."""
    name, _, seed = key.rpartition("-s")
    if name in run_names() and seed.isdigit():
        return next(s for s in plan_runs(scale, (int(seed),)) if s.name == name)
    known = ", ".join(s.key for s in plan_runs(scale))
    raise UsageError(f"unknown run {key!r}; the {scale.name} study's runs are: {known} "
                     "(or 'all')")


def run_config(spec: RunSpec, scale: Scale, run_dir: Path, data: Path | None,
               device: str) -> Any:
    """The TrainConfig of ``spec``: the scale's shared settings + the method's own keys."""
    from mutualnet.config import config_from_dict

    ref = scale.model_ref
    d: dict[str, Any] = {
        "model": ref.name, "model_kwargs": ref.kw,
        "dataset": "cifar10_bundled" if scale.bundled else "npz",
        "dataset_dir": None if scale.bundled else str(data),
        "resolution_list": list(RESOLUTIONS), "image_size": max(RESOLUTIONS),
        "num_epochs": scale.epochs, "batch_size": scale.batch_size, "lr": scale.lr,
        "lr_batch_size": 128, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "weight_decay_scope": "all", "random_seed": spec.seed, "device": device,
        "log_dir": str(run_dir), "max_train_images": scale.train_images,
        "max_val_images": scale.val_images, "calib_images": scale.calib_images,
        "eval_each_epoch": False, "method": spec.method,
        "width_mult_range": list(spec.width_range),
    }
    return config_from_dict(d, source=f"run {spec.key}")
