"""All preprocessing of the device side: decoding image files and the evaluation transform.

Torch-free (numpy, Pillow for decoding). The transform is the one the supernet was
evaluated with (``mutualnet.data.transforms``): shorter side -> ``resize`` (bilinear with
antialias; ``resize_mode: stretch``: the whole image to ``resize`` x ``resize``), center
``crop``, mean/std, then bilinear with ``align_corners=True`` to the subnet's resolution.

Three implementations compute it, to float32 precision alike:

- :func:`preprocess_reference`: numpy only. The three resampling steps of an axis are
  composed into one linear map (a few taps per output pixel), applied tap by tap.
- :func:`preprocess_images` on uint8 images (H x W x 3 or 4 with packed pixels, or
  grayscale H x W), when the compiled kernel is there (:func:`fast_backend` ``"c"``): the
  same composed maps, each output reading K consecutive inputs (zero weights pad the
  shorter ones), run by ``export/_resample.c`` (plain C, loaded with ctypes; ``pip install``
  builds it, optional: without a compiler the install still succeeds). Pass 1, the rows,
  from the uint8 image over only the columns the crop keeps, contiguous over (x, c); pass 2,
  the columns (unrolled per tap count), written planar with the normalization folded in;
  float32 accumulation in the reference's tap order. One scratch buffer per thread.
- :func:`preprocess_images` otherwise (other dtypes or layouts, the library not built or not
  loadable, or ``MUTUALNET_PREPROCESS=numpy``): numpy + BLAS, the same composed map of each
  axis, blocked.
  The rows: 4 outputs per block read one run of input rows (exactly the rows they use, and
  only the columns the crop keeps), gathered from the uint8 image and converted to float32
  once, one batched matrix product. The transposing copy to planar float scales by the
  normalization. The columns: 8 outputs per block read a regular strided window (no copy),
  one batched product over a 3r-row matrix per block (all three channels at once), written
  into the NCHW output; the normalization's shift is added last (exact: every composed row
  sums to one).

The maps of both fast paths are cached per image size under a byte budget
(:data:`CACHE_BYTES`).

Library resizes of uint8 images are not used: they round to whole grey levels, about 1e-2
after normalization, far over the parity tests' 2e-5. On a 224 px photo at 128 px, OpenCV 5's
float ``resize`` + ``warpAffine`` (the previous path for enlargements) took 1.15x this path
alone, and the same inside a request (within noise); an ONNX Runtime graph of the same
blocked products (Gather, MatMul) took 2.5x; Pillow's float mode and an ONNX Runtime Resize
(antialias) graph were measured slower before. The numpy + BLAS path is bound by its many
small BLAS calls and by the ONNX Runtime run evicting its data from the caches. On a 224 px
image at 128 px the C kernel took 0.19 / 0.23 ms (resize 256 + crop 224 / stretch) against
the numpy + BLAS path's 1.0 ms (minima, interleaved in one process, 2 busy cores).

:func:`read_image` decodes one file to uint8 RGB with a pixel cap checked from the header.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import struct
import threading
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import BackendUnavailableError, ExportError, ExportUsageError

__all__ = ["BACKEND_ENV", "CACHE_BYTES", "DEFAULT_MAX_PIXELS", "RESIZE_MODES", "fast_backend",
           "preprocess_images", "preprocess_reference", "read_image"]

RESIZE_MODES = ("shorter_side", "stretch")
#: Decoded-pixel cap of :func:`read_image` (width x height), checked before decoding.
DEFAULT_MAX_PIXELS = 50_000_000
_T = TypeVar("_T")


# ============================================================================ geometry

def _crop_geometry(h: int, w: int, resize: int | None, crop: int,
                   mode: str = "shorter_side") -> tuple[int, int, int, int]:
    """(resized h, resized w, top, left) of the evaluation transform for an h x w image.

    Mirrors the training side: shorter side -> ``resize`` (antialiased bilinear), then a
    center ``crop``; with ``resize`` None an image is only resized when smaller than ``crop``.
    ``mode`` "stretch": both sides -> ``resize`` (None: ``crop``), aspect ratio not kept.
    """
    if mode == "stretch":
        h = w = crop if resize is None else resize
    else:
        if resize is None and min(h, w) < crop:
            resize = crop
        if resize is not None and min(h, w) != resize:
            h, w = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    return h, w, int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))


def _plan(pre: dict[str, Any]) -> _Plan:
    """The parsed ``preprocessing`` (cached: a request should not re-parse the manifest)."""
    key = (pre.get("crop"), pre.get("resize"), pre.get("resize_mode"), pre.get("input_scale"),
           tuple(pre.get("mean") or ()), tuple(pre.get("std") or ()), pre.get("channel_order"))
    try:
        return _cached_plan(key)
    except TypeError:           # an unhashable value: parse it once more, uncached
        return _Plan(pre)


@lru_cache(maxsize=32)
def _cached_plan(key: tuple[Any, ...]) -> _Plan:
    names = ("crop", "resize", "resize_mode", "input_scale", "mean", "std", "channel_order")
    return _Plan(dict(zip(names, key, strict=True)))


class _Plan:
    """What one manifest's ``preprocessing`` asks for."""

    def __init__(self, pre: dict[str, Any]) -> None:
        self.crop = int(pre["crop"])
        self.resize: int | None = None if pre.get("resize") is None else int(pre["resize"])
        self.mode = pre.get("resize_mode") or "shorter_side"
        if self.mode not in RESIZE_MODES:
            raise ExportUsageError(f"unknown preprocessing resize_mode {self.mode!r}; known: "
                                   f"{', '.join(RESIZE_MODES)} (the manifest is newer than "
                                   "this runtime: update mutualnet)")
        scale = 1.0 / float(pre["input_scale"])
        mean = np.asarray(pre["mean"], dtype=np.float64)
        std = np.asarray(pre["std"], dtype=np.float64)
        # (v * scale - mean) / std = v * alpha + beta, per channel
        self.alpha = (scale / std).astype(np.float32).reshape(3, 1, 1)
        self.alpha_key = tuple(float(v) for v in scale / std)
        self.beta = (-mean / std).astype(np.float32).reshape(3, 1, 1)
        self.mean32 = mean.astype(np.float32).reshape(3, 1, 1)
        self.std32 = std.astype(np.float32).reshape(3, 1, 1)
        self.scale32 = np.float32(scale)
        self.bgr = pre.get("channel_order") == "BGR"


