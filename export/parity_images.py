"""Parity images: the held-out images engine parity runs on (write, read, the stored ones).

The export stores ``parity_images.npz`` (uint8 RGB NHWC, already resized and center-cropped
to the preprocessing crop, with labels) and lists it in the manifest's ``files``;
``build-engines`` reads it back, or an .npz the user names (images + labels, or the shared
CIFAR JPEG format). Torch-free.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, ExportError, ExportUsageError, reason
from .manifest import Manifest, atomic_write_bytes
from .preprocess import preprocess_images

PARITY_IMAGES_KEY = "parity_images"        # key in the manifest's top-level "files"
PARITY_IMAGES_FILE = "parity_images.npz"
CROPPED = "cropped"   # stage of stored images: already resized + center-cropped to "crop"

__all__ = ["PARITY_IMAGES_FILE", "PARITY_IMAGES_KEY", "ParityImages", "as_parity_images",
           "load_parity_images", "model_inputs", "read_parity_images", "stored_parity_images",
           "write_parity_images"]


@dataclass(frozen=True)
class ParityImages:
    """Held-out images for engine parity: uint8 RGB HWC, with labels where known.

    ``cropped``: the images are already resized and center-cropped to the manifest's
    ``preprocessing.crop`` (as the export stores them), so parity only normalizes them and
    resizes them to each subnet's resolution; otherwise the full preprocessing runs.
    """

    images: np.ndarray | Sequence[np.ndarray]
    labels: np.ndarray | None
    cropped: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)



def write_parity_images(path: str | os.PathLike[str], images: np.ndarray,
                        labels: np.ndarray | None, *, crop: int) -> Path:
    """Store held-out images for engine parity (atomic): uint8 RGB NHWC, already resized and
    center-cropped to ``crop`` (the stage :class:`ParityImages` calls ``cropped``)."""
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[1:] != (crop, crop, 3):
        raise ExportError(f"parity images must be uint8 [N, {crop}, {crop}, 3]; got "
                          f"{imgs.dtype} {list(imgs.shape)}")
    arrays: dict[str, np.ndarray] = {"images": imgs, "stage": np.array(CROPPED),
                                     "crop": np.array(crop)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    out = Path(path)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle kw
    atomic_write_bytes(out, buf.getvalue())
    return out


def _evenly(n: int, limit: int) -> np.ndarray:
    return np.linspace(0, n - 1, min(limit, n)).astype(int)


def _open_npz(p: Path) -> Any:
    if not p.is_file():
        raise ExportUsageError(f"parity image file {p} does not exist")
    hint = ("pass an .npz with images (uint8 NHWC) + labels, or the shared JPEG format")
    try:
        if not zipfile.is_zipfile(p):
            raise ExportUsageError(f"{p} is not an .npz file (numpy's zip format); {hint}")
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ExportUsageError(f"{p} is not a readable .npz of images ({reason(e)}); {hint}") from None


def read_parity_images(path: str | os.PathLike[str], limit: int = 500,
                       split: str = "test") -> ParityImages:
    """Held-out images for engine parity from an .npz: ``images`` (uint8 NHWC) + ``labels``
    (optionally ``stage="cropped"``, as the export stores them), or the shared JPEG format
    (``<split>_jpeg`` + ``<split>_offsets`` + ``<split>_labels``); at most ``limit`` images,
    taken evenly over the file."""
    p = Path(path)
    with _open_npz(p) as z:
        try:
            if "images" in z.files:
                imgs = z["images"]
                labels = np.asarray(z["labels"]) if "labels" in z.files else None
                cropped = "stage" in z.files and str(z["stage"]) == CROPPED
                if cropped and (imgs.ndim != 4 or imgs.dtype != np.uint8):
                    raise ExportUsageError(f"{p}: stored parity images must be uint8 NHWC; "
                                           f"got {imgs.dtype} {list(imgs.shape)}")
                idx = _evenly(len(imgs), limit)
                return ParityImages(imgs[idx] if cropped else [imgs[i] for i in idx],
                                    None if labels is None else labels[idx], cropped,
                                    str(p))
            key = f"{split}_jpeg"
            if key not in z.files:
                raise ExportUsageError(f"{p} holds neither 'images' nor '{key}'; pass an .npz "
                                       "with images (uint8 NHWC) + labels, or the shared JPEG "
                                       "format")
            jpeg, off, labels = z[key], z[f"{split}_offsets"], z[f"{split}_labels"]
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise ExportUsageError(f"{p}: cannot read the parity images ({reason(e)})") from None
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise BackendUnavailableError("decoding JPEG parity images needs Pillow: "
                                      "`pip install pillow`") from e
    idx = _evenly(len(labels), limit)
    try:
        out = [np.asarray(Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes()))
                          .convert("RGB")) for i in idx]
    except (UnidentifiedImageError, OSError) as e:
        raise ExportUsageError(f"{p}: a JPEG in '{key}' cannot be decoded ({e})") from e
    return ParityImages(out, np.asarray(labels)[idx], False, str(p))


def load_parity_images(path: str | os.PathLike[str], limit: int = 500,
                       split: str = "test") -> tuple[list[np.ndarray], np.ndarray | None]:
    """:func:`read_parity_images` as (list of images, labels or None)."""
    data = read_parity_images(path, limit, split)
    return list(data.images), data.labels


def stored_parity_images(manifest: Manifest, limit: int = 500) -> ParityImages | None:
    """The parity images the export stored (``files.parity_images``), at most ``limit``;
    None for exports without them (written before they were stored)."""
    entry = manifest.files.get(PARITY_IMAGES_KEY)
    if entry is None:
        return None
    data = read_parity_images(manifest.file(entry), limit)
    crop = manifest.preprocessing.crop
    shape = tuple(np.asarray(data.images).shape[1:]) if data.cropped else None
    if shape != (crop, crop, 3):
        raise ExportError(f"{entry.path} holds images of shape {shape}, not the manifest's "
                          f"crop {crop}x{crop}x3; re-export, or pass --images")
    return ParityImages(data.images, data.labels, True, entry.path)


def as_parity_images(data: ParityImages | tuple[Any, Any]) -> ParityImages:
    """``data`` as :class:`ParityImages` (a tuple is (uint8 images, labels or None))."""
    if isinstance(data, ParityImages):
        return data
    images, labels = data
    return ParityImages(images, labels, cropped=False, source="images given")


def model_inputs(manifest: Manifest, images: np.ndarray | Sequence[np.ndarray], resolution: int,
                 *, cropped: bool) -> np.ndarray:
    """Float32 NCHW inputs of a subnet at ``resolution``: the manifest's preprocessing, or for
    ``cropped`` images (stored already resized + center-cropped, as parity_images.npz holds
    them) only normalization and the resize to ``resolution``."""
    pre = manifest.preprocessing.as_dict()
    if cropped:
        pre = {**pre, "resize": None, "resize_mode": "shorter_side"}
    return preprocess_images(images, pre, resolution)
