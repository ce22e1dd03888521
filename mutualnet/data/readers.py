"""Readers for the supported on-disk formats; each returns a :class:`RawSplit` or a file list.

- npz: JPEG bytes packed as in shared/data/cifar10_jpeg.npz (``<split>_jpeg``,
  ``<split>_offsets``, ``<split>_labels``, ``classes``); train -> ``train``, val -> ``test``.
- CIFAR-10/100 python-pickle release, read with an unpickler that only builds numpy arrays
  (no arbitrary objects).
- ImageFolder: ``root/<split>/<class>/<image>``, classes sorted by name.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError, reason
from .spec import expected_layout

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
NPZ_ARRAYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets",
              "test_labels", "classes")


@dataclass(frozen=True)
class RawSplit:
    """One split of a small data set: either packed JPEG bytes or decoded NHWC uint8 pixels."""

    labels: np.ndarray                 # int64 (N,)
    classes: tuple[str, ...]
    jpeg: np.ndarray | None = None     # uint8 (bytes,), image i = jpeg[offsets[i]:offsets[i+1]]
    offsets: np.ndarray | None = None  # int64 (N + 1,)
    pixels: np.ndarray | None = None   # uint8 (N, H, W, 3)

    def __len__(self) -> int:
        return len(self.labels)

    def jpeg_bytes(self, i: int) -> bytes:
        assert self.jpeg is not None and self.offsets is not None
        return self.jpeg[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as HWC uint8 RGB."""
        if self.pixels is not None:
            return self.pixels[i]
        try:
            return decode_jpeg(self.jpeg_bytes(i))
        except (OSError, ValueError) as e:
            raise UsageError(f"image {i} of the npz is not a readable JPEG ({e}); rebuild the "
                             "file from intact images") from e

    def decode_all(self, chunk: int = 4096) -> np.ndarray:
        """All images as one (N, H, W, 3) uint8 array, decoded once.

        JPEGs go through torchvision's batched libjpeg-turbo decoder (pixel-identical to
        Pillow's on the shared data, about 3x faster); anything it rejects through Pillow.
        """
        if self.pixels is not None:
            return self.pixels
        first = self.image(0)
        out = np.empty((len(self), *first.shape), dtype=np.uint8)
        for start in range(0, len(self), chunk):
            stop = min(start + chunk, len(self))
            for i, img in zip(range(start, stop), self._decode_range(start, stop), strict=True):
                if img.shape != first.shape:
                    raise UsageError(f"image {i} is {img.shape[1]}x{img.shape[0]} but image 0 is "
                                     f"{first.shape[1]}x{first.shape[0]}; in-memory data needs "
                                     "one image size (set in_memory: false)")
                out[i] = img
        return out

    def _decode_range(self, start: int, stop: int) -> list[np.ndarray]:
        import torch

        assert self.jpeg is not None and self.offsets is not None
        data = [torch.from_numpy(self.jpeg[self.offsets[i]:self.offsets[i + 1]])
                for i in range(start, stop)]
        try:
            with warnings.catch_warnings():
                # Read-only buffers (we only read them) and torchvision's deprecation notice
                # of its image codecs; Pillow takes over where they are gone.
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                from torchvision.io import ImageReadMode, decode_jpeg

                decoded = decode_jpeg(data, mode=ImageReadMode.RGB)
            return [t.permute(1, 2, 0).numpy() for t in decoded]
        except (ImportError, RuntimeError):
            return [self.image(i) for i in range(start, stop)]

    def select(self, index: np.ndarray) -> RawSplit:
        """The images at ``index`` (JPEG bytes are re-packed, not decoded)."""
        if self.pixels is not None:
            return RawSplit(self.labels[index], self.classes, pixels=self.pixels[index])
        assert self.jpeg is not None and self.offsets is not None
        parts = [self.jpeg[self.offsets[i]:self.offsets[i + 1]] for i in index]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        jpeg = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        return RawSplit(self.labels[index], self.classes, jpeg=jpeg, offsets=offsets)


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def stratified_first(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` images, taken round-robin over classes in source order.

    Image k of every class comes before image k + 1 of any class, so any prefix is as balanced
    as the data allows. Returned sorted (source order).
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((labels, rank))  # by rank within class, then class
    return np.sort(order[:n])


# --------------------------------------------------------------------------- npz


def read_npz(path: Path, split: str) -> RawSplit:
    """One split of an npz in the shared JPEG format (val reads the ``test_*`` arrays)."""
    if not path.is_file():
        what = "is a folder, not an npz file" if path.is_dir() else "npz file not found"
        raise UsageError(f"{what}: {path}; expected {expected_layout('npz')}")
    prefix = "train" if split == "train" else "test"
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_ARRAYS if k not in z.files]
            if missing:
                raise UsageError(f"{path} lacks arrays {', '.join(missing)}; "
                                 f"expected {expected_layout('npz')}")
            jpeg, offsets = z[f"{prefix}_jpeg"], z[f"{prefix}_offsets"]
            labels, classes = z[f"{prefix}_labels"], z["classes"]
    except UsageError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"cannot read {path} as an npz archive ({reason(e)}); "
                         f"expected {expected_layout('npz')}") from None
    _check_packed(path, prefix, jpeg, offsets, labels, classes)
    return RawSplit(labels.astype(np.int64), tuple(str(c) for c in classes),
                    jpeg=jpeg.astype(np.uint8, copy=False), offsets=offsets.astype(np.int64))


def _check_packed(path: Path, prefix: str, jpeg: np.ndarray, offsets: np.ndarray,
                  labels: np.ndarray, classes: np.ndarray) -> None:
    def bad(why: str) -> UsageError:
        return UsageError(f"{path}: mismatched arrays: {why}; rebuild the file in the format "
                          "of shared/data/cifar10_jpeg.npz (see its README)")

    if jpeg.ndim != 1 or jpeg.dtype != np.uint8:
        raise bad(f"{prefix}_jpeg must be 1-D uint8, is {jpeg.dtype} {jpeg.shape}")
    if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise bad(f"{prefix}_offsets must be a 1-D integer array")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise bad(f"{prefix}_labels must be a 1-D integer array")
    if len(offsets) != len(labels) + 1:
        raise bad(f"{prefix}_offsets has {len(offsets)} entries, "
                  f"{prefix}_labels {len(labels)} (expected labels + 1)")
    if len(offsets) and (offsets[0] != 0 or offsets[-1] != len(jpeg)
                         or np.any(np.diff(offsets) <= 0)):
        raise bad(f"{prefix}_offsets must rise from 0 to len({prefix}_jpeg) = {len(jpeg)}")
    if classes.ndim != 1 or len(classes) == 0:
        raise bad("classes must be a non-empty 1-D array of names")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise bad(f"{prefix}_labels must lie in 0..{len(classes) - 1} (one per class name)")


# --------------------------------------------------------------------------- CIFAR pickle

_CIFAR = {
    # dataset: (folder name, train files, test file, meta file, label key, names key)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                "test_batch", "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta", "fine_labels",
                 "fine_label_names"),
}

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses any other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise UsageError(f"cannot read {path} as a CIFAR python batch ({e}); re-download the "
                         "python version of the data set") from e
    if not isinstance(obj, dict):
        raise UsageError(f"{path} is not a CIFAR python batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def cifar_folder(root: Path, dataset: str) -> Path:
    """The folder holding the pickle files: ``root`` itself or ``root/<release folder>``."""
    folder_name, train_files, *_ = _CIFAR[dataset]
    for cand in (root, root / folder_name):
        if (cand / train_files[0]).is_file():
            return cand
    raise UsageError(f"no {dataset} data in {root}: expected {expected_layout(dataset)}")


def read_cifar(root: Path, dataset: str, split: str) -> RawSplit:
    """One split of the CIFAR-10/100 python release (val = the test batch)."""
    folder = cifar_folder(root, dataset)
    _, train_files, test_file, meta_file, label_key, names_key = _CIFAR[dataset]
    files = train_files if split == "train" else (test_file,)
    data, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise UsageError(f"missing {path}: expected {expected_layout(dataset)}")
        batch = _load_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise UsageError(f"{path} lacks 'data' or {label_key!r}; expected {dataset} "
                             "python batches")
        x, y = np.asarray(batch["data"]), np.asarray(batch[label_key], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise UsageError(f"{path}: data must be (N, 3072) with N labels, got {x.shape} "
                             f"and {len(y)} labels")
        data.append(x.astype(np.uint8, copy=False))
        labels.append(y)
    meta_path = folder / meta_file
    if not meta_path.is_file():
        raise UsageError(f"missing {meta_path}: expected {expected_layout(dataset)}")
    names = _load_pickle(meta_path).get(names_key)
    if not names:
        raise UsageError(f"{meta_path} lacks {names_key!r}")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    pixels = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate(labels)
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise UsageError(f"{folder}: labels outside 0..{len(classes) - 1}")
    return RawSplit(y, classes, pixels=np.ascontiguousarray(pixels))


# --------------------------------------------------------------------------- ImageFolder

#: Decoded-pixel cap per image file, checked from the header (= export.preprocess's default).
MAX_PIXELS = 50_000_000


def read_image_file(path: Path, max_pixels: int = MAX_PIXELS) -> Any:
    """One image file as an RGB PIL image, by the rules of ``export.preprocess.read_image``
    (which the training side may not import; keep the two in step): pixel cap from the
    header before decoding, 16/32-bit integer images scaled by their bit depth, float
    images (0..1) by 255, other modes converted; every problem is one UsageError line."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise UsageError(f"image {path} is {w} x {h} = {w * h:,} pixels, over the "
                                     f"limit of {max_pixels:,}; shrink or remove it")
                img.load()
                return _rgb_image(img)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on bad files
        why = " ".join(str(e).split()) or type(e).__name__
        raise UsageError(f"cannot read image {path}: {why}; remove or replace it") from e


def _rgb_image(img: Any) -> Any:
    from PIL import Image

    mode = img.mode
    if mode != "F" and not mode.startswith("I"):
        return img.convert("RGB")
    a = np.asarray(img).astype(np.float64)
    if mode == "F":
        if not np.isfinite(a).all() or (a.size and (a.min() < 0 or a.max() > 1)):
            raise UsageError(f"float image {img.filename} has samples outside 0..1; "
                             "save it as an 8-bit image")
        top = 1.0
    else:
        tags = getattr(img, "tag_v2", {})               # TIFF BitsPerSample, SampleFormat
        bits, fmt = (v[0] if isinstance(v, tuple) and v else v
                     for v in (tags.get(258), tags.get(339)))
        if mode.startswith("I;16"):
            bits, fmt = 16, 1
        top = 2.0 ** (int(bits) - (fmt == 2) if bits else 16 if img.format == "PNG" else 31) - 1
        if a.size and a.min() < 0:
            raise UsageError(f"image {img.filename} holds negative samples; save it as 8-bit")
    gray = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


@dataclass(frozen=True)
class FolderSplit:
    """File list of one ImageFolder split."""

    files: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def select(self, index: np.ndarray) -> FolderSplit:
        return FolderSplit(tuple(self.files[i] for i in index), self.labels[index], self.classes)


def scan_imagefolder(root: Path, split: str,
                     is_image: Callable[[Path], bool] | None = None) -> FolderSplit:
    """``root/<split>/<class>/<image>``; classes are the sorted sub-folder names."""
    if not root.is_dir():
        raise UsageError(f"image folder not found: {root}; expected "
                         f"{expected_layout('imagefolder')}")
    folder = root / split
    if not folder.is_dir():
        raise UsageError(f"{root} has no {split}/ folder; expected "
                         f"{expected_layout('imagefolder')}")
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))
    if not classes:
        raise UsageError(f"{folder} has no class folders; expected "
                         f"{expected_layout('imagefolder')}")
    check = is_image or (lambda p: p.suffix.lower() in IMAGE_EXTENSIONS)
    files: list[Path] = []
    labels: list[int] = []
    for k, c in enumerate(classes):
        found = sorted(p for p in (folder / c).rglob("*") if p.is_file() and check(p))
        files += found
        labels += [k] * len(found)
    return FolderSplit(tuple(files), np.asarray(labels, dtype=np.int64), classes)
