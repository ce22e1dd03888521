"""What data to load and how it is preprocessed: :class:`DataSpec` and the manifest's view of it.

Torch-free on purpose: the config and manifest code can import it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DATASET_ALIASES, DATASETS, RESIZE_MODES
from ..config import TRANSFORMS as AUGMENTS
from ..errors import UsageError

#: Data sets whose ``root`` is a folder (the others take a file or nothing).
FOLDER_DATASETS = ("cifar10", "cifar100", "imagefolder")
SPLITS = ("train", "val")

#: RandomResizedCrop scale range of each ImageNet-style augmentation (SPEC section 3).
RRC_SCALE = {"imagenet_mobile": (0.25, 1.0), "imagenet_basic": (0.08, 1.0)}
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
COLOR_JITTER = 0.4
CIFAR_PAD = 4

#: Channel statistics (RGB, 0-1 scale). The JPEG values are those measured on the shared
#: cifar10_jpeg.npz training set (see its README); JPEG compression lowers the std a little.
CIFAR10_JPEG_MEAN = (0.4913, 0.4821, 0.4465)
CIFAR10_JPEG_STD = (0.2452, 0.2428, 0.2606)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_STATS = {
    "cifar10_bundled": (CIFAR10_JPEG_MEAN, CIFAR10_JPEG_STD),
    "npz": (CIFAR10_JPEG_MEAN, CIFAR10_JPEG_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}

Stats = tuple[float, float, float]


@dataclass(frozen=True)
class DataSpec:
    """Which data set, where, and how images are cropped and augmented.

    ``dataset``: cifar10_bundled (shipped subset, no ``root``) | npz (``root`` = a .npz file in
    the shared JPEG format) | cifar10 / cifar100 (``root`` = folder of the python-pickle release)
    | imagefolder (``root`` holds ``train/<class>/*`` and ``val/<class>/*``).
    ``resize``: evaluation resizes the shorter side to this, then center-crops ``image_size``;
    None keeps CIFAR-style images as they are (imagefolder then uses image_size * 256 / 224).
    ``resize_mode``: "shorter_side" (as above) or "stretch": evaluation resizes the whole
    image to ``resize`` x ``resize`` (None: ``image_size``, so no crop) ignoring its aspect
    ratio, then center-crops ``image_size`` (imported TFLite weights: resize = image_size).
    ``in_memory``: decode once into a uint8 tensor and augment batches on their device;
    None = yes for the npz/CIFAR sets, no for imagefolder.
    ``max_images``: keep only the first N images of a split, balanced over classes.
    ``input_mean`` / ``input_std``: per-channel (RGB) normalization in 0-1 units that
    replaces the data set's statistics (imported TFLite weights: 128/255 for both);
    None = the data set's values. :attr:`mean` / :attr:`std` give the values in use.
    """

    dataset: str = "cifar10_bundled"
    root: str | None = None
    image_size: int = 32
    resize: int | None = None
    augment: str = "cifar"
    workers: int = 2
    in_memory: bool | None = None
    max_images: int | None = None
    input_mean: Stats | None = None
    input_std: Stats | None = None
    resize_mode: str = "shorter_side"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_mean",
                           check_stats(self.input_mean, "input_mean", positive=False))
        object.__setattr__(self, "input_std",
                           check_stats(self.input_std, "input_std", positive=True))
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if self.augment not in AUGMENTS:
            raise UsageError(f"unknown augment {self.augment!r}; known: {', '.join(AUGMENTS)}")
        if self.dataset == "cifar10_bundled":
            if self.root is not None:
                raise UsageError("dataset 'cifar10_bundled' is shipped inside the package and "
                                 "takes no root; use dataset 'npz' to read another .npz file")
        elif not self.root:
            raise UsageError(f"dataset {self.dataset!r} needs a root: {expected_layout(self.dataset)}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise UsageError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.resize is not None and (not isinstance(self.resize, int)
                                        or self.resize < self.image_size):
            raise UsageError(f"resize must be an integer >= image_size ({self.image_size}) "
                             f"or None, got {self.resize!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise UsageError(f"unknown resize_mode {self.resize_mode!r}; known: "
                             f"{', '.join(RESIZE_MODES)}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise UsageError(f"workers must be an integer >= 0, got {self.workers!r}")
        if self.max_images is not None and (not isinstance(self.max_images, int)
                                            or self.max_images < 1):
            raise UsageError(f"max_images must be a positive integer or None, "
                             f"got {self.max_images!r}")

    @property
    def uses_memory(self) -> bool:
        """Whether images are decoded once into a tensor (the resolved ``in_memory``)."""
        return self.in_memory if self.in_memory is not None else self.dataset != "imagefolder"

    @property
    def eval_resize(self) -> int | None:
        """Side that evaluation resizes to before the center crop (None = no resize): the
        shorter side, or both sides with ``resize_mode`` "stretch"."""
        if self.resize is not None:
            return self.resize
        if self.resize_mode == "stretch":
            return self.image_size
        if self.dataset == "imagefolder":
            return int(round(self.image_size * 256 / 224))
        return None

    @property
    def mean(self) -> Stats:
        """Channel means the pixels (0-1 units) are normalized with: ``input_mean`` or the data set's."""
        return self.input_mean if self.input_mean is not None else _STATS[self.dataset][0]

    @property
    def std(self) -> Stats:
        """Channel stds the pixels (0-1 units) are divided by: ``input_std`` or the data set's."""
        return self.input_std if self.input_std is not None else _STATS[self.dataset][1]

    def root_path(self) -> Path | None:
        return Path(self.root).expanduser() if self.root else None


def check_stats(value: Any, name: str, *, positive: bool) -> Stats | None:
    """None, or 3 finite numbers in 0-1 units as a float tuple (stds in (0, 1]); else UsageError."""
    if value is None:
        return None
    what = "3 numbers in (0, 1]" if positive else "3 numbers in [0, 1]"
    items = tuple(value) if isinstance(value, list | tuple) else ()
    ok = len(items) == 3 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in items)
    if ok and any(v > 1 or v < 0 or (positive and v == 0) for v in items):
        hint = " (divide 0-255 values by 255)" if any(v > 1 for v in items) else ""
        raise UsageError(f"{name} must be {what}, R, G, B in 0-1 units{hint}; got {value!r}")
    if not ok:
        raise UsageError(f"{name} must be {what} (R, G, B in 0-1 units) or None, got {value!r}")
    return (float(items[0]), float(items[1]), float(items[2]))


def expected_layout(dataset: str) -> str:
    """One sentence describing what ``root`` must point at for ``dataset``."""
    return {
        "cifar10_bundled": "no root (the subset ships inside the package)",
        "npz": "a .npz file with arrays train_jpeg, train_offsets, train_labels, test_jpeg, "
               "test_offsets, test_labels, classes (the format of shared/data/cifar10_jpeg.npz)",
        "cifar10": "the folder of the CIFAR-10 python release (cifar-10-batches-py/ with "
                   "data_batch_1..5, test_batch, batches.meta) or its parent",
        "cifar100": "the folder of the CIFAR-100 python release (cifar-100-python/ with "
                    "train, test, meta) or its parent",
        "imagefolder": "a folder with train/<class>/*.jpg and val/<class>/*.jpg",
    }[dataset]


#: The ``--data`` syntax of ``eval`` and ``export``, for help texts and docs.
DATA_SYNTAX = "NAME, NAME:PATH, a .npz file or a folder"


def parse_data_arg(text: str, current: str = "cifar10_bundled") -> tuple[str, str | None]:
    """(dataset, root) that a ``--data`` value names (``eval`` and ``export`` share it).

    ``NAME`` (``cifar10_bundled``) or ``NAME:PATH`` (``npz:/d/x.npz``, ``cifar100:/d/c100``,
    ``imagefolder:/d/imagenet``; the original project's ``imagenet1k`` means imagefolder);
    or just a path: a file is read as an ``npz``, a folder as ``current`` (the checkpoint's
    data set) when that takes a folder, else as an ImageFolder root. A path that does not
    exist and is no data set name is a usage error listing the names.
    """
    text = text.strip()
    name, sep, root = text.partition(":")
    name = DATASET_ALIASES.get(name, name)
    if name in DATASETS:
        return name, (root.strip() or None) if sep else None
    path = Path(text).expanduser()
    if not text or not path.exists():
        raise UsageError(f"--data {text!r}: no such file or folder, and not a data set name "
                         f"({', '.join(DATASETS)}); give {DATA_SYNTAX}")
    if path.is_file():
        return "npz", str(path)
    return (current if current in FOLDER_DATASETS else "imagefolder"), str(path)


def preprocessing(spec: DataSpec) -> dict[str, object]:
    """How a deployed model's input must be prepared (the manifest's ``preprocessing``)."""
    return {
        "resize": spec.eval_resize,
        "resize_mode": spec.resize_mode,
        "crop": spec.image_size,
        "mean": [float(m) for m in spec.mean],
        "std": [float(s) for s in spec.std],
        "channel_order": "RGB",
        "input_scale": 255.0,
        "interpolation": "bilinear",
        "layout": "NCHW",
    }