def _batch(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        batch = list(images) if images.ndim == 4 else [images]
    else:
        batch = list(images)
    if not batch:
        raise ExportUsageError("no images to classify")
    return batch


def _as_rgb(img: np.ndarray, i: int, bgr: bool) -> np.ndarray:
    """H x W x 3 view of image ``i`` (grayscale repeated, a fourth channel dropped)."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ExportUsageError(f"image {i} has shape {a.shape}; expected H x W x 3 (RGB)")
    a = a[:, :, :3]
    return a[:, :, ::-1] if bgr else a


# ============================================================================ reference (numpy)

def _antialias_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a bilinear resize with antialias (half-pixel centres)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) / support))
        total = w.sum()
        if total > 0:
            m[i, lo:hi] = w / total
        else:  # pragma: no cover - degenerate
            m[i, min(int(center), n_in - 1)] = 1.0
    return m.astype(np.float32)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a bilinear resize with ``align_corners=True``, no antialias."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    if n_out == 1 or n_in == 1:
        m[:, 0] = 1.0
        return m.astype(np.float32)
    src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(src).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m.astype(np.float32)


def _axis_matrix(n_in: int, n_resized: int, start: int, crop: int,
                 resolution: int) -> np.ndarray:
    """One axis of resize -> crop -> resize to ``resolution``, composed into one dense
    (resolution, n_in) float64 map. Every step is linear with rows summing to one, so the
    map also commutes with the per-channel normalization, which is applied at the small
    size. Not cached, nor are its factors (dense, n_in wide): the callers cache the compact
    forms they keep, under one byte budget (:data:`CACHE_BYTES`)."""
    m = np.eye(n_in, dtype=np.float64) if n_resized == n_in else \
        _antialias_matrix(n_in, n_resized).astype(np.float64)
    m = m[start:start + crop]
    if crop != resolution:
        m = _align_corners_matrix(crop, resolution).astype(np.float64) @ m
    return m


def _axis_taps(n_in: int, n_resized: int, start: int, crop: int,
               resolution: int) -> _Taps:
    """:func:`_axis_matrix` stored sparsely (cached)."""
    return _CACHE.get(("taps", n_in, n_resized, start, crop, resolution),
                      lambda: _Taps(_axis_matrix(n_in, n_resized, start, crop, resolution)))


class _Taps:
    """A composed map as (resolution, K) source indices and weights, K = most taps per
    output."""

    def __init__(self, m: np.ndarray) -> None:
        resolution = m.shape[0]
        k = max(1, int((np.abs(m) > 0).sum(axis=1).max()))
        self.idx = np.zeros((resolution, k), dtype=np.intp)
        self.wts = np.zeros((resolution, k), dtype=np.float32)
        for row in range(resolution):
            nz = np.flatnonzero(m[row])
            self.idx[row, :len(nz)], self.wts[row, :len(nz)] = nz, m[row, nz]

    @property
    def nbytes(self) -> int:
        return self.idx.nbytes + self.wts.nbytes


def _apply_taps(x: np.ndarray, taps: _Taps, axis: int) -> np.ndarray:
    """Resample ``x`` along ``axis`` (0 or 1) with sparse taps."""
    idx, wts = taps.idx, taps.wts
    acc: np.ndarray | None = None
    for k in range(idx.shape[1]):
        if axis == 0:
            term = wts[:, k, None, None] * x[idx[:, k]]
        else:
            term = wts[None, :, k, None] * x[:, idx[:, k]]
        acc = term if acc is None else acc + term
    assert acc is not None
    return acc


def _reference_one(a: np.ndarray, plan: _Plan, resolution: int) -> np.ndarray:
    h, w = a.shape[:2]
    rh, rw, top, left = _crop_geometry(h, w, plan.resize, plan.crop, plan.mode)
    x = a.astype(np.float32)
    x = _apply_taps(x, _axis_taps(h, rh, top, plan.crop, resolution), axis=0)    # (r, w, 3)
    x = _apply_taps(x, _axis_taps(w, rw, left, plan.crop, resolution), axis=1)   # (r, r, 3)
    return (x.transpose(2, 0, 1) * plan.scale32 - plan.mean32) / plan.std32


def preprocess_reference(images: np.ndarray | Sequence[np.ndarray], pre: dict[str, Any],
                         resolution: int) -> np.ndarray:
    """:func:`preprocess_images` in numpy alone, tap by tap (the reference both fast paths
    are tested against)."""
    plan = _plan(pre)
    batch = _batch(images)
    out = np.empty((len(batch), 3, resolution, resolution), dtype=np.float32)
    for i, img in enumerate(batch):
        out[i] = _reference_one(_as_rgb(img, i, plan.bgr), plan, resolution)
    return out


# ============================================================================ fast path (numpy + BLAS)

#: Output rows per block: of the row pass (exact windows; 4 measured fastest at 128 px) and
#: of the column pass (regular windows; 8 divides the usual resolutions).
_ROW_BLOCK, _COL_BLOCK = 4, 8
#: What the per-image-size caches may hold in all (bytes): a server fed many image sizes
#: keeps the most recent ones, never more than this.
CACHE_BYTES = 32 << 20


class _BoundedCache:
    """Least-recently-used values under a byte budget (their ``nbytes``); thread-safe. A
    value larger than the whole budget is returned but not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable, make: Callable[[], _T]) -> _T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return cast(_T, self._items[key])
        value = make()                  # outside the lock: building is the slow part
        size = int(getattr(value, "nbytes", 0))
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = value
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= int(getattr(old, "nbytes", 0))
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_CACHE = _BoundedCache(CACHE_BYTES)


