"""Hostile and stale manifests: `verify` and `run` end in one clean line, exit 1, files kept.

Every kind below starts from a good export (tests/data/deploy_fixtures.py, copied per
test), breaks one thing the way a careless copy, a crash or an attacker would, and runs
the real CLI. The swapped-model kinds are issue 12, item 2: a model.onnx of another subnet
copied in with the manifest's sha256 and size updated must be refused, not served under
the wrong id.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from faultkit import assert_clean_failure, run_cli, snapshot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from deploy_fixtures import make_export  # noqa: E402

from export.errors import ManifestError  # noqa: E402
from export.manifest import MANIFEST_FILE, file_entry, load_manifest, write_manifest  # noqa: E402
from export.runtime import SubnetRuntime  # noqa: E402

Mutation = Callable[[Path], None]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("pristine") / "export")


@pytest.fixture
def export_dir(pristine: Path, tmp_path: Path) -> Path:
    root = tmp_path / "export"
    shutil.copytree(pristine, root, symlinks=True)
    load_manifest(root)  # the copy is good before a kind breaks it
    return root


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- mutations
def _doc(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST_FILE).read_text())


def _hand_edit(edit: Callable[[dict[str, Any]], None]) -> Mutation:
    """Edit the document and write it as a person would (no validation; NaN allowed)."""
    def mutate(root: Path) -> None:
        doc = _doc(root)
        edit(doc)
        (root / MANIFEST_FILE).write_text(json.dumps(doc, indent=2))
    return mutate


def _raw(text: Callable[[str], str | bytes]) -> Mutation:
    def mutate(root: Path) -> None:
        path = root / MANIFEST_FILE
        new = text(path.read_text())
        path.write_bytes(new if isinstance(new, bytes) else new.encode())
    return mutate


def _onnx(root: Path, sid: str) -> Path:
    return root / "subnets" / sid / "model.onnx"


def _rehash(root: Path, sid: str, *, drop_graph: bool = False) -> None:
    """Record the current model.onnx of ``sid`` in the manifest (sha256 and size updated),
    as a user "fixing" a checksum error would; ``drop_graph``: every graph record removed
    (a manifest written before graph records existed)."""
    doc = _doc(root)
    for sn in doc["subnets"]:
        if sn["id"] == sid:
            sn["files"]["onnx"] = file_entry(root, _onnx(root, sid))
        if drop_graph:
            sn.pop("graph", None)
    write_manifest(root, doc)


def _swap(src: str, dst: str, *, strip_metadata: bool = False,
          drop_graph: bool = False) -> Mutation:
    def mutate(root: Path) -> None:
        if strip_metadata:
            model = onnx.load(str(_onnx(root, src)))
            del model.metadata_props[:]
            _onnx(root, dst).write_bytes(model.SerializeToString())
        else:
            shutil.copyfile(_onnx(root, src), _onnx(root, dst))
        _rehash(root, dst, drop_graph=drop_graph)
    return mutate


def _symlink_swap(root: Path) -> None:
    """model.onnx of w0.50-r16 becomes a link to w1.00-r16's (inside the directory)."""
    _onnx(root, "w0.50-r16").unlink()
    _onnx(root, "w0.50-r16").symlink_to(_onnx(root, "w1.00-r16"))
    _rehash(root, "w0.50-r16")


def _unknown_op(root: Path) -> None:
    model = onnx.load(str(_onnx(root, "w0.25-r12")))
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Swish"
    _onnx(root, "w0.25-r12").write_bytes(model.SerializeToString())
    _rehash(root, "w0.25-r12")


def _manifest_to_dev_zero(root: Path) -> None:
    (root / MANIFEST_FILE).unlink()
    (root / MANIFEST_FILE).symlink_to("/dev/zero")


def _other_checkpoint(root: Path) -> None:
    model = onnx.load(str(_onnx(root, "w0.50-r12")))
    for e in model.metadata_props:
        if e.key == "mutualnet.source_checkpoint_sha256":
            e.value = "1" * 64
    _onnx(root, "w0.50-r12").write_bytes(model.SerializeToString())
    _rehash(root, "w0.50-r12")


def _not_onnx(root: Path) -> None:
    _onnx(root, "w0.50-r12").write_bytes(b"this is not an onnx model")
    _rehash(root, "w0.50-r12")


