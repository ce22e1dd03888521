"""Build ``mutualnet/data/bundled/cifar10_subset.npz`` from the shared CIFAR-10 JPEG npz.

Selection rule: the first ``--train-per-class`` training images and the first
``--test-per-class`` test images of every class, in the source's order (class index,
then numeric file name). The JPEG bytes are copied unchanged and the array names and
dtypes are those of the source, so every reader of that format reads the subset too.

    python -m mutualnet.data.make_bundled /work/shared/data/cifar10_jpeg.npz
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from ..fileio import sha256_file

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_NPZ = BUNDLED_DIR / "cifar10_subset.npz"


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of every class, in source order."""
    keep = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def subset_split(jpeg: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
                 index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copy the JPEG byte ranges of ``index`` unchanged into new packed arrays."""
    parts = [jpeg[offsets[i]:offsets[i + 1]] for i in index]
    new_offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    new_offsets[1:] = np.cumsum([len(p) for p in parts])
    return np.concatenate(parts).astype(np.uint8), new_offsets, labels[index].astype(np.int64)


def build(source: Path, out: Path, train_per_class: int, test_per_class: int) -> dict[str, object]:
    z = np.load(source)
    arrays: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        jpeg, offsets, labels = z[f"{split}_jpeg"], z[f"{split}_offsets"], z[f"{split}_labels"]
        index = first_per_class(labels, per_class)
        j, o, y = subset_split(jpeg, offsets, labels, index)
        arrays.update({f"{split}_jpeg": j, f"{split}_offsets": o, f"{split}_labels": y})
        counts[split] = len(y)
    arrays["classes"] = z["classes"]
    arrays = {name: arrays[name] for name in z.files}  # the source's array order
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"source_sha256": sha256_file(source), "sha256": sha256_file(out),
            "size": out.stat().st_size, **counts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="the shared cifar10_jpeg.npz")
    p.add_argument("--out", type=Path, default=BUNDLED_NPZ)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=100)
    a = p.parse_args()
    info = build(a.source, a.out, a.train_per_class, a.test_per_class)
    for k, v in info.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
