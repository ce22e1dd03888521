"""Export a grid of subnets from a checkpoint, end to end.

For every (width, resolution) pair: calibrate BN for the pair (SPEC 4) -> slice into a plain
model (BN folded) -> save ``weights.safetensors`` + ``arch.json`` -> export ``model.onnx``
(checked) -> parity on held-out real images (sliced model and each ONNX Runtime backend
against the supernet) -> one manifest entry. Then ``parity.md``, ``parity.json`` and
``manifest.json``.

Everything is written into a temporary directory next to the output directory and moved
into place only when complete: a crash, Ctrl-C or a full disk leaves no half-written
export (and with ``force`` the previous export stays intact until the new one is whole).
Subnets that fail parity are kept, marked ``"status": "parity_failed"`` in the manifest,
and reported in :attr:`ExportReport.failed` (the CLI then exits 1). ``parity_images.npz``
keeps the held-out images parity used (uint8 RGB at the preprocessing crop, with labels;
capped at 16 MB of pixels), listed in the manifest's ``files``: ``build-engines`` runs
engine parity on them by default.

```python
from export.pipeline import ExportOptions, export_checkpoint
report = export_checkpoint("runs/tiny_mobilenet", "deploy/tiny",
                           ExportOptions(widths=(0.25, 0.5, 1.0), resolutions=(32, 24)))
print(report.table)
```
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mutualnet.config import MAX_RESOLUTION
from mutualnet.device import resolve_device
from mutualnet.fileio import directory_lock, fault_point, terminate_as_exception

from .backends import make_runner
from .backends.onnxruntime import available_backends
from .backends.tensorrt import check_buildable
from .errors import ExportError, ExportUsageError
from .graph_identity import identity_metadata, record_graphs
from .manifest import SCHEMA_VERSION, file_entry, subnet_id, utc_now, write_manifest
from .onnx_export import DEFAULT_EXPORTER, EXPORTERS, INPUT_NAME, OUTPUT_NAME, export_onnx
from .parity import ParityGate, ParityResult, collect, compare, top1_percent
from .parity_data import NO_LABELS
from .precisions import (
    DEFAULT_CALIB_IMAGES,
    PrecisionResult,
    build_precisions,
    engine_precision,
    parse_precisions,
    precision_records,
    read_calibration_images,
)
from .preprocess import preprocess_images
from .profiles import DeployProfile, load_profile, override_gates, with_engine_precision

PARITY_MD = "parity.md"
PARITY_JSON = "parity.json"
SUBNETS_DIR = "subnets"
SLICED = "pytorch_sliced"  # parity key of the sliced plain model vs the supernet
# parity_images.npz keeps the held-out images (uint8, at the preprocessing crop) for engine
# parity on the device; at most this many bytes of pixels (500 CIFAR images are 1.5 MB, at
# 224 px the cap keeps 111 of them)
PARITY_IMAGES_MAX_BYTES = 16 << 20

Pair = tuple[float, int]


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how; ``None`` fields fall back on the checkpoint's config."""

    widths: tuple[float, ...] | None = None  # None: config.width_mult_list or the range ends
    resolutions: tuple[int, ...] | None = None  # None: the model's resolution list
    pairs: tuple[Pair, ...] | None = None  # explicit pairs instead of widths x resolutions
    profile: str | None = None  # deploy profile name or .yml path (None: "cpu")
    calib_images: int | None = None  # None: config.calib_images (0 for imported weights with
    #                                  BN folded); 0: keep the stored BN statistics
    eval_images: int = 500  # held-out images for parity and accuracy
    batch_size: int = 256
    data: str | None = None  # override the checkpoint's data (see resolve_data_spec)
    force: bool = False  # replace an existing non-empty output directory
    exporter: str = DEFAULT_EXPORTER
    device: str = "auto"  # where BN calibration runs (auto: cuda if present); parity: CPU
    progress: bool = True
    seed: int = 0
    precisions: str | tuple[str, ...] | None = None  # "fp32,fp16,int8"; None: the profile's
    int8_calib_images: int = DEFAULT_CALIB_IMAGES  # per subnet, at its resolution
    calib_data: str | None = None  # a folder of (unlabelled) int8 calibration images
    int8_method: str = "minmax"  # activation ranges: minmax, percentile, entropy
    gates: tuple[str, ...] = ()  # "KEY=VALUE" overrides of the profile's parity gates
    attachments: tuple[tuple[str, str], ...] = ()  # (files key, path): files copied into the
    #                                                export and listed in the manifest


