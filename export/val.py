"""``mutualnet val``: evaluate the exported artifacts themselves on a labelled set.

What a user checks before shipping: every subnet of an export, in every precision the export
holds, run by ONNX Runtime or TensorRT on labelled images, preprocessed as the runtime does
it (:mod:`export.preprocess`): top-1, top-5, agreement of each precision's top-1 with the same
subnet's fp32 artifact, and latency measured while evaluating. Torch-free.

A precision exists for a subnet when its manifest ``files`` hold the key
:data:`PRECISION_FILE_KEYS` names (fp32 is always ``onnx``). Labelled sets:

- the export's own ``parity_images.npz`` (default; stored cropped, so only normalized and
  resized, as parity does it: :func:`export.parity_images.model_inputs`);
- an ``.npz``: ``images`` + ``labels``, or the shared CIFAR JPEG format (its test split);
- an ImageFolder: ``DIR/val/<class>/*`` or ``DIR/<class>/*``; folder names that are all
  class names of the model map by name, else by sorted position (as training reads them).

```python
from export.val import ValOptions, evaluate_export, write_val_report
report = evaluate_export("runs/tiny/export", ValOptions(limit=200))
print(report.table())
write_val_report(report)          # val.md + val.json beside the manifest
```
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Runner, default_threads, make_runner
from .backends.onnxruntime import OrtRunner, providers_for
from .errors import ExportUsageError, ManifestError
from .manifest import (
    MANIFEST_FILE,
    Manifest,
    SubnetEntry,
    atomic_write_bytes,
    load_manifest,
    utc_now,
)
from .parity_images import ParityImages, model_inputs, read_parity_images, stored_parity_images
from .precisions import FILE_KEYS as PRECISION_FILE_KEYS  # precision -> its ONNX's files key
from .preprocess import IMAGE_SUFFIXES, read_image
from .profiles import PRECISIONS

VAL_BACKENDS = ("auto", "onnxruntime", "tensorrt")
VAL_MD, VAL_JSON = "val.md", "val.json"
UNLABELLED_HINT = ("val needs labels; to check unlabelled images, export with them: "
                   "`mutualnet export CHECKPOINT --data DIR` compares every artifact with the "
                   "supernet (agreement and logit differences)")

__all__ = ["PRECISIONS", "PRECISION_FILE_KEYS", "LabelledSet", "ValOptions", "ValReport",
           "ValRow", "evaluate_export", "precisions_of", "read_labelled_set",
           "write_val_report"]


# ============================================================================ options, results

@dataclass(frozen=True)
class ValOptions:
    """What to evaluate and how (see ``mutualnet val --help``)."""

    data: str | None = None              # None: the export's parity_images.npz
    backend: str = "auto"                # auto | onnxruntime | tensorrt
    device: str | None = None            # cpu, cuda, cuda:N (None: a GPU if present)
    precisions: tuple[str, ...] | None = None   # None: every precision the export holds
    limit: int | None = None             # at most this many images, taken evenly
    batch: int = 32
    threads: int | None = None           # ONNX Runtime intra-op threads (None: affinity)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.backend not in VAL_BACKENDS:
            raise ExportUsageError(f"unknown backend {self.backend!r}; use one of "
                                   f"{', '.join(VAL_BACKENDS)}")
        if self.batch < 1 or (self.limit is not None and self.limit < 1):
            raise ExportUsageError("--batch and --limit must be at least 1")
        unknown = [p for p in self.precisions or () if p not in PRECISIONS]
        if unknown or self.precisions == ():
            raise ExportUsageError(f"unknown precision {', '.join(unknown) or '(none)'}; use "
                                   f"one or more of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class ValRow:
    """One artifact's figures: accuracy in percent, agreement 0..1, latency ms per image."""

    subnet: str
    precision: str
    macs: int
    images: int
    top1: float
    top5: float
    agreement: float
    latency_mean_ms: float
    latency_p90_ms: float
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return {"subnet": self.subnet, "precision": self.precision, "macs": self.macs,
                "images": self.images, "top1": round(self.top1, 4), "top5": round(self.top5, 4),
                "agreement_with_fp32": round(self.agreement, 6),
                "latency_ms_per_image": {"mean": round(self.latency_mean_ms, 5),
                                         "p90": round(self.latency_p90_ms, 5)},
                "backend": self.backend}


