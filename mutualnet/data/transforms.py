"""Batched image ops on the batch's device: resize, crops, flips, color jitter, normalization.

Random parameters are drawn on the CPU from an explicit ``torch.Generator`` and only then
moved to the batch's device, so a batch is the same for a given seed on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .spec import COLOR_JITTER, RRC_RATIO


def resize_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize an NCHW (or CHW) batch to ``resolution`` x ``resolution`` on its own device.

    Bilinear, ``align_corners=True``, no antialias (SPEC section 3); returns ``x`` itself when
    it already has that size.
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise UsageError(f"resolution must be a positive integer, got {resolution!r}")
    if x.dim() not in (3, 4):
        raise UsageError(f"resize_to expects an NCHW or CHW tensor, got shape {tuple(x.shape)}")
    if x.shape[-2] == resolution and x.shape[-1] == resolution:
        return x
    batch = x if x.dim() == 4 else x.unsqueeze(0)
    if not batch.is_floating_point():
        batch = batch.float()
    out = F.interpolate(batch, size=(resolution, resolution), mode="bilinear",
                        align_corners=True, antialias=False)
    return out if x.dim() == 4 else out.squeeze(0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or 0-255 float) NCHW -> contiguous float32 ``(x / 255 - mean) / std``."""
    inv = 1.0 / (torch.tensor(std, dtype=torch.float32, device=x.device) * 255.0)
    shift = -torch.tensor(mean, dtype=torch.float32, device=x.device) * 255.0 * inv
    return torch.addcmul(shift.view(1, -1, 1, 1), x.contiguous().float(), inv.view(1, -1, 1, 1))


def part_of_batch(n: int, total: int | None, start: int) -> tuple[int, slice]:
    """``(total, rows)`` for ``n`` images that are rows ``start..start+n`` of a batch of
    ``total`` (None: the images are the whole batch)."""
    total = n if total is None else total
    if start < 0 or start + n > total:
        raise UsageError(f"rows {start}..{start + n} are not inside a batch of {total} images")
    return total, slice(start, start + n)


def pad_crop_flip(x: torch.Tensor, size: int, pad: int, gen: torch.Generator, *,
                  total: int | None = None, start: int = 0) -> torch.Tensor:
    """CIFAR augmentation of an NHWC uint8 batch: zero-pad ``pad``, random ``size`` crop, flip.

    One ``index_select`` over pixels does crop and flip together. Returns NHWC. With
    ``total``, ``x`` holds rows ``start..start+len(x)`` of a batch of ``total`` images: the
    random parameters are drawn for the whole batch and those rows used, so each part of a
    batch (one data-parallel rank's) gets exactly the crops it gets in the whole batch.
    """
    n, h, w, c = x.shape
    total, rows = part_of_batch(n, total, start)
    hp, wp = h + 2 * pad, w + 2 * pad
    oy = torch.randint(0, hp - size + 1, (total,), generator=gen)[rows]
    ox = torch.randint(0, wp - size + 1, (total,), generator=gen)[rows]
    flip = (torch.rand(total, generator=gen) < 0.5)[rows]
    ar = torch.arange(size)
    src_rows = oy[:, None] + ar[None, :]
    cols = ox[:, None] + torch.where(flip[:, None], size - 1 - ar[None, :], ar[None, :])
    pixel = (torch.arange(n)[:, None, None] * (hp * wp) + src_rows[:, :, None] * wp
             + cols[:, None, :]).reshape(-1)
    padded = F.pad(x, (0, 0, pad, pad, pad, pad)).reshape(n * hp * wp, c)  # NHWC: pad H, W
    return padded.index_select(0, pixel.to(x.device)).view(n, size, size, c)