@dataclass(frozen=True)
class SubnetReport:
    """The outcome for one (width, resolution) pair."""

    id: str
    width: float
    resolution: int
    macs: int
    params: int
    parity: Mapping[str, ParityResult]
    accuracy: Mapping[str, float | None]
    timings: Mapping[str, float]
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    precisions: Mapping[str, PrecisionResult] = field(default_factory=dict)  # fp16 / int8
    precision_record: Mapping[str, Any] = field(default_factory=dict)  # manifest "precisions"

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity.values())

    @property
    def precision_failures(self) -> list[str]:
        return [f"{self.id}: {r.failure()}" for r in self.precisions.values() if not r.passed]

    @property
    def status(self) -> str:
        return "ok" if self.passed else "parity_failed"

    @property
    def labelled(self) -> bool:
        """Whether accuracy was measured (the parity images had labels)."""
        return any(v is not None for v in self.accuracy.values())

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "width": self.width, "resolution": self.resolution,
                "macs": self.macs, "params": self.params, "status": self.status,
                "accuracy": dict(self.accuracy) if self.labelled else NO_LABELS,
                "parity": {k: v.to_dict() for k, v in self.parity.items()},
                "precisions": {k: v.to_dict() for k, v in self.precisions.items()},
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()}}


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_checkpoint` wrote."""

    out_dir: Path
    manifest: Path
    subnets: tuple[SubnetReport, ...]
    seconds: float
    table: str
    notes: tuple[str, ...] = ()  # decisions the caller should show (e.g. BN kept as stored)
    precisions: tuple[str, ...] = ("fp32",)
    precisions_explicit: bool = False   # --precision given: a failed precision fails the run

    @property
    def failed(self) -> list[str]:
        return [s.id for s in self.subnets if not s.passed]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def precision_failures(self) -> list[str]:
        """fp16 / int8 artifacts that failed their gate and were left out of the manifest."""
        return [f for s in self.subnets for f in s.precision_failures]


# --------------------------------------------------------------------------- validation
def check_output_dir(out: Path, *, force: bool, protect: Sequence[Path] = ()) -> None:
    """Usage error unless ``out`` may receive an export: absent, empty, or (with ``force``) a
    previous export whose manifest lists every file in it. ``out`` may never be or contain a
    path in ``protect`` (the checkpoint being exported), ``force`` or not."""
    if out.exists() and not out.is_dir():
        raise ExportUsageError(f"output path {out} exists and is not a directory; pick "
                               "another --out")
    resolved = out.resolve()
    for p in protect:
        if resolved == p.resolve() or resolved in p.resolve().parents:
            raise ExportUsageError(f"--out {out} holds {p}, the checkpoint being exported; "
                                   "pick another --out (the default is RUN/export)")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not force:
        raise ExportUsageError(f"output directory {out} exists and is not empty; pass "
                               "--force to replace a previous export there or pick another --out")
    foreign = files_not_in_manifest(out)
    if foreign:
        raise ExportUsageError(f"--force replaces only a previous export, and {out} holds "
                               f"{len(foreign)} file(s) its manifest.json does not list (e.g. "
                               f"{foreign[0]}); move them away or pick another --out")


def files_not_in_manifest(out: Path) -> list[str]:
    """Files under ``out`` that its manifest.json did not write (posix paths relative to
    ``out``): all but the manifest, what it lists, build_engines.sh and the files beside a
    listed engine (its timing cache). No readable manifest: a usage error."""
    try:
        doc = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError, RecursionError):
        raise ExportUsageError(f"--force replaces only a previous export, and {out} has no "
                               "readable manifest.json; pick another --out or empty it "
                               "yourself") from None
    listed = {"manifest.json", "build_engines.sh", *_listed_paths(doc)}
    engine_dirs = {str(Path(p).parent) for p in listed if p.endswith(".plan")}
    present = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_file() or p.is_symlink())
    return [p for p in present if p not in listed and str(Path(p).parent) not in engine_dirs]


def _listed_paths(node: Any) -> Iterator[str]:
    """Every ``"path"`` string in a manifest document (file entries and engine records)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("path"), str):
                yield item["path"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def plan_grid(model: Any, *, widths: Sequence[float] | None = None,
              resolutions: Sequence[int] | None = None,
              pairs: Sequence[Pair] | None = None,
              default_widths: Sequence[float] | None = None) -> list[Pair]:
    """The (width, resolution) pairs to export, validated against the trained model.

    ``pairs`` wins over ``widths`` x ``resolutions``; missing widths default to
    ``default_widths`` (else the ends of the width range), resolutions to the model's list.
    Duplicates are dropped; order is kept.
    """
    lo, hi = (float(v) for v in model.width_range)
    if pairs:
        grid = [(float(w), int(r)) for w, r in pairs]
    else:
        ws = list(widths or default_widths or (lo, hi))
        rs = list(resolutions or model.resolutions)
        grid = [(float(w), int(r)) for w in ws for r in rs]
    min_r = model.min_resolution()
    for w, r in grid:
        if not math.isfinite(w) or w < lo - 1e-9 or w > hi + 1e-9:
            raise ExportUsageError(f"width {w:g} is outside the trained width range "
                                   f"[{lo:g}, {hi:g}] of this checkpoint; pick widths inside it")
        if r < min_r:
            raise ExportUsageError(f"resolution {r} is below the model's minimum of {min_r} px "
                                   "(its total stride); pick larger resolutions")
        if r > MAX_RESOLUTION:
            raise ExportUsageError(f"resolution {r} is above the limit of {MAX_RESOLUTION} px; "
                                   "pick smaller resolutions")
    return list(dict.fromkeys(grid))


def parse_pairs(text: str) -> tuple[Pair, ...]:
    """``"0.25@128,1.0@224"`` -> ((0.25, 128), (1.0, 224)); usage error on bad items."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        w, sep, r = item.partition("@")
        try:
            if not sep:
                raise ValueError
            out.append((float(w), int(r)))
        except ValueError:
            raise ExportUsageError(f"bad pair {item!r}: write WIDTH@RESOLUTION, e.g. "
                                   "0.25@128,1.0@224") from None
    if not out:
        raise ExportUsageError("--pairs needs at least one WIDTH@RESOLUTION")
    return tuple(out)


def resolve_data_spec(config: Any, data: str | None) -> Any:
    """The data to calibrate and check on: the config's, or ``data`` instead.

    ``data`` is a ``--data`` value, parsed by :func:`mutualnet.data.parse_data_arg`: a data
    set name, ``NAME:PATH``, a ``.npz`` file, or a folder.
    """
    if data:
        from mutualnet.data import parse_data_arg

        dataset, root = parse_data_arg(data, config.dataset)
        config = config.replace(dataset=dataset, dataset_dir=root)
    return config.data_spec()


# --------------------------------------------------------------------------- the pipeline
@dataclass
class _Context:
    """Per-run state the subnet loop shares (not part of the public API)."""

    model: Any
    config: Any
    profile: DeployProfile
    options: ExportOptions
    train: Any
    eval_x: list[Any]
    eval_y: np.ndarray | None   # None: the images have no labels (parity_data)
    backends: list[str]
    calib_images: int
    classes: tuple[str, ...]
    data_spec: Any
    identity: dict[str, Any] = field(default_factory=dict)  # identity_metadata's model part
    source: Any = None          # export.parity_data.ParityData
    precisions: tuple[str, ...] = ("fp32",)
    quant_x: list[Any] = field(default_factory=list)  # int8 calibration images (base crop)
    quant_source: str = "train"
    quant_images: list[np.ndarray] | None = None  # from --calib-data (uint8, any size)


def export_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      options: ExportOptions = ExportOptions()) -> ExportReport:
    """Export the grid ``options`` describes from ``checkpoint`` into ``out_dir``.

    Holds the lock of ``out_dir`` (a second export there is a usage error naming this one)
    and turns SIGTERM into :class:`~mutualnet.errors.Interrupted` after removing its working
    directories; working directories a killed export left beside ``out_dir`` are removed
    first (and a previous export moved aside by one is put back).
    """
    from mutualnet.checkpoint import resolve_checkpoint_path

    start = time.perf_counter()
    out = Path(out_dir).expanduser()
    weights = resolve_checkpoint_path(checkpoint)
    check_output_dir(out, force=options.force, protect=(weights,))
    check_options(options)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"mutualnet export {weights}"
    with directory_lock(out, command), terminate_as_exception():
        remove_stale_staging(out)
        check_output_dir(out, force=options.force, protect=(weights,))  # one may be back
        return _export_locked(weights, out, options, start)


def check_options(options: ExportOptions) -> None:
    """Usage errors in ``options`` that need no checkpoint."""
    if options.exporter not in EXPORTERS:
        raise ExportUsageError(f"unknown exporter {options.exporter!r}; use one of "
                               f"{', '.join(EXPORTERS)}")
    if options.eval_images < 1 or options.batch_size < 1:
        raise ExportUsageError("--eval-images and the batch size must be at least 1")
    if options.calib_images is not None and options.calib_images < 0:
        raise ExportUsageError("--calib-images must be >= 0 (0 keeps the stored BN statistics)")
    if options.pairs and (options.widths or options.resolutions):
        raise ExportUsageError("--pairs lists the (width, resolution) points itself; drop "
                               "--widths/--resolutions or drop --pairs")


def _export_locked(checkpoint: Path, out: Path, options: ExportOptions,
                   start: float) -> ExportReport:
    from mutualnet.checkpoint import load_checkpoint
    from mutualnet.data import preprocessing

    profile = override_gates(load_profile(options.profile), options.gates)
    precisions, explicit = parse_precisions(options.precisions, profile)
    # the manifest records the engine precision build-engines will use by default
    profile = with_engine_precision(profile, engine_precision(profile, precisions, explicit))
    folder = read_calibration_images(options.calib_data, options.int8_calib_images) \
        if "int8" in precisions else None
    options = dataclasses.replace(options, device=str(resolve_device(options.device)))
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    model, config = ckpt.model.eval(), ckpt.config
    grid = plan_grid(model, widths=options.widths, resolutions=options.resolutions,
                     pairs=options.pairs, default_widths=config.width_mult_list)
    check_buildable(profile, len(grid))   # e.g. more subnets than a DLA core can load
    notes: list[str] = []
    if options.calib_images is None and bn_stats_folded(ckpt.extra):
        options = dataclasses.replace(options, calib_images=0)
        notes.append("BN statistics kept as stored (--calib-images 0): this checkpoint's "
                     "imported weights have BN folded into the convs, and recalibrating would "
                     "change what they compute; pass --calib-images N to recalibrate anyway")
    ctx = _prepare(model, config, profile, options, precisions)
    notes += [n for n in (ctx.source.note(),) if n]
    if folder is not None:
        ctx.quant_images, ctx.quant_source = folder, f"folder {Path(options.calib_data or '')}"
    # no names in the checkpoint nor labels in the data: number them, as `run` prints them
    classes = list(ckpt.classes or ctx.classes) or [
        f"class {i}" for i in range(model_num_classes(model))]
    ctx.identity.update(model=config.model, classes=classes, checkpoint_sha256=ckpt.sha256,
                        preprocessing=preprocessing(ctx.data_spec))
    with _staging(out) as tmp:
        reports = []
        for w, r in _progress(grid, options.progress, config.model):
            reports.append(_export_one(ctx, tmp, w, r))
            fault_point("export.subnet")
        reports.sort(key=lambda s: (s.macs, s.width, s.resolution))
        table = parity_table(reports)
        files = _write_reports(tmp, reports, table, ckpt, profile, ctx.source)
        files.update(attach_files(tmp, options.attachments))
        files["parity_images"], kept = write_parity_images_file(
            tmp, ctx.eval_x, ctx.eval_y, preprocessing(ctx.data_spec))
        held_out = sum(len(x) for x in ctx.eval_x)
        if kept < held_out:
            notes.append(f"parity_images.npz keeps {kept} of the {held_out} held-out "
                         f"images (capped at {PARITY_IMAGES_MAX_BYTES >> 20} MB); engine "
                         "parity on the device uses those, or pass build-engines --images")
        doc = _manifest(config, model, classes, ckpt, profile, ctx, reports, files)
        record_graphs(tmp, doc)  # each subnet's "graph" record, from its ONNX graph
        manifest = write_manifest(tmp, doc)
        fault_point("export.staged")
        _install(tmp, out, force=options.force, protect=(checkpoint,))
    return ExportReport(out, out / manifest.name, tuple(reports),
                        time.perf_counter() - start, table, tuple(notes), precisions, explicit)


def attach_files(tmp: Path, attachments: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Copy each (key, path) of ``attachments`` into ``tmp``; their manifest file entries."""
    files = {}
    for key, src in attachments:
        dest = tmp / Path(src).name
        shutil.copyfile(src, dest)
        files[key] = file_entry(tmp, dest)
    return files


def bn_stats_folded(extra: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's ``extra`` says its weights are an import with BN folded
    (``{"imported": {"bn_stats": "folded"}}``, written by mutualnet.weights for TFLite)."""
    imported = extra.get("imported")
    return isinstance(imported, Mapping) and imported.get("bn_stats") == "folded"


def _prepare(model: Any, config: Any, profile: DeployProfile,
             options: ExportOptions, precisions: tuple[str, ...] = ("fp32",)) -> _Context:
    from .parity_data import labelled_data, parity_data

    calib = config.calib_images if options.calib_images is None else options.calib_images
    # calibration reads at most `calib` images: decode only that many (balanced over classes)
    src = parity_data(config, options.data, eval_images=options.eval_images,
                      calib_images=calib, seed=options.seed) or labelled_data(
        resolve_data_spec(config, options.data), max_train_images=config.max_train_images,
        eval_images=options.eval_images, calib_images=calib)
    num_classes = model_num_classes(model)
    if src.labelled and src.val.num_classes > num_classes:
        raise ExportUsageError(f"the data has {src.val.num_classes} classes but the model "
                               f"predicts {num_classes}; pass the --data it was trained on")
    xs, ys = [], []
    for x, y in src.val.batches(options.batch_size, augment=False, shuffle=False,
                                limit=options.eval_images):
        xs.append(x.float().cpu())
        ys.append(y.cpu().numpy())
    ctx = _Context(model, config, profile, options, src.train, xs,
                   np.concatenate(ys) if src.labelled else None,
                   available_backends(profile.ort_providers), calib, src.classes, src.spec,
                   source=src, precisions=precisions)
    if "int8" in precisions:   # int8 ranges: training images when loaded, else the held-out
        n = options.int8_calib_images
        train = src.train
        ctx.quant_x = [x.float().cpu() for x, _ in train.batches(
            options.batch_size, augment=False, shuffle=True, seed=options.seed, limit=n)] \
            if train is not None else xs
        ctx.quant_source = "train" if train is not None else "held_out"
    return ctx


def model_num_classes(model: Any) -> int:
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features)


def _progress(grid: list[Pair], enabled: bool, name: str) -> Iterator[Pair]:
    from tqdm import tqdm

    bar = tqdm(grid, desc=f"export {name}", unit="subnet", file=sys.stderr,
               disable=not enabled, dynamic_ncols=True)
    for w, r in bar:
        bar.set_postfix_str(subnet_id(w, r))
        yield w, r


def _gate(profile: DeployProfile, backend: str) -> ParityGate:
    """fp32 elementwise gate, except ORT's TensorRT provider (TF32 inside): agreement gate."""
    return ParityGate.from_profile(profile, precision="tf32" if backend.endswith("tensorrt")
                                   else "fp32")


def _export_one(ctx: _Context, tmp: Path, width: float, resolution: int) -> SubnetReport:
    import torch

    from mutualnet.calibrate import calibrate_bn
    from mutualnet.data import preprocessing, resize_to
    from mutualnet.flops import count

    from .slicing import save_subnet, slice_subnet
    from .torch_runner import TorchRunner

    opts, model = ctx.options, ctx.model
    sid = subnet_id(width, resolution)
    t: dict[str, float] = {}
    clock = time.perf_counter()
    if ctx.calib_images > 0:
        model.to(opts.device)
        calibrate_bn(model, width, resolution, ctx.train, num_images=ctx.calib_images,
                     batch_size=ctx.config.calib_batch_size, device=opts.device, seed=opts.seed)
        model.to("cpu")
    model.eval()
    t["calibrate"], clock = _lap(clock)
    sliced = slice_subnet(model, width, resolution, model_kwargs=ctx.config.model_kwargs)
    t["slice"], clock = _lap(clock)
    sub_dir = tmp / SUBNETS_DIR / sid
    weights, arch = save_subnet(sliced, sub_dir)
    onnx_info = export_onnx(sliced.module, resolution, sub_dir / "model.onnx",
                            exporter=opts.exporter, metadata=identity_metadata(
                                subnet_id=sid, width=width, resolution=resolution,
                                **ctx.identity))
    t["save_and_onnx"], clock = _lap(clock)
    with torch.no_grad():
        batches = [resize_to(x, resolution).contiguous().numpy() for x in ctx.eval_x]
    labels = ctx.eval_y
    reference = collect(TorchRunner(model, width=width), batches)
    fp32 = _gate(ctx.profile, "pytorch")
    sliced_logits = collect(TorchRunner(sliced.module, name=SLICED), batches)
    parity = {SLICED: compare(reference, sliced_logits, labels, gate=fp32, backend=SLICED)}
    accuracy: dict[str, float | None] = {"pytorch": top1_percent(reference, labels)}
    for backend in ctx.backends:
        logits = collect(make_runner(backend, onnx_info.path), batches)
        parity[backend] = compare(reference, logits, labels, gate=_gate(ctx.profile, backend),
                                  backend=backend)
        accuracy[backend] = parity[backend].top1
    t["parity"], clock = _lap(clock)
    with torch.no_grad():
        calib = [resize_to(x, resolution).contiguous().numpy() for x in ctx.quant_x]
    if ctx.quant_images is not None:
        calib = [preprocess_images(ctx.quant_images, preprocessing(ctx.data_spec), resolution)]
    precs = build_precisions(onnx_info.path, ctx.precisions, batches, labels, ctx.profile,
                             calibration=calib, calib_source=ctx.quant_source,
                             calib_images=opts.int8_calib_images,
                             int8_method=opts.int8_method) \
        if len(ctx.precisions) > 1 and all(p.passed for p in parity.values()) else {}
    extra, record = precision_records(precs, parity.get("onnxruntime"), tmp)
    t["precisions"], clock = _lap(clock)
    cost = count(model, width, resolution)
    files = {"onnx": file_entry(tmp, onnx_info.path), "weights": file_entry(tmp, weights),
             "arch": file_entry(tmp, arch), **extra}
    t["total"] = sum(t.values())
    return SubnetReport(sid, float(width), int(resolution), int(cost.macs), int(cost.params),
                        parity, accuracy, t, files, precs, record)


def _lap(clock: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now - clock, now


# --------------------------------------------------------------------------- reports
def to_uint8_images(batches: Sequence[Any], pre: Mapping[str, Any]) -> np.ndarray:
    """Normalized float NCHW batches back to uint8 RGB NHWC (undo mean/std and input_scale,
    round). Exact for data read from uint8 pixels at the crop size (CIFAR); within half a
    grey level where the crop was resized."""
    mean = np.asarray(pre["mean"], dtype=np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float64).reshape(1, 3, 1, 1)
    x = np.concatenate([np.asarray(b, dtype=np.float64) for b in batches])
    u8 = np.clip(np.rint((x * std + mean) * float(pre["input_scale"])), 0, 255).astype(np.uint8)
    nhwc = u8.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(nhwc[..., ::-1] if pre.get("channel_order") == "BGR" else nhwc)


def write_parity_images_file(tmp: Path, batches: Sequence[Any], labels: np.ndarray | None,
                             pre: Mapping[str, Any], *,
                             max_bytes: int = PARITY_IMAGES_MAX_BYTES
                             ) -> tuple[dict[str, Any], int]:
    """Write ``parity_images.npz`` (at most ``max_bytes`` of pixels, taken evenly over the
    held-out set); returns (its file entry, images kept)."""
    from .parity_images import PARITY_IMAGES_FILE, write_parity_images

    images = to_uint8_images([b.numpy() if hasattr(b, "numpy") else b for b in batches], pre)
    keep = max(1, min(len(images), max_bytes // max(1, images[0].nbytes)))
    idx = np.linspace(0, len(images) - 1, keep).astype(int)
    path = write_parity_images(tmp / PARITY_IMAGES_FILE, images[idx],
                               None if labels is None else np.asarray(labels)[idx],
                               crop=int(pre["crop"]))
    return file_entry(tmp, path), keep


def _fmt(v: float | None, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def parity_table(reports: Sequence[SubnetReport]) -> str:
    """Markdown table, one row per subnet and precision: MACs, PyTorch top-1, ORT top-1,
    agreement (fp32: with the supernet; fp16 / int8: with the fp32 ONNX), accuracy drop,
    max diffs, result."""
    head = ("| subnet | MACs | PyTorch top-1 | ORT top-1 | agreement | precision | drop pt | "
            "max diff ORT | max diff sliced | time s | result |")
    lines = [head, "|" + "---|" * 11]
    for s in reports:
        ort = s.parity.get("onnxruntime")
        sl = s.parity.get(SLICED)
        failed = [k for k, p in s.parity.items() if not p.passed]
        result = "pass" if not failed else "FAIL (" + ", ".join(failed) + ")"
        missing = "-" if s.labelled else NO_LABELS
        lines.append(_row(s, "fp32", s.accuracy.get("pytorch"), ort, sl, s.timings.get(
            "total", 0.0), result, missing))
        for prec, r in s.precisions.items():
            lines.append(_row(s, prec, None, r.parity, None, r.seconds,
                              "pass" if r.passed else f"FAIL ({r.failure()}; left out)", missing))
    return "\n".join(lines)


def _row(s: SubnetReport, precision: str, torch_top1: float | None, p: ParityResult | None,
         sliced: ParityResult | None, seconds: float, result: str, missing: str = "-") -> str:
    from mutualnet.flops import human

    drop = p.accuracy_drop_pt if p is not None and precision != "fp32" else None
    torch_cell = _fmt(torch_top1, '.2f', missing if precision == "fp32" else "-")
    return (f"| {s.id} | {human(s.macs)} | {torch_cell} | "
            f"{_fmt(p.top1 if p else None, '.2f', missing)} | "
            f"{_fmt(100 * p.top1_agreement if p else None, '.1f')}% | {precision} | "
            f"{_fmt(drop, '+.2f')} | {_fmt(p.max_abs_diff if p else None, '.2e')} | "
            f"{_fmt(sliced.max_abs_diff if sliced else None, '.2e')} | {seconds:.2f} | "
            f"{result} |")


def _write_reports(tmp: Path, reports: Sequence[SubnetReport], table: str, ckpt: Any,
                   profile: DeployProfile, source: Any) -> dict[str, dict[str, Any]]:
    images = reports[0].parity[SLICED].images if reports else 0
    gate = ParityGate.from_profile(profile, precision="fp32")
    md = (f"# Parity: {ckpt.config.model} from {ckpt.path.name}\n\n"
          f"Images: {source.describe()}; reference: the supernet at each (w, r) with BN "
          f"calibrated for it; gate: max abs logit diff <= {gate.max_abs_diff:g} (fp32). "
          f"Profile: {profile.name}.\n\n{table}\n")
    doc = {"model": ckpt.config.model, "checkpoint": ckpt.path.name,
           "checkpoint_sha256": ckpt.sha256, "profile": profile.name, "images": images,
           "data": {"source": source.kind, "labelled": source.labelled,
                    "description": source.describe()},
           "gate": dataclasses.asdict(gate), "created": utc_now(),
           "subnets": [s.to_dict() for s in reports]}
    (tmp / PARITY_MD).write_text(md)
    (tmp / PARITY_JSON).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return {"parity_md": file_entry(tmp, tmp / PARITY_MD),
            "parity_json": file_entry(tmp, tmp / PARITY_JSON)}


def _manifest(config: Any, model: Any, classes: list[str], ckpt: Any, profile: DeployProfile,
              ctx: _Context, reports: Sequence[SubnetReport],
              files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from mutualnet import __version__
    from mutualnet.data import preprocessing

    num_classes = model_num_classes(model)
    full_eval = run_eval_accuracy(ckpt.path, ckpt.sha256)
    subnets = []
    for s in reports:
        n = s.parity[SLICED].images
        subnets.append({
            "id": s.id, "width": s.width, "resolution": s.resolution, "macs": s.macs,
            "params": s.params,
            "input": {"name": INPUT_NAME, "shape": ["N", 3, s.resolution, s.resolution],
                      "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": ["N", num_classes], "dtype": "float32"},
            "files": {k: dict(v) for k, v in s.files.items()},
            "accuracy": {k: {"top1": None if v is None else round(v, 4), "images": n}
                         for k, v in s.accuracy.items()},
            "parity": {k: v.manifest_entry() for k, v in s.parity.items()},
            "engines": [], "latency": {}, "status": s.status,
            **({"precisions": dict(s.precision_record)} if s.precision_record else {}),
            "selection_accuracy": selection_accuracy(s, full_eval),
        })
    return {
        "schema_version": SCHEMA_VERSION, "created": utc_now(),
        "generator": f"mutualnet {__version__}",
        "model": {"name": config.model, "num_classes": num_classes, "classes": classes,
                  "width_range": [float(v) for v in model.width_range],
                  "model_kwargs": dict(config.model_kwargs)},
        "source_checkpoint": {"file": ckpt.path.name, "sha256": ckpt.sha256},
        "preprocessing": preprocessing(ctx.data_spec),
        "profile": profile.to_dict(),
        "selection": {"order": "macs", "policy": "most_accurate_within_budget"},
        "files": files,
        "subnets": subnets,
    }


def run_eval_accuracy(checkpoint: Path, sha256: str) -> dict[str, tuple[float, int]]:
    """Top-1 (and images) per subnet id from the run's full evaluation, ``eval/eval.json``
    beside the checkpoint, when it was made from this very checkpoint; else empty."""
    from mutualnet.errors import UsageError
    from mutualnet.evaluate import GRID_JSON, load_grid

    path = Path(checkpoint).parent / "eval" / GRID_JSON
    try:
        if json.loads(path.read_text()).get("sha256") != sha256:
            return {}
        _, points = load_grid(path)
    except (OSError, ValueError, AttributeError, UsageError):
        return {}
    return {subnet_id(p.width, p.resolution): (float(p.top1), int(p.images)) for p in points}


def selection_accuracy(report: SubnetReport,
                       full_eval: Mapping[str, tuple[float, int]]) -> dict[str, Any]:
    """The accuracy ``best``, ``run`` and ``select_budget`` choose by: the full eval's top-1
    for this (w, r) when there was one, else parity's (ONNX Runtime's, else PyTorch's)."""
    if report.id in full_eval:
        top1, images = full_eval[report.id]
        return {"top1": round(top1, 4), "source": "eval", "images": images}
    parity = report.accuracy.get("onnxruntime")
    if parity is None:
        parity = report.accuracy.get("pytorch")
    return {"top1": None if parity is None else round(parity, 4), "source": "parity",
            "images": report.parity[SLICED].images}


# --------------------------------------------------------------------------- staging
@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` (named with this pid); removed on any failure
    (nothing half-written) and on SIGTERM (see :func:`export_checkpoint`)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise ExportError(f"cannot create a working directory in {out.parent}: "
                          f"{e.strerror or e}; check the path and permissions") from None
    try:
        yield tmp
    except OSError as e:
        hint = " (disk full: free space and retry)" if e.errno in (errno.ENOSPC, errno.EDQUOT) \
            else ""
        raise ExportError(f"export failed while writing: {e.strerror or e}{hint}; nothing was "
                          f"written to {out}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _staging_pid(path: Path, out: Path) -> int | None:
    """The pid in ``.OUT.tmp-PID-XXXX`` / ``.OUT.old-PID`` (None: not one of ours or no pid)."""
    for kind in ("tmp", "old"):
        prefix = f".{out.name}.{kind}-"
        if path.name.startswith(prefix):
            head = path.name[len(prefix):].split("-", 1)[0]
            return int(head) if head.isdigit() else -1
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the working directories of exports into ``out`` whose process is gone; put a
    previous export back first if a killed install had moved it aside. Returns what went."""
    removed = []
    for p in sorted(out.parent.glob(f".{out.name}.*-*")):
        pid = _staging_pid(p, out)
        if pid is None or not p.is_dir():
            continue
        if _alive(pid) and pid != os.getpid():  # our own pid: a killed run's, recycled
            continue
        if p.name.startswith(f".{out.name}.old-") and not out.exists():
            os.replace(p, out)  # an install killed between its two renames
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _default_modes(root: Path) -> None:
    """Temp files are created 0600 and temp dirs 0700: give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            (Path(dirpath) / d).chmod(0o777 & ~umask)
        for f in filenames:
            (Path(dirpath) / f).chmod(0o666 & ~umask)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _install(tmp: Path, out: Path, *, force: bool, protect: Sequence[Path] = ()) -> None:
    """Move the finished ``tmp`` to ``out``, replacing a previous export there (``force``)
    in one atomic exchange where the platform has one: at every moment ``out`` is the whole
    previous export or the whole new one."""
    _default_modes(tmp)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    check_output_dir(out, force=force, protect=protect)  # it changed meanwhile
    if exchange_paths(tmp, out):
        fault_point("export.swapped")
        return  # tmp now holds the previous export; _staging removes it
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        fault_point("export.swapped")
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
