"""The :class:`ImageData` family: one split of a data set that yields normalized batches.

- :class:`TensorImageData`: the whole split as one uint8 tensor (decoded once), copied to the
  batch's device on first use and augmented there with batched torch ops.
- :class:`LoaderImageData`: a torch DataLoader with workers and pinned memory over per-image
  torchvision transforms (ImageFolder; also the npz/CIFAR sets with ``in_memory: false``).

Both are deterministic for a given (seed, epoch): the shuffle order and every random
augmentation parameter derive from those two numbers only (and the image index), never from
global RNG state or the number of workers.

Data parallel: ``batches(..., rank=r, world_size=k)`` yields only rank r's rows of each global
batch (:func:`rank_rows`), loading and augmenting just those images; the global order and
every random parameter are those of ``world_size=1``, so the ranks' parts, concatenated in
rank order, are exactly the single-process batch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from .readers import FolderSplit, RawSplit, read_image_file
from .spec import CIFAR_PAD, COLOR_JITTER, RRC_RATIO, RRC_SCALE, DataSpec, Stats
from .transforms import (
    color_jitter,
    crop_resize,
    normalize,
    pad_crop_flip,
    part_of_batch,
    random_resized_boxes,
    resize_center_crop,
)

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A 63-bit seed mixed from (seed, epoch, salt) so nearby inputs give unrelated streams."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9
         + int(salt) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    x = (x * 0xD6E8FEEB86659FD9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def _generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, salt))


def _check_batch_args(batch_size: int, limit: int | None, rank: int, world_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UsageError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise UsageError(f"world_size must be a positive integer, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise UsageError(f"rank must be an integer in [0, {world_size - 1}] for world_size "
                         f"{world_size}, got {rank!r}")


def rank_rows(n: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s rows of a global batch of ``n``: contiguous, in rank order, sizes
    differing by at most one (equal when ``world_size`` divides ``n``; may be empty when
    ``n < world_size``)."""
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


def _order(n: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=_generator(seed, epoch, 1)) if shuffle else torch.arange(n)


def _spans(n: int, batch_size: int, drop_last: bool, limit: int | None) -> Iterator[slice]:
    total = n if limit is None else min(n, limit)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        if drop_last and stop - start < batch_size:
            return
        yield slice(start, stop)


class ImageData:
    """One split of a data set. ``batches`` yields ``(x, y)``: x float32 NCHW normalized,
    ``image_size`` square, on the requested device; y int64 labels.

    ``rank``/``world_size`` (data parallel): every global batch of ``batch_size`` (after
    ``limit`` and ``drop_last``) is yielded as this rank's :func:`rank_rows` of it only; every
    rank gets the same number of batches (a part can be empty when a batch is smaller than
    ``world_size``)."""

    def __init__(self, spec: DataSpec, split: str, labels: np.ndarray,
                 classes: tuple[str, ...]) -> None:
        self.spec = spec
        self.split = split
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.mean: Stats = spec.mean
        self.std: Stats = spec.std
        self.image_size = spec.image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.spec.dataset!r}, split={self.split!r}, "
                f"images={len(self)}, classes={self.num_classes}, size={self.image_size})")

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def batches(self, batch_size: int, *, augment: bool, shuffle: bool, seed: int = 0,
                epoch: int = 0, drop_last: bool = False, device: str | torch.device = "cpu",
                limit: int | None = None, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]:
        raise NotImplementedError


# --------------------------------------------------------------------------- in memory


