"""The device manifest: schema, atomic write, load + verify (hashes, sizes, paths).

``manifest.json`` describes the standalone subnets exported from one checkpoint. It is
validated against ``manifest.schema.json`` (shipped as package data) on every write and
every load. Loading also checks each referenced file's sha256 and size and refuses paths
that leave the manifest's directory (absolute paths, ``..``, symlinks pointing out).

Torch-free: this module runs on the device.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from .errors import ManifestError
from .graph_identity import check_graph_identity
from .jsonio import read_json

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SCHEMA_FILE = "manifest.schema.json"

__all__ = [
    "MANIFEST_FILE", "SCHEMA_VERSION", "AccuracyRecord", "EngineRecord", "FileRecord",
    "LatencyRecord", "LatencyRow", "Manifest", "ModelInfo", "ParityRecord", "PrecisionRecord",
    "Preprocessing",
    "ProfileRecord", "SourceCheckpoint", "SubnetEntry", "TensorSpec", "check_files", "file_entry",
    "iter_file_entries", "load_manifest", "load_schema", "parse_manifest", "read_document",
    "safe_path", "sha256_file", "subnet_id", "update_manifest", "utc_now", "validate_document",
    "verify_manifest", "write_manifest",
]


# ----------------------------------------------------------------------------- helpers

def utc_now() -> str:
    """The current time as ISO-8601 UTC with a ``Z`` suffix (second precision)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")


def subnet_id(width: float, resolution: int) -> str:
    """The id of the subnet at (width, resolution), e.g. ``subnet_id(0.5, 160) == "w0.50-r160"``."""
    return f"w{float(width):.2f}-r{int(resolution)}"


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_relpath(rel: str) -> PurePosixPath:
    if not isinstance(rel, str) or not rel:
        raise ManifestError(f"empty or non-string file path {rel!r} in the manifest")
    if "\\" in rel:
        raise ManifestError(f"file path {rel!r} uses a backslash; manifest paths are relative "
                            "POSIX paths")
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise ManifestError(f"file path {rel!r} is absolute; manifest paths must be relative "
                            "to the manifest's directory")
    if ".." in p.parts:
        raise ManifestError(f"file path {rel!r} contains '..' and would escape the manifest's "
                            "directory; re-export instead of editing paths by hand")
    return p


def safe_path(root: str | os.PathLike[str], rel: str) -> Path:
    """Resolve ``rel`` under ``root``; refuse absolute paths, ``..`` and symlinks leading out."""
    p = _check_relpath(rel)
    root_real = Path(root).resolve()
    target = (root_real / Path(*p.parts)).resolve()
    if target != root_real and root_real not in target.parents:
        raise ManifestError(f"file {rel!r} resolves to {target}, outside the manifest's "
                            f"directory {root_real} (a symlink pointing out?); copy the real "
                            "file into the directory")
    return target