def _block_extent(m: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m zero-padded to whole blocks, first and one-past-last input each block reads)."""
    r, n = m.shape
    blocks = -(-r // block)
    padded = np.zeros((blocks * block, n))
    padded[:r] = m
    used = np.asarray((padded != 0).reshape(blocks, block, n).any(axis=1))   # (blocks, n)
    return padded, used.argmax(axis=1), n - used[:, ::-1].argmax(axis=1)


class _Rows:
    """A composed map applied to rows: block b of ``block`` outputs reads the rows
    ``index[b]`` (one run of ``span``, inside the image), weights (blocks, block, span)."""

    def __init__(self, m: np.ndarray, block: int) -> None:
        padded, lo, hi = _block_extent(m, block)
        self.blocks, self.span = len(lo), int((hi - lo).max())
        start = np.minimum(lo, m.shape[1] - self.span)
        self.index = (start[:, None] + np.arange(self.span)).reshape(-1)
        self.weights = np.stack([padded[b * block:(b + 1) * block, s:s + self.span]
                                 for b, s in enumerate(start)]).astype(np.float32)


class _Band:
    """A composed map as regular windows over the zero-padded axis: block b reads inputs
    ``first + step * b`` .. ``+ span`` of the padded axis (a strided view, no copy)."""

    def __init__(self, m: np.ndarray, block: int) -> None:
        padded, lo, hi = _block_extent(m, block)
        n = m.shape[1]
        self.blocks = len(lo)
        start, self.step, self.span = _band_layout(lo, hi)
        self.pad = (max(0, -start), max(0, start + self.step * (self.blocks - 1) + self.span - n))
        self.first = start + self.pad[0]
        wide = np.zeros((len(padded), self.pad[0] + n + self.pad[1]))
        wide[:, self.pad[0]:self.pad[0] + n] = padded
        firsts = self.first + self.step * np.arange(self.blocks)
        self.weights: np.ndarray = np.stack([wide[b * block:(b + 1) * block, f:f + self.span]
                                             for b, f in enumerate(firsts)])


def _band_layout(lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int]:
    """(start, step, span) of the narrowest regular windows holding every block's inputs
    [lo, hi); start may be negative and the last window may end past the axis (padding)."""
    k = np.arange(len(lo))
    d = np.diff(lo) if len(lo) > 1 else np.zeros(1, dtype=int)
    best = (0, 0, 1 << 62)
    for step in range(max(0, int(d.min())), int(d.max()) + 1):
        start = int((lo - step * k).min())
        span = int((hi - start - step * k).max())
        if span < best[2]:
            best = (start, step, span)
    return best


class _Gemm:
    """Both axes of one (image size, preprocessing, resolution): the rows as exact windows,
    the columns those the crop keeps (``c0:c1``) as regular windows."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray) -> None:
        used = np.flatnonzero((cols != 0).any(axis=0))
        self.c0, self.c1 = int(used[0]), int(used[-1]) + 1
        self.rows = _Rows(rows, _ROW_BLOCK)
        self.cols = _Band(cols[:, self.c0:self.c1], _COL_BLOCK)
        self.w_cols = np.ascontiguousarray(self.cols.weights.transpose(0, 2, 1), np.float32)

    @property
    def nbytes(self) -> int:
        return self.rows.index.nbytes + self.rows.weights.nbytes + self.w_cols.nbytes