class TensorImageData(ImageData):
    """All images decoded once into an (N, H, W, 3) uint8 tensor; batches built on-device."""

    def __init__(self, spec: DataSpec, split: str, pixels: np.ndarray, labels: np.ndarray,
                 classes: tuple[str, ...]) -> None:
        super().__init__(spec, split, labels, classes)
        self._pixels: dict[str, torch.Tensor] = {"cpu": torch.from_numpy(np.ascontiguousarray(pixels))}
        self._labels_on: dict[str, torch.Tensor] = {"cpu": self.labels}

    @property
    def pixels(self) -> torch.Tensor:
        """The decoded images, NHWC uint8 on the CPU."""
        return self._pixels["cpu"]

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._pixels:
            self._pixels[key] = self._pixels["cpu"].to(device)
            self._labels_on[key] = self.labels.to(device)
        return self._pixels[key], self._labels_on[key]

    def batches(self, batch_size: int, *, augment: bool, shuffle: bool, seed: int = 0,
                epoch: int = 0, drop_last: bool = False, device: str | torch.device = "cpu",
                limit: int | None = None, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]:
        _check_batch_args(batch_size, limit, rank, world_size)
        dev = torch.device(device)
        pixels, labels = self._on(dev)
        order = _order(len(self), shuffle, seed, epoch)
        gen = _generator(seed, epoch, 2)
        for span in _spans(len(self), batch_size, drop_last, limit):
            total = span.stop - span.start
            rows = rank_rows(total, rank, world_size)
            idx = order[span][rows].to(dev)
            x = pixels.index_select(0, idx)
            yield (self._transform(x, augment, gen, total=total, start=rows.start),
                   labels.index_select(0, idx))

    def _transform(self, x: torch.Tensor, augment: bool, gen: torch.Generator, *,
                   total: int | None = None, start: int = 0) -> torch.Tensor:
        """NHWC uint8 -> normalized float NCHW at ``image_size``. ``x`` holds rows
        ``start..start+len(x)`` of a batch of ``total`` (None: all of it); the random
        parameters are drawn for the whole batch, so ``gen`` advances the same for any part."""
        spec, size = self.spec, self.image_size
        total, rows = part_of_batch(len(x), total, start)
        if augment and spec.augment == "cifar":
            if x.shape[1] != size or x.shape[2] != size:
                x = resize_center_crop(x.permute(0, 3, 1, 2).float(), size, size)
                x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            x = pad_crop_flip(x, size, CIFAR_PAD, gen, total=total, start=start)
            x = x.permute(0, 3, 1, 2)
        elif augment:
            f = x.permute(0, 3, 1, 2).float()
            boxes = random_resized_boxes(total, f.shape[2], f.shape[3],
                                         RRC_SCALE[spec.augment], gen)[rows]
            flip = (torch.rand(total, generator=gen) < 0.5)[rows]
            f = crop_resize(f, boxes, size, flip)  # parameters stay on the CPU
            x = color_jitter(f, gen, COLOR_JITTER, total=total, start=start)
        else:
            x = x.permute(0, 3, 1, 2)
            if spec.eval_resize is not None or x.shape[2] != size or x.shape[3] != size:
                x = resize_center_crop(x.float(), spec.eval_resize, size, spec.resize_mode)
        return normalize(x, self.mean, self.std).contiguous()


# --------------------------------------------------------------------------- DataLoader


def pil_transform(spec: DataSpec, augment: bool) -> Callable[[Any], torch.Tensor]:
    """The per-image torchvision pipeline (PIL image -> normalized CHW float tensor)."""
    from torchvision import transforms as T

    size = spec.image_size
    steps: list[Any]
    if augment and spec.augment == "cifar":
        steps = [T.RandomCrop(size, padding=CIFAR_PAD), T.RandomHorizontalFlip()]
        if spec.eval_resize is not None:
            steps.insert(0, T.Resize(size))
    elif augment:
        steps = [T.RandomResizedCrop(size, scale=RRC_SCALE[spec.augment], ratio=RRC_RATIO),
                 T.ColorJitter(COLOR_JITTER, COLOR_JITTER, COLOR_JITTER),
                 T.RandomHorizontalFlip()]
    else:
        resize = spec.eval_resize
        if resize is not None and spec.resize_mode == "stretch":
            steps = [T.Resize((resize, resize))]  # whole image, aspect ratio not kept
        else:
            steps = [T.Resize(resize)] if resize is not None else []
        steps.append(T.CenterCrop(size))
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)