@dataclass(frozen=True)
class ValReport:
    """What :func:`evaluate_export` measured."""

    export_dir: Path
    model: str
    source: str
    images: int
    batch: int
    threads: int
    device: str
    rows: tuple[ValRow, ...]
    seconds: float
    notes: tuple[str, ...] = ()
    created: str = field(default_factory=utc_now)

    def table(self) -> str:
        """Markdown: subnet, precision, MACs, top-1, top-5, agreement, latency, backend."""
        lines = ["| subnet | precision | MACs | top-1 | top-5 | agreement with fp32 | "
                 "ms/image mean | ms/image p90 | backend |", "|" + "---|" * 9]
        lines += [f"| {r.subnet} | {r.precision} | {r.macs / 1e6:.3f}M | {r.top1:.2f} | "
                  f"{r.top5:.2f} | {100 * r.agreement:.1f}% | {r.latency_mean_ms:.4f} | "
                  f"{r.latency_p90_ms:.4f} | {r.backend} |" for r in self.rows]
        return "\n".join(lines)

    def describe(self) -> str:
        """The sentence above the table: images, batch, device, how latency was taken."""
        return (f"{self.images} labelled images from {self.source}; batch {self.batch}; "
                f"{self.device}, threads {self.threads}; latency: wall time of each batch "
                "divided by its images, mean and p90 over the full batches (each "
                "artifact's first batch run once untimed first)")

    def to_dict(self) -> dict[str, Any]:
        return {"export": str(self.export_dir), "model": self.model, "created": self.created,
                "data": self.source, "images": self.images, "batch": self.batch,
                "threads": self.threads, "device": self.device,
                "seconds": round(self.seconds, 3), "notes": list(self.notes),
                "rows": [r.to_dict() for r in self.rows]}


# ============================================================================ labelled images

@dataclass(frozen=True)
class LabelledSet:
    """Labelled images, decoded on demand: ``load(i)`` is image i as uint8 RGB HWC.

    ``cropped``: already resized + center-cropped to the manifest's crop (parity_images.npz)."""

    load: Callable[[int], np.ndarray]
    labels: np.ndarray
    cropped: bool
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def of(cls, data: ParityImages, source: str) -> LabelledSet:
        if data.labels is None:
            raise ExportUsageError(f"{source} holds images without labels; {UNLABELLED_HINT}")
        images = data.images
        if len(data.labels) != len(images):
            raise ExportUsageError(f"{source} holds {len(images)} images but "
                                   f"{len(data.labels)} labels; give one label per image")
        return cls(lambda i: np.asarray(images[i]), np.asarray(data.labels, np.int64),
                   data.cropped, source)


def _evenly(n: int, limit: int | None) -> np.ndarray:
    return np.linspace(0, n - 1, min(limit or n, n)).astype(int)


def _class_index(names: Sequence[str], classes: Sequence[str]) -> list[int]:
    """Label of each class folder: its position among the model's classes when every folder
    is named for one of them, else its sorted position (ImageFolder's rule)."""
    if classes and all(n in classes for n in names):
        return [list(classes).index(n) for n in names]
    return list(range(len(names)))


