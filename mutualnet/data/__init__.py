"""Data sets, batches and preprocessing (the "Data" contract).

```python
from mutualnet.data import DataSpec, load_data, preprocessing, resize_to
data = load_data(DataSpec(), "train")          # the bundled CIFAR-10 subset
for x, y in data.batches(128, augment=True, shuffle=True, seed=0, epoch=3, device="cuda"):
    x_small = resize_to(x, 24)                  # on x's device
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import UsageError
from .datasets import (
    ImageData,
    LoaderImageData,
    TensorImageData,
    epoch_seed,
    folder_loader,
    rank_rows,
    raw_loader,
)
from .readers import RawSplit, read_cifar, read_npz, scan_imagefolder, stratified_first
from .spec import (
    AUGMENTS,
    DATASETS,
    RESIZE_MODES,
    SPLITS,
    DataSpec,
    expected_layout,
    parse_data_arg,
    preprocessing,
)
from .transforms import resize_to

BUNDLED_NPZ = Path(__file__).resolve().parent / "bundled" / "cifar10_subset.npz"

__all__ = [
    "AUGMENTS",
    "BUNDLED_NPZ",
    "DATASETS",
    "RESIZE_MODES",
    "DataSpec",
    "ImageData",
    "LoaderImageData",
    "TensorImageData",
    "epoch_seed",
    "expected_layout",
    "load_data",
    "parse_data_arg",
    "preprocessing",
    "rank_rows",
    "resize_to",
]

#: Decoded pixels of recently loaded small splits, keyed by file identity; loading the same
#: split again (training, then calibration) skips the JPEG decode. Holds data only.
_DECODED: dict[tuple[object, ...], np.ndarray] = {}
_DECODED_MAX = 4


def load_data(spec: DataSpec, split: Literal["train", "val"]) -> ImageData:
    """Load one split ("train" or "val"; val is the test set of CIFAR/npz) as :class:`ImageData`.

    Raises UsageError for a missing file or folder (naming the expected layout), an empty
    split, or an npz whose arrays do not match.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if spec.dataset == "imagefolder":
        return _load_folder(spec, split)
    raw, key = _read_raw(spec, split)
    if spec.max_images is not None:
        raw = raw.select(stratified_first(raw.labels, spec.max_images))
        key = (*key, spec.max_images)
    if len(raw) == 0:
        raise UsageError(f"the {split} split of {_where(spec)} has no images")
    if not spec.uses_memory:
        return LoaderImageData(spec, split, raw_loader(raw), raw.labels, raw.classes)
    pixels = _DECODED.get(key)
    if pixels is None:
        pixels = raw.decode_all()
        while len(_DECODED) >= _DECODED_MAX:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = pixels
    return TensorImageData(spec, split, pixels, raw.labels, raw.classes)


def _where(spec: DataSpec) -> str:
    return "the bundled CIFAR-10 subset" if spec.root is None else f"{spec.dataset} at {spec.root}"


def _file_key(path: Path) -> tuple[object, ...]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _read_raw(spec: DataSpec, split: str) -> tuple[RawSplit, tuple[object, ...]]:
    if spec.dataset in ("cifar10_bundled", "npz"):
        path = BUNDLED_NPZ if spec.dataset == "cifar10_bundled" else spec.root_path()
        assert path is not None
        if spec.dataset == "cifar10_bundled" and not path.is_file():
            raise UsageError(f"the bundled data set is missing from the installation ({path}); "
                             "reinstall mutualnet")
        raw = read_npz(path, split)
        return raw, ("npz", *(_file_key(path) if path.exists() else (str(path),)), split)
    root = spec.root_path()
    assert root is not None
    if not root.exists():
        raise UsageError(f"{spec.dataset} folder not found: {root}; expected "
                         f"{expected_layout(spec.dataset)}")
    raw = read_cifar(root, spec.dataset, split)
    return raw, (spec.dataset, str(root.resolve()), split)


def _load_folder(spec: DataSpec, split: str) -> ImageData:
    root = spec.root_path()
    assert root is not None
    if spec.in_memory:
        raise UsageError("in_memory is not supported for imagefolder data (images differ in "
                         "size); leave in_memory unset and raise workers instead")
    files = scan_imagefolder(root, split)
    if split == "val" and (root / "train").is_dir():
        train_classes = tuple(sorted(d.name for d in (root / "train").iterdir() if d.is_dir()))
        if train_classes != files.classes:
            raise UsageError(f"{root}: val/ and train/ have different class folders "
                             f"({len(files.classes)} vs {len(train_classes)}); labels would not "
                             "match, make them the same")
    if spec.max_images is not None:
        files = files.select(stratified_first(files.labels, spec.max_images))
    if len(files.files) == 0:
        raise UsageError(f"{root / split} has no images (extensions: .jpg .jpeg .png ...); "
                         f"expected {expected_layout('imagefolder')}")
    return LoaderImageData(spec, split, folder_loader(files), files.labels, files.classes)
