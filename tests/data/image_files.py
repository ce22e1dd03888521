"""Image files for the decoding tests, written without an image library where Pillow cannot
(16-bit RGB PNG) or should not (a 12000 x 12000 PNG, written row by row without holding it)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png(path: Path, width: int, height: int, bit_depth: int, color_type: int,
         idat: bytes) -> Path:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))
    return path


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG of uint16 H x W (grayscale) or H x W x 3 (RGB) pixels."""
    a = np.ascontiguousarray(pixels, dtype=">u2")
    h, w = a.shape[:2]
    rows = a.reshape(h, -1).view(np.uint8).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    return _png(path, w, h, 16, 2 if a.ndim == 3 else 0, zlib.compress(raw))


def write_huge_png(path: Path, width: int = 12_000, height: int = 12_000) -> Path:
    """A valid all-black 1-bit PNG of ``width`` x ``height`` (a few tens of KB on disk)."""
    row = b"\0" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return _png(path, width, height, 1, 0, idat)