def _flip_byte(root: Path) -> None:
    data = bytearray(_onnx(root, "w1.00-r16").read_bytes())
    data[-5] ^= 0xFF
    _onnx(root, "w1.00-r16").write_bytes(bytes(data))


def _truncate_onnx(root: Path) -> None:
    p = _onnx(root, "w0.25-r12")
    p.write_bytes(p.read_bytes()[:-10])


def _symlink_out(root: Path) -> None:
    arch = root / "subnets" / "w0.25-r12" / "arch.json"
    outside = root.parent / "outside-arch.json"
    shutil.copy(arch, outside)          # identical bytes: only the link is wrong
    arch.unlink()
    arch.symlink_to(outside)


def _no_manifest(root: Path) -> None:
    (root / MANIFEST_FILE).unlink()


def _oversized(text: str) -> str:
    doc = json.loads(text)
    doc["padding"] = "x" * (17 << 20)
    return json.dumps(doc)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets ``doc[a][b]...`` (``path`` dotted, integers index lists)."""
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = doc
        for p in parents:
            node = node[p]
        node[last] = value(node[last]) if callable(value) else value
    return edit


def _classes(n: int) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        names = doc["model"]["classes"]
        doc["model"]["classes"] = (names + [f"extra{i}" for i in range(n)])[:n]
    return edit


def _num_classes_and_names(doc: dict[str, Any]) -> None:
    doc["model"]["num_classes"] = 12
    doc["model"]["classes"] += ["x", "y"]


def _graph_macs(doc: dict[str, Any]) -> None:
    doc["subnets"][0]["graph"]["macs"] += 1


TOP1 = '"top1": 40.0'

# kind -> (mutation, text the one error line must contain); all exit 1
KINDS: dict[str, tuple[Mutation, str]] = {
    "nested_100000": (_raw(lambda t: "[" * 100_000), "nests 100000 levels"),
    "nested_in_value": (_raw(lambda t: t.replace(TOP1, '"top1": ' + "[" * 5000 + "]" * 5000)),
                        "levels deep"),
    "nan": (_hand_edit(_set("subnets.0.accuracy.pytorch.top1", float("nan"))), "NaN"),
    "infinity": (_hand_edit(_set("subnets.0.parity.onnxruntime.max_abs_diff", float("inf"))),
                 "Infinity"),
    "minus_infinity": (_hand_edit(_set("subnets.1.accuracy.onnxruntime.top1", -float("inf"))),
                       "-Infinity"),
    "float_overflow": (_raw(lambda t: t.replace(TOP1, '"top1": 1e999')), "overflows"),
    "huge_integer": (_raw(lambda t: t.replace(TOP1, '"top1": ' + "9" * 5000)), "digits"),
    "duplicate_key": (_raw(lambda t: t.replace('"schema_version": 1,',
                                               '"schema_version": 1, "schema_version": 1,')),
                      "appears twice"),
    "classes_shorter": (_hand_edit(_classes(9)), "lists 9 names"),
    "classes_longer": (_hand_edit(_classes(11)), "lists 11 names"),
    "classes_vs_outputs": (_hand_edit(_num_classes_and_names), "output classes"),
    "swap_width": (_swap("w1.00-r16", "w0.50-r16"), "names subnet w1.00-r16"),
    "swap_resolution": (_swap("w0.50-r16", "w0.50-r12"), "resolution is 12"),
    "swap_no_metadata": (_swap("w1.00-r16", "w0.50-r16", strip_metadata=True), "MACs"),
    "swap_old_manifest": (_swap("w1.00-r16", "w0.50-r16", drop_graph=True),
                          "names subnet w1.00-r16"),
    "swap_old_manifest_resolution": (_swap("w0.50-r16", "w0.50-r12", strip_metadata=True,
                                           drop_graph=True), "resolution is 12"),
    "swap_by_symlink": (_symlink_swap, "names subnet w1.00-r16"),
    "unknown_op_rehashed": (_unknown_op, "Swish node"),
    "manifest_links_to_dev_zero": (_manifest_to_dev_zero, "no manifest"),
    "other_checkpoint": (_other_checkpoint, "names checkpoint 111111111111"),
    "graph_record_edited": (_hand_edit(_graph_macs), "MACs"),
    "not_onnx_rehashed": (_not_onnx, "not an ONNX model"),
    "onnx_byte_flipped": (_flip_byte, "sha256 of subnets/w1.00-r16/model.onnx"),
    "onnx_truncated": (_truncate_onnx, "bytes, the manifest records"),
    "onnx_missing": (lambda root: _onnx(root, "w0.50-r12").unlink(), "missing"),
    "manifest_missing": (_no_manifest, "no manifest"),
    "manifest_truncated": (_raw(lambda t: t[: len(t) // 2]), "not valid JSON"),
    "manifest_empty": (_raw(lambda t: ""), "not valid JSON"),
    "manifest_not_utf8": (_raw(lambda t: b"\xff\xfe" + t.encode("utf-16-le")), "UTF-8"),
    "manifest_oversized": (_raw(_oversized), "larger than 16 MB"),
    "manifest_is_a_list": (_raw(lambda t: "[]"), "JSON object"),
    "wrong_type_width": (_hand_edit(_set("subnets.0.width", "0.25")), "width"),
    "wrong_type_subnets": (_hand_edit(_set("subnets", {"a": 1})), "subnets"),
    "unknown_schema_version": (_hand_edit(_set("schema_version", 2)), "schema_version 2"),
    "id_not_matching_width": (_hand_edit(_set("subnets.0.id", "w0.99-r12")), "does not match"),
    "path_traversal": (_hand_edit(_set("subnets.0.files.onnx.path", "../outside.onnx")),
                       "path"),
    "absolute_path": (_hand_edit(_set("subnets.0.files.arch.path", "/etc/hostname")), "path"),
    "symlink_escape": (_symlink_out, "outside the manifest's directory"),
}
RUN_KINDS = ("nested_100000", "nan", "infinity", "classes_shorter", "swap_width",
             "swap_resolution", "swap_old_manifest")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_verify_refuses(kind: str, export_dir: Path) -> None:
    mutate, contains = KINDS[kind]
    mutate(export_dir)
    before = snapshot(export_dir)
    r = run_cli(["verify", export_dir])
    assert_clean_failure(r, 1, contains=contains, before=before, roots=[export_dir])


@pytest.mark.parametrize("kind", RUN_KINDS)
def test_run_refuses(kind: str, export_dir: Path, image: Path) -> None:
    mutate, contains = KINDS[kind]
    mutate(export_dir)
    before = snapshot(export_dir)
    r = run_cli(["run", export_dir, image, "--backend", "onnxruntime"])
    assert_clean_failure(r, 1, contains=contains, before=before, roots=[export_dir])
    assert "subnet w" not in r.stdout and r.stdout == ""


@pytest.mark.parametrize("kind", ["nested_100000", "nan", "swap_width", "swap_resolution",
                                  "classes_longer"])
def test_runtime_load_refuses(kind: str, export_dir: Path) -> None:
    mutate, contains = KINDS[kind]
    mutate(export_dir)
    with pytest.raises(ManifestError, match=contains.split()[0]):
        SubnetRuntime.load(export_dir, backend="onnxruntime", threads=1)


def test_swapped_message_names_the_subnet_and_what_differs(export_dir: Path) -> None:
    _swap("w1.00-r16", "w0.50-r16")(export_dir)
    r = run_cli(["verify", export_dir])
    assert_clean_failure(r, 1, contains="subnet w0.50-r16:")
    line = r.error_lines[0]
    assert "names subnet w1.00-r16" in line and "MACs" in line and "params" in line


def test_old_manifest_without_graph_records_loads_with_a_note(export_dir: Path,
                                                               image: Path) -> None:
    doc = _doc(export_dir)
    for sn in doc["subnets"]:
        del sn["graph"]
    write_manifest(export_dir, doc)
    r = run_cli(["verify", export_dir])
    assert r.code == 0 and r.stdout.startswith("OK "), r.stderr
    notes = r.error_lines
    assert len(notes) == 1 and notes[0].startswith("note:") and "re-export" in notes[0]
    r = run_cli(["run", export_dir, image, "--backend", "onnxruntime"])
    assert r.code == 0 and "photo.png: " in r.stdout, r.stderr