def random_resized_boxes(n: int, h: int, w: int, scale: tuple[float, float],
                         gen: torch.Generator, attempts: int = 10) -> torch.Tensor:
    """Boxes (top, left, height, width) as torchvision's RandomResizedCrop draws them.

    Up to ``attempts`` draws per image, the first that fits wins; otherwise the central crop
    with the aspect ratio clamped to ``RRC_RATIO``. Returns float (n, 4).
    """
    area = float(h * w)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=gen))
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, attempts, generator=gen))
    bw = torch.round(torch.sqrt(target * aspect))
    bh = torch.round(torch.sqrt(target / aspect))
    ok = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
    first = torch.argmax(ok.to(torch.int8), dim=1)
    any_ok = ok.any(dim=1)
    pick = torch.arange(n)
    bw, bh = bw[pick, first], bh[pick, first]
    u = torch.rand(n, 2, generator=gen)
    top = torch.floor(u[:, 0] * (h - bh + 1))
    left = torch.floor(u[:, 1] * (w - bw + 1))
    # Fallback: whole image, aspect ratio clamped, centered.
    in_ratio = w / h
    if in_ratio < RRC_RATIO[0]:
        fw, fh = float(w), float(round(w / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
        fh, fw = float(h), float(round(h * RRC_RATIO[1]))
    else:
        fw, fh = float(w), float(h)
    fb = torch.tensor([(h - fh) // 2, (w - fw) // 2, fh, fw])
    boxes = torch.stack([top, left, bh, bw], dim=1)
    return torch.where(any_ok[:, None], boxes, fb[None, :])


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int,
                flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop every image of a float NCHW batch to its box and resize to ``size`` (bilinear).

    Done with one ``grid_sample`` (align_corners=False, like torchvision's crop + resize, but
    without antialiasing). ``flip`` (bool per image) mirrors horizontally at the same time.
    """
    n, _, h, w = x.shape
    if n == 0:  # affine_grid refuses an empty batch
        return x.new_zeros(0, x.shape[1], size, size)
    top, left, bh, bw = boxes.detach().cpu().to(torch.float32).unbind(1)
    sx = bw / w
    sy = bh / h
    if flip is not None:
        sx = torch.where(flip.cpu(), -sx, sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + bw) / w - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    grid = F.affine_grid(theta.to(x.device), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def color_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = COLOR_JITTER,
                 max_value: float = 255.0, *, total: int | None = None,
                 start: int = 0) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of a float NCHW batch in [0, max_value].

    Factors are uniform in [1 - strength, 1 + strength] per image; the order of the three
    ops is drawn per batch (torchvision draws it per image). ``total``/``start``: ``x`` is
    a part of a larger batch, as in :func:`pad_crop_flip`.
    """
    n = x.shape[0]
    total, rows = part_of_batch(n, total, start)
    draw = torch.rand(3, total, generator=gen)[:, rows]
    factors = (1 - strength + 2 * strength * draw).to(x.device)
    order = torch.randperm(3, generator=gen).tolist()
    for op in order:
        f = factors[op].view(n, 1, 1, 1)
        if op == 0:
            x = x * f
        elif op == 1:
            m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * f + m
        else:
            g = _gray(x)
            x = (x - g) * f + g
        x = x.clamp(0.0, max_value)
    return x


def resize_center_crop(x: torch.Tensor, resize: int | None, crop: int,
                       mode: str = "shorter_side") -> torch.Tensor:
    """Evaluation transform of a float NCHW batch: shorter side -> ``resize``, center ``crop``.

    ``resize`` None: no resize unless the image is smaller than ``crop`` (then it is resized
    up to ``crop``). ``mode`` "stretch": both sides -> ``resize`` (None: ``crop``), ignoring
    the aspect ratio, then the center crop. Bilinear with antialias, like torchvision's
    Resize on tensors.
    """
    h, w = x.shape[-2:]
    if mode == "stretch":
        side = crop if resize is None else resize
        nh, nw = side, side
    else:
        if resize is None and min(h, w) < crop:
            resize = crop
        nh, nw = h, w
        if resize is not None and min(h, w) != resize:
            nh, nw = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=True)
        h, w = nh, nw
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return x[..., top:top + crop, left:left + crop]