def _gemm(h: int, w: int, geometry: tuple[int, int, int, int], crop: int,
          resolution: int) -> _Gemm:
    rh, rw, top, left = geometry
    return _CACHE.get(("gemm", h, w, geometry, crop, resolution), lambda: _Gemm(
        _axis_matrix(h, rh, top, crop, resolution), _axis_matrix(w, rw, left, crop, resolution)))


def _padded(x: np.ndarray, pad: tuple[int, int], axis: int) -> np.ndarray:
    """``x`` with its first ``pad[0]`` and last ``pad[1]`` entries along ``axis`` zeroed (the
    windows' padding: zero weights there, but 0 * NaN would not be 0)."""
    if pad[0]:
        x[(slice(None),) * axis + (slice(0, pad[0]),)] = 0
    if pad[1]:
        x[(slice(None),) * axis + (slice(x.shape[axis] - pad[1], None),)] = 0
    return x


def _fast_one(a: np.ndarray, plan: _Plan, geometry: tuple[int, int, int, int],
              resolution: int, dst: np.ndarray) -> None:
    """One image into ``dst`` (3, r, r): the rows each block reads (uint8, the kept columns
    only) converted once, one batched product for the rows; the transposing copy to planar
    scales by the normalization; one batched product for the columns of all three channels
    (one matrix of 3r rows per block); the shift added at the end."""
    g = _gemm(a.shape[0], a.shape[1], geometry, plan.crop, resolution)
    rows, cols, wu = g.rows, g.cols, g.c1 - g.c0
    x = a[rows.index, g.c0:g.c1].astype(np.float32).reshape(rows.blocks, rows.span, wu * 3)
    t = np.matmul(rows.weights, x).reshape(-1, wu, 3)[:resolution]             # (r, wu, 3)
    width = cols.pad[0] + wu + cols.pad[1]
    tc = _padded(np.empty((3, resolution, width), dtype=np.float32), cols.pad, 2)
    np.multiply(t.transpose(2, 0, 1), plan.alpha, out=tc[:, :, cols.pad[0]:cols.pad[0] + wu])
    m = tc.reshape(3 * resolution, width)
    s0, s1 = m.strides
    u = as_strided(m[:, cols.first:], (cols.blocks, 3 * resolution, cols.span),
                   (cols.step * s1, s0, s1), writeable=False)
    if cols.blocks * _COL_BLOCK == resolution:   # the products land in dst
        np.matmul(u, g.w_cols, out=dst.reshape(3 * resolution, cols.blocks, _COL_BLOCK)
                  .transpose(1, 0, 2))
        dst += plan.beta
    else:
        y = np.matmul(u, g.w_cols).transpose(1, 0, 2).reshape(3, resolution, -1)
        np.add(y[:, :, :resolution], plan.beta, out=dst)