def _folder_set(root: Path, classes: Sequence[str], limit: int | None) -> LabelledSet:
    base = root / "val" if (root / "val").is_dir() else root
    dirs = sorted(d for d in base.iterdir() if d.is_dir())
    images = sorted(p for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not dirs:
        what = "holds images but no class folders" if images else "holds no class folders"
        raise ExportUsageError(f"--data {root} {what}; {UNLABELLED_HINT}")
    files: list[Path] = []
    labels: list[int] = []
    for d, k in zip(dirs, _class_index([d.name for d in dirs], classes), strict=True):
        found = sorted(p for p in d.rglob("*") if p.is_file()
                       and p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [k] * len(found)
    if not files:
        raise ExportUsageError(f"--data {root}: the class folders of {base} hold no images "
                               f"({', '.join(IMAGE_SUFFIXES)})")
    idx = _evenly(len(files), limit)
    chosen = [files[i] for i in idx]
    return LabelledSet(lambda i: read_image(chosen[i]), np.asarray(labels, np.int64)[idx],
                       False, str(root))


def read_labelled_set(manifest: Manifest, data: str | None,
                      limit: int | None = None) -> LabelledSet:
    """The labelled images ``data`` names (None: the export's parity_images.npz), at most
    ``limit`` taken evenly; usage errors for anything missing, unreadable or unlabelled."""
    big = sys.maxsize if limit is None else limit
    if data is None:
        stored = stored_parity_images(manifest, big)
        if stored is None:
            raise ExportUsageError(f"{manifest.root} holds no parity_images.npz (exported by "
                                   "an older mutualnet); pass --data a labelled set")
        return LabelledSet.of(stored, f"{manifest.root.name}/{stored.source}")
    path = Path(data).expanduser()
    if not path.exists():
        raise ExportUsageError(f"--data {data}: no such file or folder; give an ImageFolder "
                               "(class folders), an .npz (images + labels, or the CIFAR JPEG "
                               "format), or leave it out for the export's parity_images.npz")
    if path.is_dir():
        return _folder_set(path, manifest.classes, limit)
    return LabelledSet.of(read_parity_images(path, big), str(path))


def _check_labels(data: LabelledSet, manifest: Manifest) -> None:
    n = manifest.model.num_classes
    if not len(data):
        raise ExportUsageError(f"{data.source} holds no images; give a labelled set")
    if (int(data.labels.min()) < 0 or int(data.labels.max()) >= n):
        raise ExportUsageError(f"{data.source}: labels run from {int(data.labels.min())} to "
                               f"{int(data.labels.max())} but the model predicts {n} classes; "
                               "pass the labelled set the model was trained for")


# ============================================================================ artifacts

def precisions_of(entry: SubnetEntry) -> list[str]:
    """The precisions ``entry`` has an ONNX artifact for (fp32 always)."""
    return [p for p in PRECISIONS if PRECISION_FILE_KEYS[p] in entry.files]


def _wanted(manifest: Manifest, asked: tuple[str, ...] | None,
            precisions: Callable[[SubnetEntry], list[str]]) -> tuple[list[str], list[str]]:
    """(precisions to report, notes on subnets lacking one); usage error for a precision no
    subnet of the export has."""
    present = {p for sn in manifest.subnets for p in precisions(sn)}
    wanted = [p for p in PRECISIONS if p in (asked or present)]
    absent = [p for p in wanted if p not in present]
    if absent:
        have = ", ".join(p for p in PRECISIONS if p in present)
        raise ExportUsageError(f"the export holds no {', '.join(absent)} artifacts (it has "
                               f"{have}); export them with `mutualnet export ... --precision "
                               f"{','.join(absent)}` or pick --precision {have}")
    notes = [f"{sn.id} has no {p} artifact (left out at export)" for sn in manifest.subnets
             for p in wanted if p not in precisions(sn)]
    return wanted, notes


@dataclass
class _Artifacts:
    """How to open each (subnet, precision) artifact on the chosen backend."""

    manifest: Manifest
    backend: str
    device: str | None
    threads: int
    env: Any = None
    device_name: str = ""

    def precisions(self, sn: SubnetEntry) -> list[str]:
        """The precisions of ``sn`` this backend can run: its ONNX artifacts, and with
        TensorRT also the precisions of the engines recorded for this GPU and TensorRT
        (e.g. an fp16 engine built from the fp32 ONNX)."""
        have = set(precisions_of(sn))
        if self.backend == "tensorrt":
            have |= {r.precision for r in sn.engines if self._fits(r)}
        return [p for p in PRECISIONS if p in have]

    def _fits(self, record: Any) -> bool:
        from .backends.tensorrt import check_engine_record

        return check_engine_record(record, self.env) is None

    def open(self, sn: SubnetEntry, precision: str) -> tuple[Runner, str]:
        if self.backend == "tensorrt":
            record = self._engine(sn, precision)
            if record is not None:
                path = self.manifest.file(record.file)
                return make_runner("tensorrt", path, dla_core=record.dla_core), "tensorrt"
            if precision != "fp32":
                raise ManifestError(f"no TensorRT {precision} engine of {sn.id} built for this "
                                    f"GPU and TensorRT; run `mutualnet build-engines "
                                    f"{self.manifest.root}` here, or use --backend onnxruntime")
        path = self.manifest.file(sn.files[PRECISION_FILE_KEYS[precision]])
        runner = OrtRunner(path, providers=providers_for(self.manifest.profile.ort_providers,
                                                         self.device),
                           threads=self.threads, allow_cpu_fallback=True, spin=False)
        self.device_name = self.device_name or f"onnxruntime {runner.providers[0]}"
        return runner, "onnxruntime"

    def _engine(self, sn: SubnetEntry, precision: str) -> Any:
        fitting = [r for r in sn.engines if r.precision == precision and self._fits(r)]
        return fitting[-1] if fitting else None


def _artifacts(manifest: Manifest, options: ValOptions, threads: int) -> _Artifacts:
    from .runtime import choose_backend

    on_stale = "error" if options.backend == "tensorrt" else "fallback"
    backend = choose_backend(manifest, options.backend, options.device, on_stale)
    if backend != "tensorrt":
        return _Artifacts(manifest, "onnxruntime", options.device, threads)
    from .backends import device_index
    from .backends.tensorrt import tensorrt_environment

    env = tensorrt_environment(device_index(options.device))
    return _Artifacts(manifest, "tensorrt", options.device, threads, env,
                      f"tensorrt {env.tensorrt_version} on {env.gpu_name}")


# ============================================================================ evaluation

def _batches(n: int, batch: int) -> Iterator[range]:
    for start in range(0, n, batch):
        yield range(start, min(n, start + batch))


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="val", unit="batch", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True)


@dataclass
class _Run:
    """Logits and per-image batch times of one artifact."""

    runner: Runner
    backend: str
    logits: list[np.ndarray] = field(default_factory=list)
    ms_per_image: list[float] = field(default_factory=list)
    warm: bool = False

    def step(self, x: np.ndarray) -> None:
        if not self.warm:
            self.runner.run(x)          # untimed: first-call allocations and set-up
            self.warm = True
        t0 = time.perf_counter()
        out = self.runner.run(x)
        self.ms_per_image.append((time.perf_counter() - t0) * 1e3 / len(x))
        self.logits.append(np.asarray(out, np.float32))


def _run_resolution(arts: _Artifacts, entries: Sequence[SubnetEntry], wanted: Sequence[str],
                    data: LabelledSet, batch: int, bar: Any) -> dict[tuple[str, str], _Run]:
    """Every artifact of the subnets at one resolution over ``data`` (preprocessed once per
    batch); fp32 always runs (the agreement reference)."""
    runs: dict[tuple[str, str], _Run] = {}
    try:
        for sn in entries:
            for p in arts.precisions(sn):
                if p == "fp32" or p in wanted:
                    runs[(sn.id, p)] = _Run(*arts.open(sn, p))
        resolution = entries[0].resolution
        for idx in _batches(len(data), batch):
            x = model_inputs(arts.manifest, [data.load(i) for i in idx], resolution,
                             cropped=data.cropped)
            for run in runs.values():
                run.step(x)
            bar.update(1)
    finally:
        for run in runs.values():
            run.runner.close()
    return runs


def _topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)) * 100.0)