class _PerImage(torch.utils.data.Dataset):
    """Item i = (transformed image, label); the transform's randomness is seeded by
    (seed, epoch, i), so results do not depend on worker count or on which worker ran it."""

    def __init__(self, load: Callable[[int], Any], labels: torch.Tensor,
                 transform: Callable[[Any], torch.Tensor], seed: int, epoch: int,
                 augment: bool) -> None:
        self.load, self.labels, self.transform = load, labels, transform
        self.seed, self.epoch, self.augment = seed, epoch, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.load(i)
        if not self.augment:
            return self.transform(img), self.labels[i]
        # torchvision's transforms draw from the default CPU generator: seed it for this image
        # and put the caller's state back (cheaper than torch.manual_seed, which seeds every
        # device type).
        gen = torch.default_generator
        state = gen.get_state()
        try:
            gen.manual_seed(epoch_seed(self.seed, self.epoch, 1000 + i))
            return self.transform(img), self.labels[i]
        finally:
            gen.set_state(state)


class LoaderImageData(ImageData):
    """Per-image decode + torchvision transforms in DataLoader workers, pinned memory."""

    def __init__(self, spec: DataSpec, split: str, load: Callable[[int], Any],
                 labels: np.ndarray, classes: tuple[str, ...]) -> None:
        super().__init__(spec, split, labels, classes)
        self._load = load

    def batches(self, batch_size: int, *, augment: bool, shuffle: bool, seed: int = 0,
                epoch: int = 0, drop_last: bool = False, device: str | torch.device = "cpu",
                limit: int | None = None, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]:
        _check_batch_args(batch_size, limit, rank, world_size)
        dev = torch.device(device)
        order = _order(len(self), shuffle, seed, epoch)
        parts = []
        for span in _spans(len(self), batch_size, drop_last, limit):
            part = order[span][rank_rows(span.stop - span.start, rank, world_size)]
            parts.append(part.tolist())
        loaded = [p for p in parts if p]
        if not loaded:
            yield from (self._empty(dev) for _ in parts)
            return
        ds = _PerImage(self._load, self.labels, pil_transform(self.spec, augment), seed, epoch,
                       augment)
        workers = self.spec.workers
        loader = torch.utils.data.DataLoader(
            ds, batch_sampler=loaded, num_workers=workers, pin_memory=dev.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if workers > 0 else None)
        it = iter(loader)
        try:
            for p in parts:
                if not p:
                    yield self._empty(dev)
                    continue
                x, y = next(it)
                yield (x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))
            return
        except UsageError as e:
            # A worker's error arrives with its traceback in the message: keep the last line.
            message = str(e).strip().splitlines()[-1].split("UsageError: ", 1)[-1]
        _close_loader(it)
        raise UsageError(message)

    def _empty(self, device: torch.device) -> Batch:
        """A rank's empty part of a batch smaller than world_size."""
        size = self.image_size
        return (torch.zeros(0, 3, size, size, device=device),
                torch.zeros(0, dtype=torch.int64, device=device))


def _close_loader(it: Any) -> None:
    """Shut a DataLoader iterator's workers down now, after a worker failed.

    Waits for the index queues' feeder threads before the queues can be garbage-collected:
    dropping them while a feeder still closes its pipe makes CPython close the same file
    descriptor twice ("Exception in thread QueueFeederThread ... Bad file descriptor").
    Uses DataLoader internals defensively; without them it only drops the iterator.
    """
    try:
        it._shutdown_workers()
        for q in getattr(it, "_index_queues", ()):
            feeder = getattr(q, "_thread", None)
            if feeder is not None:
                feeder.join(timeout=5)
    except Exception:  # pragma: no cover - internals changed; plain teardown still works
        pass


def folder_loader(split: FolderSplit) -> Callable[[int], Any]:
    files = split.files

    def load(i: int) -> Any:
        return read_image_file(files[i])

    return load


def raw_loader(split: RawSplit) -> Callable[[int], Any]:
    """PIL images from a RawSplit (JPEG decoded per call; pixels wrapped)."""

    def load(i: int) -> Any:
        from PIL import Image

        if split.pixels is not None:
            return Image.fromarray(split.pixels[i])
        return Image.open(io.BytesIO(split.jpeg_bytes(i))).convert("RGB")

    return load
