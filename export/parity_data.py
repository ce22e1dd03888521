"""Where export parity and BN calibration get their images, labelled or not (torch side).

Parity compares every artifact with the supernet on the same images; labels only add the
accuracy columns. :func:`parity_data` picks the source from ``--data`` and the checkpoint:

- ``labelled``: the checkpoint's data set, or what ``--data`` names (a data set name,
  ``NAME:PATH``, an ``.npz``, an ImageFolder with ``train/`` and ``val/``): accuracy too;
- ``folder``: ``--data DIR`` where DIR holds image files itself (no ``train/`` or ``val/``,
  no class folders): the photos, without labels; BN calibration may read them too;
- ``bundled``: no ``--data`` and a checkpoint that records no data set (an import without
  ``--dataset-dir``): the bundled CIFAR-10 test images, without labels;
- ``synthetic``: ``--data synthetic``: seeded random smooth images, without labels.

Unlabelled sources keep the checkpoint's preprocessing (its crop, resize and statistics):
only the images change. Bundled and synthetic images cannot calibrate BN statistics.

```python
from export.parity_data import parity_data
data = parity_data(ckpt.config, "photos/", eval_images=8, calib_images=0)
data.labelled, data.describe()   # False, '8 unlabelled images from photos/'
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportUsageError

SYNTHETIC = "synthetic"
KINDS = ("labelled", "folder", "bundled", "synthetic")
NO_LABELS = "no labels"   # what the accuracy columns say for unlabelled sources
UNLABELLED_CLASS = ("unlabelled",)

__all__ = ["KINDS", "NO_LABELS", "SYNTHETIC", "ParityData", "image_files", "labelled_data",
           "parity_data", "plain_image_folder", "synthetic_pixels"]


@dataclass(frozen=True)
class ParityData:
    """The images parity (``val``) and BN calibration (``train``) read, and what they are.

    ``spec``: the checkpoint's preprocessing (the manifest records it); ``val`` / ``train``:
    :class:`mutualnet.data.ImageData` (``train`` None where nothing can calibrate);
    ``labelled``: whether ``val``'s labels are real (else they are zeros, never used)."""

    kind: str
    spec: Any
    val: Any
    train: Any
    labelled: bool
    where: str = ""

    @property
    def classes(self) -> tuple[str, ...]:
        """The data's class names (empty without labels)."""
        return tuple(self.val.classes) if self.labelled else ()

    def describe(self) -> str:
        """What parity runs on, e.g. ``8 unlabelled images from photos``."""
        n = len(self.val)
        return {"labelled": f"{n} labelled held-out images",
                "folder": f"{n} unlabelled images from {self.where}",
                "bundled": f"{n} bundled CIFAR-10 test images, labels not used",
                "synthetic": f"{n} synthetic images, seeded random smooth patterns"}[self.kind]

    def note(self) -> str | None:
        """The sentence the export report shows for an unlabelled source (None: labelled)."""
        if self.labelled:
            return None
        why = ("the checkpoint records no data set and no --data was given; "
               if self.kind == "bundled" else "")
        return (f"{why}no labels: parity compares the artifacts with the supernet on "
                f"{self.describe()} (agreement and logit differences; the accuracy columns "
                f"say '{NO_LABELS}'); pass --data with a labelled set for accuracy")


# --------------------------------------------------------------------------- sources