def _row(sn: SubnetEntry, precision: str, run: _Run, reference: np.ndarray,
         labels: np.ndarray, full: int) -> ValRow:
    logits = np.concatenate(run.logits)
    times = np.asarray(run.ms_per_image[:full] or run.ms_per_image)
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    return ValRow(sn.id, precision, sn.macs, len(labels), _topk(logits, labels, 1),
                  _topk(logits, labels, 5), agreement, float(times.mean()),
                  float(np.percentile(times, 90)), run.backend)


def evaluate_export(export_dir: str | os.PathLike[str],
                    options: ValOptions = ValOptions()) -> ValReport:
    """Evaluate every subnet and precision of the export in ``export_dir`` (files verified
    first) on a labelled set; see the module docstring."""
    start = time.perf_counter()
    root = Path(export_dir)
    if not (root / MANIFEST_FILE).is_file():
        raise ExportUsageError(f"{root} holds no {MANIFEST_FILE}; pass an export directory "
                               "(written by `mutualnet export`)")
    manifest = load_manifest(root)
    threads = int(options.threads or default_threads())
    arts = _artifacts(manifest, options, threads)
    wanted, notes = _wanted(manifest, options.precisions, arts.precisions)
    data = read_labelled_set(manifest, options.data, options.limit)
    _check_labels(data, manifest)
    groups: dict[int, list[SubnetEntry]] = {}
    for sn in manifest.subnets:
        groups.setdefault(sn.resolution, []).append(sn)
    full = len(data) // options.batch          # full batches (latency is taken over them)
    bar = _progress(len(groups) * -(-len(data) // options.batch), options.progress)
    rows: list[ValRow] = []
    with bar:
        for entries in groups.values():
            runs = _run_resolution(arts, entries, wanted, data, options.batch, bar)
            for sn in entries:
                reference = np.concatenate(runs[(sn.id, "fp32")].logits)
                rows += [_row(sn, p, runs[(sn.id, p)], reference, data.labels, full)
                         for p in wanted if (sn.id, p) in runs]
    order = {sid: i for i, sid in enumerate(manifest.subnet_ids)}
    rows.sort(key=lambda r: (order[r.subnet], PRECISIONS.index(r.precision)))
    return ValReport(root, manifest.model.name, data.source, len(data),
                     options.batch, threads, arts.device_name, tuple(rows),
                     time.perf_counter() - start, tuple(notes))


def write_val_report(report: ValReport, out_dir: str | os.PathLike[str] | None = None
                     ) -> tuple[Path, Path]:
    """Write ``val.md`` and ``val.json`` into ``out_dir`` (default: the export directory)."""
    out = Path(out_dir) if out_dir is not None else report.export_dir
    if out.exists() and not out.is_dir():
        raise ExportUsageError(f"--out {out} is a file; give a directory")
    md = (f"# Validation: {report.model} export {report.export_dir.name}\n\n"
          f"{report.describe()}.\n\n{report.table()}\n"
          + "".join(f"\nnote: {n}" for n in report.notes) + ("\n" if report.notes else ""))
    doc = json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n"
    atomic_write_bytes(out / VAL_MD, md.encode("utf-8"))
    atomic_write_bytes(out / VAL_JSON, doc.encode("utf-8"))
    return out / VAL_MD, out / VAL_JSON
