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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ManifestError
from .graph_identity import check_graph_identity
from .jsonio import read_json

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SCHEMA_FILE = "manifest.schema.json"

__all__ = [
    "MANIFEST_FILE", "SCHEMA_VERSION", "Manifest", "check_files", "file_entry", "iter_file_entries",
    "load_manifest", "load_schema", "safe_path", "sha256_file", "subnet_id", "update_manifest",
    "utc_now", "validate_document", "write_manifest",
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


def iter_file_entries(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
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


# ----------------------------------------------------------------------------- load

@dataclass(frozen=True)
class Manifest:
    """A loaded, validated manifest. ``document`` is the parsed JSON (treat it as read-only)."""

    path: Path
    root: Path
    document: dict[str, Any]

    @property
    def schema_version(self) -> int:
        return int(self.document["schema_version"])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.document["model"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.document["model"]["classes"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.document["preprocessing"])

    @property
    def profile(self) -> dict[str, Any]:
        return dict(self.document["profile"])

    @property
    def subnets(self) -> list[dict[str, Any]]:
        """Subnet entries, MACs ascending."""
        return list(self.document["subnets"])

    @property
    def subnet_ids(self) -> list[str]:
        return [s["id"] for s in self.document["subnets"]]

    def subnet(self, sid: str) -> dict[str, Any]:
        for sn in self.document["subnets"]:
            if sn["id"] == sid:
                return dict(sn)
        raise ManifestError(f"no subnet {sid!r} in {self.path}; available: "
                            f"{', '.join(self.subnet_ids)}")

    def file(self, rel: str) -> Path:
        """Absolute path of a manifest-relative file (checked not to escape the directory)."""
        return safe_path(self.root, rel)

    def summary(self) -> str:
        """One line: model, subnet count, files verified, engines, profile."""
        files = sum(1 for _ in iter_file_entries(self.document))
        engines = sum(len(s["engines"]) for s in self.document["subnets"])
        failed = sum(1 for s in self.document["subnets"] if s["status"] != "ok")
        extra = f", {failed} failed parity" if failed else ""
        return (f"{self.path}: {self.document['model']['name']}, "
                f"{len(self.document['subnets'])} subnets ({', '.join(self.subnet_ids)}), "
                f"{files} files verified, {engines} engines, profile "
                f"{self.document['profile']['name']}{extra}")


def _manifest_path(path_or_dir: str | os.PathLike[str]) -> Path:
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / MANIFEST_FILE
    if not p.is_file():
        raise ManifestError(f"no manifest at {p}; pass an export directory holding "
                            f"{MANIFEST_FILE} (written by `mutualnet export`)")
    return p


def check_files(root: Path, doc: dict[str, Any], *, source: str) -> None:
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


def load_manifest(path_or_dir: str | os.PathLike[str], *, verify_files: bool = True) -> Manifest:
    """Load ``manifest.json`` (a path or its directory), validate schema, paths and checksums."""
    path = _manifest_path(path_or_dir)
    doc = read_json(path)  # size-capped, depth-limited, finite numbers (export.jsonio)
    validate_document(doc, source=str(path))
    root = path.parent
    if verify_files:
        check_files(root, doc, source=str(path))
        check_graph_identity(doc, lambda rel: safe_path(root, rel), source=str(path))
    return Manifest(path=path.resolve(), root=root.resolve(), document=doc)



def update_manifest(path_or_dir: str | os.PathLike[str],
                    mutate: Callable[[dict[str, Any]], None]) -> Manifest:
    """Load (without re-hashing), apply ``mutate`` to a copy of the document, write atomically."""
    path = _manifest_path(path_or_dir)
    current = load_manifest(path, verify_files=False)
    doc = copy.deepcopy(current.document)
    mutate(doc)
    write_manifest(path.parent, doc)
    return load_manifest(path, verify_files=False)