# ============================================================================ fast path (C kernel)

#: Set to ``numpy`` to skip the compiled kernel (the numpy + BLAS path runs instead).
BACKEND_ENV = "MUTUALNET_PREPROCESS"
_PTR, _INT = ctypes.c_void_p, ctypes.c_int
#: mn_resample_u8's parameters (export/_resample.c): pointers passed as addresses (int)
_KERNEL_ARGS = (_PTR, _INT, _INT, _INT, _INT, _PTR, _PTR, _INT, _INT, _PTR, _PTR, _INT, _INT,
                _INT, _INT, _PTR, _PTR, _INT, _PTR, _PTR)


@lru_cache(maxsize=1)
def _kernel() -> Any:
    """``mn_resample_u8`` of the built ``export/_resample.c`` (None: not built, not loadable)."""
    try:
        spec = importlib.util.find_spec(f"{__package__}._resample")
        if spec is None or not spec.origin:
            return None
        fn = ctypes.CDLL(spec.origin).mn_resample_u8
    except (ImportError, OSError, AttributeError, ValueError):
        return None
    fn.argtypes, fn.restype = _KERNEL_ARGS, ctypes.c_int
    return fn


def fast_backend() -> str:
    """What :func:`preprocess_images` runs on uint8 RGB images: ``"c"`` (the compiled
    kernel) or ``"numpy"`` (not built, or ``MUTUALNET_PREPROCESS=numpy``)."""
    if os.environ.get(BACKEND_ENV, "").strip().lower() == "numpy" or _kernel() is None:
        return "numpy"
    return "c"


def _window(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A composed map as (start int32 (r,), weights float32 (r, K)): output i reads inputs
    start[i] .. + K (inside the axis; zero weights pad the outputs that read fewer)."""
    nz = m != 0
    lo = nz.argmax(axis=1)
    hi = m.shape[1] - nz[:, ::-1].argmax(axis=1)
    k = int((hi - lo).max())
    start = np.minimum(lo, m.shape[1] - k)
    wts = np.stack([m[i, s:s + k] for i, s in enumerate(start)]).astype(np.float32)
    return start.astype(np.int32), np.ascontiguousarray(wts)


class _Kernel:
    """Both axes of one (image size, preprocessing, resolution) for the C kernel: the rows'
    and the columns' windows, and the kept input columns [x0, x1)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray) -> None:
        self.row_start, self.row_w = _window(rows)
        self.col_start, self.col_w = _window(cols)
        self.x0 = int(self.col_start.min())
        self.x1 = int(self.col_start.max()) + self.col_w.shape[1]
        self.args = (self.row_start.ctypes.data, self.row_w.ctypes.data, self.row_w.shape[1],
                     len(self.row_start), self.col_start.ctypes.data, self.col_w.ctypes.data,
                     self.col_w.shape[1], len(self.col_start), self.x0, self.x1)
        self.tmp_size = len(self.row_start) * (self.x1 - self.x0) * 3

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.row_start, self.row_w, self.col_start, self.col_w))