def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not in sub-folders), sorted by name."""
    from mutualnet.data.readers import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def plain_image_folder(data: str) -> Path | None:
    """``data`` as a folder of unlabelled images: a directory without ``train/`` or ``val/``
    that holds image files itself; None for anything else (a labelled source)."""
    path = Path(data).expanduser()
    if not path.is_dir() or (path / "train").is_dir() or (path / "val").is_dir():
        return None
    return path if image_files(path) else None


def _model_spec(config: Any, root: str) -> Any:
    """The checkpoint's DataSpec; ``root`` stands in where its data set records none (the
    spec then only carries preprocessing: crop, resize, statistics)."""
    if config.dataset != "cifar10_bundled" and not config.dataset_dir:
        config = config.replace(dataset_dir=root)
    return config.data_spec()


def _needs_no_calibration(kind: str, calib_images: int) -> None:
    if calib_images > 0:
        raise ExportUsageError(
            f"BN calibration needs real training images and the {kind} images are not; pass "
            "--calib-images 0 to keep the checkpoint's BN statistics, or --data a folder of "
            "images (or a labelled data set) to calibrate on")


def _folder_data(config: Any, folder: Path, eval_images: int, calib_images: int) -> ParityData:
    from mutualnet.data import LoaderImageData
    from mutualnet.data.datasets import folder_loader
    from mutualnet.data.readers import FolderSplit

    spec = _model_spec(config, str(folder))
    files = tuple(image_files(folder))

    def split(n: int) -> Any:
        return FolderSplit(files[:n], np.zeros(min(n, len(files)), np.int64), UNLABELLED_CLASS)

    val_split = split(eval_images)
    val = LoaderImageData(spec, "val", folder_loader(val_split), val_split.labels,
                          UNLABELLED_CLASS)
    train = None
    if calib_images > 0:
        train_split = split(len(files))
        train = LoaderImageData(spec, "train", folder_loader(train_split), train_split.labels,
                                UNLABELLED_CLASS)
    return ParityData("folder", spec, val, train, False, str(folder))


def _in_memory(kind: str, spec: Any, pixels: np.ndarray) -> ParityData:
    from mutualnet.data import TensorImageData

    val = TensorImageData(spec, "val", pixels, np.zeros(len(pixels), np.int64), UNLABELLED_CLASS)
    return ParityData(kind, spec, val, None, False, kind)


def _bundled_data(config: Any, eval_images: int, calib_images: int) -> ParityData:
    from mutualnet.data import BUNDLED_NPZ
    from mutualnet.data.readers import read_npz

    _needs_no_calibration("bundled CIFAR-10", calib_images)
    raw = read_npz(BUNDLED_NPZ, "val")
    idx = np.linspace(0, len(raw) - 1, min(eval_images, len(raw))).astype(int)
    return _in_memory("bundled", _model_spec(config, str(BUNDLED_NPZ.parent)),
                      raw.select(idx).decode_all())


def synthetic_pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded uint8 RGB images ``size`` x ``size``: random colour fields at 4 x 4
    upsampled bilinearly, plus noise (smooth enough to give varied predictions)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=gen) * 255.0
    smooth = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    noisy = smooth + torch.randn(n, 3, size, size, generator=gen) * 16.0
    return noisy.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _synthetic_data(config: Any, eval_images: int, calib_images: int, seed: int) -> ParityData:
    _needs_no_calibration("synthetic", calib_images)
    spec = _model_spec(config, ".")
    return _in_memory("synthetic", spec, synthetic_pixels(eval_images, spec.image_size, seed))


def labelled_data(spec: Any, *, max_train_images: int | None, eval_images: int,
                  calib_images: int) -> ParityData:
    """A labelled data set: its val split for parity, its train split (at most the images
    calibration reads, balanced over classes) for BN calibration."""
    from mutualnet.data import load_data

    limits = [n for n in (max_train_images, calib_images) if n]
    train_spec = dataclasses.replace(spec, max_images=min(limits) if limits else None)
    train = load_data(train_spec, "train") if calib_images > 0 else None
    val = load_data(dataclasses.replace(spec, max_images=eval_images), "val")
    return ParityData("labelled", spec, val, train, True)


def parity_data(config: Any, data: str | None, *, eval_images: int, calib_images: int,
                seed: int = 0) -> ParityData | None:
    """The unlabelled source ``data`` names (``synthetic``, a plain folder of images), or
    the bundled images for a checkpoint without a data set and no ``data``; None where the
    data is labelled (then :func:`labelled_data` on the resolved spec)."""
    if data is not None and data.strip().lower() == SYNTHETIC:
        return _synthetic_data(config, eval_images, calib_images, seed)
    if data:
        folder = plain_image_folder(data)
        return None if folder is None else _folder_data(config, folder, eval_images,
                                                         calib_images)
    if config.dataset == "imagefolder" and not config.dataset_dir:
        return _bundled_data(config, eval_images, calib_images)
    return None