def file_entry(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path": relative posix path, "sha256", "size"}`` for ``path`` inside ``root``.

    ``path`` may be absolute, relative to the working directory, or relative to ``root``.
    """
    root_real = Path(root).resolve()
    full = Path(path)
    if not full.is_absolute() and not full.exists():
        full = Path(root) / full          # a path relative to the manifest directory
    full_real = full.resolve()
    if root_real not in full_real.parents:
        raise ManifestError(f"{path} is not inside the manifest directory {root_real}; "
                            "write artifacts under the output directory")
    if not full_real.is_file():
        raise ManifestError(f"{path} is not a file; cannot record it in the manifest")
    rel = full_real.relative_to(root_real).as_posix()
    return {"path": rel, "sha256": sha256_file(full_real), "size": full_real.stat().st_size}


# ----------------------------------------------------------------------------- schema

@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (package data ``export/manifest.schema.json``)."""
    text = resources.files("export").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def _validator() -> Any:
    try:
        import jsonschema
    except ImportError as e:  # pragma: no cover - jsonschema is a dependency
        raise ManifestError("jsonschema is missing; install it with `pip install jsonschema`") \
            from e
    cls = jsonschema.validators.validator_for(load_schema())
    cls.check_schema(load_schema())
    return cls(load_schema())


def _where(path: Any) -> str:
    parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return parts.lstrip(".") or "<document>"


def iter_file_entries(doc: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every file record of a manifest document as (where, entry): subnet files, engines, extras."""
    for key, entry in sorted((doc.get("files") or {}).items()):
        yield f"files.{key}", entry
    for i, sn in enumerate(doc.get("subnets") or []):
        sid = sn.get("id", i)
        for key, entry in sorted((sn.get("files") or {}).items()):
            yield f"subnets[{sid}].files.{key}", entry
        for j, eng in enumerate(sn.get("engines") or []):
            yield f"subnets[{sid}].engines[{j}]", eng


def validate_document(doc: Any, *, source: str = "<manifest>") -> None:
    """Schema + consistency checks (unique ids, id matches (w, r), MACs order, safe paths)."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{source}: a manifest must be a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{source}: schema_version {version!r} is not supported (this "
                            f"mutualnet reads version {SCHEMA_VERSION}); re-export with this "
                            "version or upgrade mutualnet")
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(f"{source}: invalid at {_where(e.absolute_path)}: {e.message}{more}")
    seen: set[str] = set()
    last_macs = -1
    for sn in doc["subnets"]:
        sid = sn["id"]
        if sid in seen:
            raise ManifestError(f"{source}: subnet id {sid!r} appears twice")
        seen.add(sid)
        expected = subnet_id(sn["width"], sn["resolution"])
        if sid != expected:
            raise ManifestError(f"{source}: subnet id {sid!r} does not match its width "
                                f"{sn['width']} and resolution {sn['resolution']} "
                                f"(expected {expected!r})")
        if sn["macs"] < last_macs:
            raise ManifestError(f"{source}: subnets are not ordered by MACs ascending "
                                f"(at {sid!r})")
        last_macs = sn["macs"]
    for where, entry in iter_file_entries(doc):
        try:
            _check_relpath(entry["path"])
        except ManifestError as err:
            raise ManifestError(f"{source}: {where}: {err}") from None


# ----------------------------------------------------------------------------- write

def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` via a synced temp file and ``os.replace`` (never half-written).

    ``mode`` defaults to the existing file's permissions, else 0o644 (mkstemp makes 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_manifest(out_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Validate ``manifest`` and write ``out_dir/manifest.json`` atomically; returns its path.

    Subnets are written ordered by MACs ascending (stable). Files are not re-hashed here:
    callers record entries with :func:`file_entry` when they write the files.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise ManifestError(f"manifest directory {out} does not exist; create it first")
    doc = copy.deepcopy(manifest)
    if isinstance(doc.get("subnets"), list):
        doc["subnets"] = sorted(doc["subnets"], key=lambda s: s.get("macs", 0)
                                if isinstance(s, dict) else 0)
    validate_document(doc, source=str(out / MANIFEST_FILE))
    text = json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"
    path = out / MANIFEST_FILE
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as e:
        raise ManifestError(f"could not write {path}: {e.strerror or e}; free space or fix "
                            "permissions and retry (the previous manifest is untouched)") from e
    return path


# ----------------------------------------------------------------------------- types
#
# The manifest parsed once into frozen records: readers use attributes, never the raw JSON.
# ``Manifest.document`` keeps the parsed document for writers (update_manifest mutates a copy).

def _ro(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


@dataclass(frozen=True)
class FileRecord:
    """One recorded file: manifest-relative POSIX path, sha256, size in bytes."""

    path: str
    sha256: str
    size: int

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> FileRecord:
        return cls(str(d["path"]), str(d["sha256"]), int(d["size"]))


@dataclass(frozen=True)
class TensorSpec:
    """An ONNX input or output: name, shape (``"N"`` for the dynamic batch), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), tuple(d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class ModelInfo:
    """What network the subnets come from."""

    name: str
    num_classes: int
    classes: tuple[str, ...]
    width_range: tuple[float, float]
    model_kwargs: Mapping[str, Any]

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> ModelInfo:
        lo, hi = (float(v) for v in d["width_range"])
        return cls(str(d["name"]), int(d["num_classes"]), tuple(map(str, d["classes"])),
                   (lo, hi), _ro(d["model_kwargs"]))


@dataclass(frozen=True)
class SourceCheckpoint:
    """The checkpoint the subnets were exported from: file name and sha256."""

    file: str
    sha256: str

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> SourceCheckpoint:
        return cls(str(d["file"]), str(d["sha256"]))


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation transform every subnet expects (resize, crop, normalization)."""

    resize: int | None
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str
    input_scale: float
    interpolation: str
    layout: str
    resize_mode: str | None = None     # absent on disk: "shorter_side"

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Preprocessing:
        mean = tuple(float(v) for v in d["mean"])
        std = tuple(float(v) for v in d["std"])
        return cls(_opt_int(d["resize"]), int(d["crop"]), mean, std,  # type: ignore[arg-type]
                   str(d["channel_order"]), float(d["input_scale"]), str(d["interpolation"]),
                   str(d["layout"]), d.get("resize_mode"))

    def as_dict(self) -> dict[str, Any]:
        """The on-disk mapping (``resize_mode`` only when recorded), e.g. for preprocess_images."""
        d: dict[str, Any] = {"resize": self.resize, "crop": self.crop, "mean": list(self.mean),
                             "std": list(self.std), "channel_order": self.channel_order,
                             "input_scale": self.input_scale,
                             "interpolation": self.interpolation, "layout": self.layout}
        if self.resize_mode is not None:
            d["resize_mode"] = self.resize_mode
        return d


@dataclass(frozen=True)
class ProfileRecord:
    """The deploy profile the export was made for (``data``: the whole recorded mapping)."""

    name: str
    runtime: str
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    ort_providers: tuple[str, ...]
    tensorrt_major: int | None
    dla_core: int | None
    data: Mapping[str, Any]

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> ProfileRecord:
        return cls(str(d["name"]), str(d["runtime"]), str(d["precision"]), int(d["min_batch"]),
                   int(d["opt_batch"]), int(d["max_batch"]),
                   tuple(map(str, d.get("ort_providers") or ())),
                   _opt_int(d.get("tensorrt_major")), _opt_int(d.get("dla_core")), _ro(d))


@dataclass(frozen=True)
class ParityRecord:
    """One backend's parity against the reference, as recorded."""

    passed: bool
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    accuracy_drop_pt: float | None = None
    tolerance_that_passes: float | None = None
    images: int | None = None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> ParityRecord:
        return cls(bool(d["passed"]), _opt_float(d.get("max_abs_diff")),
                   _opt_float(d.get("top1_agreement")), _opt_float(d.get("accuracy_drop_pt")),
                   _opt_float(d.get("tolerance_that_passes")), _opt_int(d.get("images")))


@dataclass(frozen=True)
class AccuracyRecord:
    """Top-1 (percent, None when unknown) on ``images`` held-out images."""

    top1: float | None
    images: int | None = None
    source: str | None = None     # selection accuracy only: "eval" or "parity"

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> AccuracyRecord:
        src = d.get("source")
        return cls(_opt_float(d["top1"]), _opt_int(d.get("images")),
                   None if src is None else str(src))


@dataclass(frozen=True)
class EngineRecord:
    """A TensorRT engine built for one subnet on one device."""

    file: FileRecord
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    dla_core: int | None
    built: str
    precision_requested: str | None = None
    layer_precisions: Mapping[str, int] | None = None
    gpu_fallback: bool = False
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    profile: str | None = None
    parity: ParityRecord | None = None

    @property
    def path(self) -> str:
        return self.file.path

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> EngineRecord:
        layers = d.get("layer_precisions")
        par = d.get("parity")
        return cls(FileRecord.parse(d), str(d["tensorrt_version"]), str(d["gpu_name"]),
                   str(d["compute_capability"]), str(d["precision"]), _opt_int(d["dla_core"]),
                   str(d["built"]), d.get("precision_requested"),
                   None if layers is None else _ro(layers), bool(d.get("gpu_fallback", False)),
                   _opt_int(d.get("min_batch")), _opt_int(d.get("opt_batch")),
                   _opt_int(d.get("max_batch")), d.get("profile"),
                   None if par is None else ParityRecord.parse(par))


@dataclass(frozen=True)
class LatencyRow:
    """Percentiles at one batch size."""

    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_ips: float
    runs: int | None = None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> LatencyRow:
        return cls(int(d["batch"]), float(d["p50_ms"]), float(d["p90_ms"]), float(d["p99_ms"]),
                   float(d["throughput_ips"]), _opt_int(d.get("runs")))


@dataclass(frozen=True)
class LatencyRecord:
    """One measurement on one device and backend (``key``: its manifest key)."""

    key: str
    backend: str
    top: LatencyRow
    power_mode: str | None
    measured: str
    device: str | None = None
    provider: str | None = None
    by_batch: tuple[LatencyRow, ...] = ()
    precision: str = "fp32"     # of the artifact measured (absent on disk: fp32)

    @classmethod
    def parse(cls, key: str, d: Mapping[str, Any]) -> LatencyRecord:
        return cls(key, str(d["backend"]), LatencyRow.parse(d), d.get("power_mode"),
                   str(d["measured"]), d.get("device"), d.get("provider"),
                   tuple(LatencyRow.parse(r) for r in d.get("by_batch") or ()),
                   str(d.get("precision", "fp32")))

    def p90_at(self, batch: int = 1) -> float | None:
        """p90 ms at ``batch``, None when not measured at that batch."""
        for row in (self.top, *self.by_batch):
            if row.batch == batch:
                return row.p90_ms
        return None


@dataclass(frozen=True)
class PrecisionRecord:
    """One precision's artifact of a subnet that passed its gate (``file``: its key in
    ``files``); ``calibration`` for int8 (images, per_subnet, resolution, source)."""

    precision: str
    file: str
    parity: ParityRecord
    accuracy: AccuracyRecord | None = None
    tool: str | None = None
    calibration: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, precision: str, d: Mapping[str, Any]) -> PrecisionRecord:
        acc, cal = d.get("accuracy"), d.get("calibration")
        return cls(precision, str(d["file"]), ParityRecord.parse(d["parity"]),
                   None if acc is None else AccuracyRecord.parse(acc), d.get("tool"),
                   None if cal is None else _ro(cal))


@dataclass(frozen=True)
class SubnetEntry:
    """One standalone subnet: shape, cost, files, accuracy, parity, engines, latencies."""

    id: str
    width: float
    resolution: int
    macs: int
    params: int
    input: TensorSpec
    output: TensorSpec
    files: Mapping[str, FileRecord]
    accuracy: Mapping[str, AccuracyRecord]
    parity: Mapping[str, ParityRecord]
    engines: tuple[EngineRecord, ...]
    latency: Mapping[str, LatencyRecord]
    status: str
    selection_accuracy: AccuracyRecord | None = None
    precision_records: Mapping[str, PrecisionRecord] = field(default_factory=lambda: _ro({}))

    @property
    def onnx(self) -> FileRecord:
        return self.files["onnx"]

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this subnet has an artifact for (old manifests: fp32 only)."""
        return tuple(self.precision_records) or ("fp32",)

    def onnx_for(self, precision: str = "fp32") -> FileRecord | None:
        """The ONNX file of ``precision`` (None when this subnet has none)."""
        if precision == "fp32":
            return self.onnx
        rec = self.precision_records.get(precision)
        return None if rec is None else self.files.get(rec.file)

    @property
    def mmacs(self) -> float:
        """Millions of MACs."""
        return self.macs / 1e6

    def top1(self) -> float | None:
        """The accuracy budgets choose by (``best``, ``run``, ``select_budget`` alike): the
        recorded selection accuracy (the full eval, else parity's); for exports made before
        it was recorded, ONNX Runtime's parity top-1, else PyTorch's."""
        if self.selection_accuracy is not None and self.selection_accuracy.top1 is not None:
            return self.selection_accuracy.top1
        for key in ("onnxruntime", "pytorch"):
            rec = self.accuracy.get(key)
            if rec is not None and rec.top1 is not None:
                return rec.top1
        return None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> SubnetEntry:
        sel = d.get("selection_accuracy")
        return cls(
            str(d["id"]), float(d["width"]), int(d["resolution"]), int(d["macs"]),
            int(d["params"]), TensorSpec.parse(d["input"]), TensorSpec.parse(d["output"]),
            _ro({k: FileRecord.parse(v) for k, v in d["files"].items()}),
            _ro({k: AccuracyRecord.parse(v) for k, v in d["accuracy"].items()}),
            _ro({k: ParityRecord.parse(v) for k, v in d["parity"].items()}),
            tuple(EngineRecord.parse(e) for e in d["engines"]),
            _ro({k: LatencyRecord.parse(k, v) for k, v in d["latency"].items()}),
            str(d["status"]), None if sel is None else AccuracyRecord.parse(sel),
            _ro({k: PrecisionRecord.parse(k, v) for k, v in (d.get("precisions") or {}).items()}))


@dataclass(frozen=True)
class Manifest:
    """A loaded, validated manifest, parsed into records.

    ``document`` is the parsed JSON, kept for writers (treat it as read-only)."""

    path: Path
    root: Path
    document: Mapping[str, Any]
    schema_version: int
    created: str
    generator: str
    model: ModelInfo
    source_checkpoint: SourceCheckpoint
    preprocessing: Preprocessing
    profile: ProfileRecord
    files: Mapping[str, FileRecord]
    subnets: tuple[SubnetEntry, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes

    @property
    def subnet_ids(self) -> list[str]:
        return [s.id for s in self.subnets]

    def subnet(self, sid: str) -> SubnetEntry:
        for sn in self.subnets:
            if sn.id == sid:
                return sn
        raise ManifestError(f"no subnet {sid!r} in {self.path}; available: "
                            f"{', '.join(self.subnet_ids)}")

    def file(self, rel: str | FileRecord) -> Path:
        """Absolute path of a manifest-relative file (checked not to escape the directory)."""
        return safe_path(self.root, rel.path if isinstance(rel, FileRecord) else rel)

    def summary(self) -> str:
        """One line: model, subnet count, files verified, engines, profile."""
        files = sum(1 for _ in iter_file_entries(self.document))
        engines = sum(len(s.engines) for s in self.subnets)
        failed = sum(1 for s in self.subnets if s.status != "ok")
        extra = f", {failed} failed parity" if failed else ""
        return (f"{self.path}: {self.model.name}, {len(self.subnets)} subnets "
                f"({', '.join(self.subnet_ids)}), {files} files verified, {engines} engines, "
                f"profile {self.profile.name}{extra}")


def parse_manifest(doc: Mapping[str, Any], path: Path) -> Manifest:
    """The records of a document that :func:`validate_document` accepted."""
    try:
        return Manifest(
            path=path.resolve(), root=path.parent.resolve(), document=doc,
            schema_version=int(doc["schema_version"]), created=str(doc["created"]),
            generator=str(doc["generator"]), model=ModelInfo.parse(doc["model"]),
            source_checkpoint=SourceCheckpoint.parse(doc["source_checkpoint"]),
            preprocessing=Preprocessing.parse(doc["preprocessing"]),
            profile=ProfileRecord.parse(doc["profile"]),
            files=_ro({k: FileRecord.parse(v) for k, v in (doc.get("files") or {}).items()}),
            subnets=tuple(SubnetEntry.parse(s) for s in doc["subnets"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path}: a field has the wrong type or is missing ({e!r}); "
                            "re-export it") from None


def _manifest_path(path_or_dir: str | os.PathLike[str]) -> Path:
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / MANIFEST_FILE
    if not p.is_file():
        raise ManifestError(f"no manifest at {p}; pass an export directory holding "
                            f"{MANIFEST_FILE} (written by `mutualnet export`)")
    return p


def check_files(root: Path, doc: Mapping[str, Any], *, source: str) -> None:
    """Check every recorded file exists inside ``root`` with the recorded size and sha256."""
    for where, entry in iter_file_entries(doc):
        rel = entry["path"]
        try:
            full = safe_path(root, rel)
        except ManifestError as e:
            raise ManifestError(f"{source}: {where}: {e}") from None
        if not full.is_file():
            raise ManifestError(f"{source}: {where}: file {rel} is missing; copy the whole "
                                "export directory")
        size = full.stat().st_size
        if size != entry["size"]:
            raise ManifestError(f"{source}: {where}: {rel} has {size} bytes, the manifest "
                                f"records {entry['size']}: the file was modified or truncated; "
                                "re-copy or re-export it")
        digest = sha256_file(full)
        if digest != entry["sha256"]:
            raise ManifestError(f"{source}: {where}: sha256 of {rel} is {digest[:12]}..., the "
                                f"manifest records {entry['sha256'][:12]}...: the file was "
                                "modified; re-copy or re-export it")


def read_document(path: Path) -> Any:
    """The parsed JSON of ``path`` (the one place a manifest file is parsed): size-capped,
    depth-limited, finite numbers only (export.jsonio)."""
    return read_json(path)


def verify_manifest(manifest: Manifest) -> None:
    """Everything ``verify`` and ``SubnetRuntime.load`` check beyond the schema: every
    recorded file exists inside the directory with its recorded size and sha256."""
    check_files(manifest.root, manifest.document, source=str(manifest.path))
    check_graph_identity(manifest.document, lambda rel: safe_path(manifest.root, rel),
                         source=str(manifest.path))


def load_manifest(path_or_dir: str | os.PathLike[str], *, verify_files: bool = True) -> Manifest:
    """Load ``manifest.json`` (a path or its directory): schema, records, and with
    ``verify_files`` :func:`verify_manifest` (paths, sizes, checksums)."""
    path = _manifest_path(path_or_dir)
    doc = read_document(path)
    validate_document(doc, source=str(path))
    manifest = parse_manifest(doc, path)
    if verify_files:
        verify_manifest(manifest)
    return manifest


def update_manifest(path_or_dir: str | os.PathLike[str],
                    mutate: Callable[[dict[str, Any]], None]) -> Manifest:
    """Load (without re-hashing), apply ``mutate`` to a copy of the document, write atomically."""
    path = _manifest_path(path_or_dir)
    current = load_manifest(path, verify_files=False)
    doc = copy.deepcopy(dict(current.document))
    mutate(doc)
    write_manifest(path.parent, doc)
    return load_manifest(path, verify_files=False)