_SCRATCH = threading.local()


def _scratch(n: int) -> np.ndarray:
    """A float32 buffer of at least ``n`` of this thread (kept: no allocation per image)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < n:
        buf = _SCRATCH.buf = np.empty(n, dtype=np.float32)
    return buf


def _kernel_input(img: np.ndarray) -> np.ndarray | None:
    """``img`` as the kernel reads it (uint8 H x W x 3 or 4, pixels packed; grayscale
    repeated), None for the numpy path (other dtypes, other layouts)."""
    a = img if isinstance(img, np.ndarray) else np.asarray(img)
    if a.dtype == np.uint8 and a.ndim == 2 and min(a.shape) >= 1:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 1:
        return None
    if a.strides[2] != 1 or a.strides[1] != a.shape[2] or a.strides[0] < a.shape[1] * a.shape[2]:
        return None
    return a


def _c_one(fn: Any, a: np.ndarray, plan: _Plan, resolution: int, dst: np.ndarray) -> None:
    """One packed uint8 image into ``dst`` (3, r, r), C-contiguous, with the C kernel."""
    h, w = a.shape[:2]
    geometry = _crop_geometry(h, w, plan.resize, plan.crop, plan.mode)
    rh, rw, top, left = geometry
    k = _CACHE.get(("kernel", h, w, geometry, plan.crop, resolution), lambda: _Kernel(
        _axis_matrix(h, rh, top, plan.crop, resolution),
        _axis_matrix(w, rw, left, plan.crop, resolution)))
    rc = fn(a.ctypes.data, h, w, a.strides[0], a.shape[2], *k.args, plan.alpha.ctypes.data,
            plan.beta.ctypes.data, plan.bgr, _scratch(k.tmp_size).ctypes.data, dst.ctypes.data)
    if rc != 0:  # pragma: no cover - the windows are checked to lie inside the image
        raise RuntimeError(f"resampling kernel refused image {a.shape}")


def preprocess_images(images: np.ndarray | Sequence[np.ndarray], pre: dict[str, Any],
                      resolution: int) -> np.ndarray:
    """uint8 HWC images (a NHWC array or a list of any sizes) -> float32 NCHW at ``resolution``.

    Per the manifest's ``preprocessing``: scale by ``input_scale``, resize the shorter side to
    ``resize`` (``resize_mode`` "stretch": both sides, aspect ratio not kept; absent:
    "shorter_side") and center-crop ``crop`` (the evaluation transform), normalize with mean/std,
    resize to the subnet's resolution (bilinear, align_corners=True, as the supernet was
    evaluated). Images are RGB (grayscale H x W is repeated, a fourth channel dropped); a
    ``BGR`` manifest gets its channels swapped. Equal to :func:`preprocess_reference` to
    float32 precision (about 1e-6). uint8 images run the compiled kernel when it is built
    (:func:`fast_backend`), anything else the numpy + BLAS path.
    """
    plan = _plan(pre)
    batch = _batch(images)
    out = np.empty((len(batch), 3, resolution, resolution), dtype=np.float32)
    fn = _kernel() if fast_backend() == "c" else None
    for i, img in enumerate(batch):
        packed = None if fn is None else _kernel_input(img)
        if packed is not None:
            _c_one(fn, packed, plan, resolution, out[i])
            continue
        a = _as_rgb(img, i, plan.bgr)
        geometry = _crop_geometry(a.shape[0], a.shape[1], plan.resize, plan.crop, plan.mode)
        _fast_one(a, plan, geometry, resolution, out[i])
    return out


# ============================================================================ decoding

# what Pillow raises on files it cannot parse or decode (truncated, corrupt, not images)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  IndexError, TypeError)


def read_image(path: str | os.PathLike[str], *,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image file to uint8 RGB H x W x 3.

    Grayscale, palette, LA/RGBA (alpha dropped), CMYK and YCbCr are converted; 16-bit and
    32-bit integer images are scaled by their bit depth, float images (0..1) by 255.
    ``max_pixels`` (width x height) is checked from the header, before anything is decoded.
    Every problem (missing, a directory, empty, not an image, truncated or corrupt, too
    large, a float image outside 0..1) is an :class:`ExportUsageError` of one line.
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise BackendUnavailableError("reading images needs Pillow: `pip install pillow`") from e
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ExportUsageError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    p = Path(path)
    _check_file(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # DecompressionBombWarning, palette transparency
        try:
            with Image.open(p) as im:
                _check_pixels(p, im.size, max_pixels)
                im.load()
                return _to_rgb8(p, im)
        except ExportError:
            raise
        except Image.DecompressionBombError as e:
            raise ExportUsageError(f"{p}: {e}; pass a smaller image") from e
        except _DECODE_ERRORS as e:
            raise ExportUsageError(_decode_message(p, e)) from e


def _check_file(p: Path) -> None:
    try:
        st = p.stat()
    except FileNotFoundError as e:
        raise ExportUsageError(f"image {p} does not exist") from e
    except OSError as e:
        raise ExportUsageError(f"cannot read image {p}: {e.strerror or e}") from e
    if p.is_dir():
        raise ExportUsageError(f"{p} is a directory; pass image files")
    if st.st_size == 0:
        raise ExportUsageError(f"image {p} is an empty file")


def _check_pixels(p: Path, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ExportUsageError(f"image {p} is {w} x {h} pixels; it holds no pixels")
    if w * h > max_pixels:
        raise ExportUsageError(f"image {p} is {w} x {h} = {w * h:,} pixels, over the limit of "
                               f"{max_pixels:,}; shrink it or raise the limit (--max-pixels)")


def _decode_message(p: Path, e: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return f"{p} is not an image file Pillow can read (no known format in its header)"
    if isinstance(e, PermissionError):
        return f"cannot read image {p}: permission denied"
    reason = " ".join(str(e).split()) or type(e).__name__
    return f"cannot decode image {p}: {reason}; the file is truncated or corrupt, replace it"


def _to_rgb8(p: Path, im: Any) -> np.ndarray:
    """uint8 RGB of a loaded Pillow image; high-bit-depth modes scaled, not clipped."""
    mode = im.mode
    if mode == "F":
        a = _float_to_8bit(p, np.asarray(im, dtype=np.float32))
    elif mode.startswith("I"):
        a = _int_to_8bit(p, np.asarray(im), _integer_bits(im))
    else:
        try:
            return np.asarray(im.convert("RGB"))
        except ValueError as e:
            raise ExportUsageError(f"image {p} has pixel mode {mode}, which has no conversion "
                                   "to RGB; save it as an RGB or grayscale image") from e
    return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))


def _integer_bits(im: Any) -> int:
    """Value bits of an integer image: 16 for I;16, else the TIFF BitsPerSample (less the
    sign bit of a signed SampleFormat), 16 for a PNG, 31 for Pillow's signed 32-bit "I"."""
    if im.mode.startswith("I;16"):
        return 16
    tags = getattr(im, "tag_v2", {})
    bits, fmt = tags.get(258), tags.get(339)          # BitsPerSample, SampleFormat
    bits, fmt = (v[0] if isinstance(v, tuple) and v else v for v in (bits, fmt))
    if bits:
        return int(bits) - (1 if fmt == 2 else 0)
    return 16 if im.format == "PNG" else 31


def _int_to_8bit(p: Path, a: np.ndarray, bits: int) -> np.ndarray:
    top = float(2 ** bits - 1)
    if a.size and int(a.min()) < 0:
        raise ExportUsageError(f"image {p} holds negative {bits}-bit samples; save it as an "
                               "8- or 16-bit unsigned image")
    return np.clip(np.rint(a.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _float_to_8bit(p: Path, a: np.ndarray) -> np.ndarray:
    if not np.isfinite(a).all():
        raise ExportUsageError(f"float image {p} holds NaN or infinite samples; save it as an "
                               "8-bit image")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise ExportUsageError(f"float image {p} has samples in {lo:g}..{hi:g}, outside 0..1 "
                               "(the range a float image's bit depth means); save it as an "
                               "8-bit image or scale it to 0..1")
    return np.rint(a * 255.0).astype(np.uint8)


#: the file suffixes read as images from a folder (``run``, ``export --calib-data``)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in ``folder``, sorted (suffixes :data:`IMAGE_SUFFIXES`)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
