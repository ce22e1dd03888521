"""Graph identity: MACs / params read from ONNX graphs equal mutualnet.flops; the export
writes the identity into model.onnx and the manifest; a swapped file is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.errors import ManifestError
from export.graph_identity import META_PREFIX, read_graph_identity
from export.manifest import MANIFEST_FILE, file_entry, load_manifest, sha256_file, write_manifest
from export.onnx_export import export_onnx
from export.pipeline import ExportOptions, export_checkpoint
from export.runtime import SubnetRuntime
from export.slicing import slice_subnet
from mutualnet.flops import count
from mutualnet.models import create_model

GOLDEN = Path(__file__).parent / "data" / "golden_manifest"


def _random_bn(model: torch.nn.Module) -> None:
    """Trained-like BN statistics, so folded biases differ (and are not deduplicated)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


CASES = [
    ("tiny_mobilenet", {}, 0.25, 24), ("tiny_mobilenet", {}, 0.5, 20),
    ("tiny_mobilenet", {}, 1.0, 32),
    ("mobilenet_v1", {}, 0.25, 128), ("mobilenet_v1", {}, 1.0, 224),
    ("mobilenet_v1", {"padding": "tf_same"}, 0.5, 160),   # static Pad nodes
    ("wrn28_10", {}, 0.9, 32),                            # unfoldable BN: Mul + Add
    pytest.param("mobilenet_v2", {}, 0.7, 96, marks=pytest.mark.slow),
    pytest.param("resnet50", {}, 0.9, 64, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, kwargs, width, resolution", CASES)
def test_graph_macs_and_params_equal_the_analytic_count(tmp_path: Path, name: str,
                                                        kwargs: dict[str, Any], width: float,
                                                        resolution: int) -> None:
    model = create_model(name, **kwargs).eval()
    _random_bn(model)
    sliced = slice_subnet(model, width, resolution, model_kwargs=kwargs)
    info = export_onnx(sliced.module, resolution, tmp_path / "model.onnx")
    ident = read_graph_identity(info.path)
    cost = count(model, width, resolution)
    assert (ident.macs, ident.params) == (cost.macs, cost.params)
    assert ident.input_shape == ("N", 3, resolution, resolution)
    assert ident.resolution == resolution and ident.classes == info.num_classes
    assert ident.metadata == {}


# ----------------------------------------------------------------- hand-built graphs
def _save(tmp_path: Path, nodes: list[Any], inits: dict[str, np.ndarray],
          in_shape: list[Any], out_shape: list[Any]) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "g.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_grouped_conv_affine_reduce_mean_and_matmul(tmp_path: Path) -> None:
    z = np.zeros
    nodes = [
        # grouped (not depthwise): 8 -> 6 channels, groups 2, stride 2, 9x9 -> 5x5
        helper.make_node("Conv", ["x", "w", "b"], ["c"], group=2, strides=[2, 2],
                         pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Mul", ["c", "scale"], ["m"]),         # per-channel: 6 params
        helper.make_node("Add", ["m", "half"], ["a"]),          # scalar: no params
        helper.make_node("ReduceMean", ["a"], ["r"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["r", "fc"], ["y"]),
    ]
    inits = {"w": z((6, 4, 3, 3)), "b": z(6), "scale": z((6, 1, 1)), "half": z(()),
             "fc": z((6, 5))}
    ident = read_graph_identity(_save(tmp_path, nodes, inits, ["N", 8, 9, 9], ["N", 5]))
    conv_macs = 5 * 5 * 6 * (4 * 3 * 3)
    assert ident.macs == conv_macs + 6 * 5 * 5 + 6 * 5
    assert ident.params == 6 * 4 * 9 + 2 * 6 + 6 + 30     # conv bias = folded BN: 2 / ch
    assert ident.classes == 5 and ident.resolution is None   # 8 input channels


def test_unknown_ops_and_dynamic_sizes_are_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("LRN", ["x"], ["l"], size=3),
             helper.make_node("Flatten", ["l"], ["y"])]
    path = _save(tmp_path, nodes, {}, ["N", 3, 4, 4], ["N", 48])
    with pytest.raises(ManifestError, match="LRN .*not known"):
        read_graph_identity(path)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])]
    path = _save(tmp_path, nodes, {"w": np.zeros((2, 3, 1, 1))}, ["N", 3, "H", "W"],
                 ["N", 2])
    with pytest.raises(ManifestError, match="no static spatial size"):
        read_graph_identity(path)


# ----------------------------------------------------------------- the export
@pytest.fixture(scope="module")
def tiny_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graph") / "deploy"
    export_checkpoint(tiny_checkpoint, out, ExportOptions(
        widths=(0.25, 1.0), resolutions=(32, 24), calib_images=64, eval_images=32,
        progress=False))
    return out


def test_export_records_the_graph_equal_to_the_analytic_counts(tiny_export: Path) -> None:
    doc = json.loads((tiny_export / MANIFEST_FILE).read_text())
    assert len(doc["subnets"]) == 4
    for sn in doc["subnets"]:
        g = sn["graph"]
        assert (g["macs"], g["params"]) == (sn["macs"], sn["params"]), sn["id"]
        assert g["input_shape"] == ["N", 3, sn["resolution"], sn["resolution"]]
        assert g["classes"] == doc["model"]["num_classes"] == len(doc["model"]["classes"])


def test_export_writes_the_identity_into_each_onnx(tiny_export: Path) -> None:
    doc = json.loads((tiny_export / MANIFEST_FILE).read_text())
    for sn in doc["subnets"]:
        path = tiny_export / sn["files"]["onnx"]["path"]
        assert sha256_file(path) == sn["files"]["onnx"]["sha256"]   # hashed after metadata
        meta = {e.key[len(META_PREFIX):]: e.value for e in onnx.load(str(path)).metadata_props}
        assert meta["subnet_id"] == sn["id"]
        assert float(meta["width"]) == sn["width"] and int(meta["resolution"]) == \
            sn["resolution"]
        assert json.loads(meta["classes"]) == doc["model"]["classes"]
        assert int(meta["num_classes"]) == doc["model"]["num_classes"]
        assert json.loads(meta["preprocessing"]) == doc["preprocessing"]
        assert meta["source_checkpoint_sha256"] == doc["source_checkpoint"]["sha256"]
        assert meta["model"] == doc["model"]["name"]


def _copy_over(root: Path, src: str, dst: str) -> None:
    """Copy src's model.onnx over dst's and update the manifest's sha256 and size."""
    target = root / "subnets" / dst / "model.onnx"
    shutil.copyfile(root / "subnets" / src / "model.onnx", target)
    doc = json.loads((root / MANIFEST_FILE).read_text())
    for sn in doc["subnets"]:
        if sn["id"] == dst:
            sn["files"]["onnx"] = file_entry(root, target)
    write_manifest(root, doc)


@pytest.mark.parametrize("src, why", [("w1.00-r24", "names subnet w1.00-r24"),
                                      ("w0.25-r32", "the entry's resolution is 24")])
def test_a_swapped_model_is_refused_by_verify_and_load(tiny_export: Path, tmp_path: Path,
                                                       src: str, why: str) -> None:
    root = tmp_path / "deploy"
    shutil.copytree(tiny_export, root)
    load_manifest(root)
    _copy_over(root, src, "w0.25-r24")
    with pytest.raises(ManifestError, match=f"subnet w0.25-r24: .*{why}"):
        load_manifest(root)
    with pytest.raises(ManifestError, match="w0.25-r24"):
        SubnetRuntime.load(root, backend="onnxruntime", threads=1)
    load_manifest(root, verify_files=False)    # reading without verifying still works


# ----------------------------------------------------------------- the wire-format reader
def test_onnxproto_reads_what_the_onnx_package_reads(tmp_path: Path) -> None:
    """export.onnxproto (no onnx import) against onnx.load on a real exported subnet."""
    from onnx import helper as h

    from export.onnxproto import parse_model

    model = create_model("mobilenet_v1", padding="tf_same").eval()
    _random_bn(model)
    path = export_onnx(slice_subnet(model, 0.25, 96, model_kwargs={"padding": "tf_same"}).module,
                       96, tmp_path / "m.onnx", metadata={"mutualnet.subnet_id": "w0.25-r96",
                                                          "other": "ü"}).path
    ref, got = onnx.load(str(path)), parse_model(path.read_bytes())
    assert got.metadata == {"mutualnet.subnet_id": "w0.25-r96", "other": "ü"}
    assert [(t.name, t.dims) for t in got.graph.initializers] == \
        [(t.name, tuple(t.dims)) for t in ref.graph.initializer]
    assert [(n.op_type, n.inputs, n.outputs) for n in got.graph.nodes] == \
        [(n.op_type, tuple(n.input), tuple(n.output)) for n in ref.graph.node]
    for mine, theirs in zip(got.graph.nodes, ref.graph.node, strict=True):
        for a in theirs.attribute:
            want = h.get_attribute_value(a)
            if isinstance(want, onnx.TensorProto):
                assert np.array_equal(mine.attrs[a.name].value, numpy_helper.to_array(want))
            else:
                want = want.decode() if isinstance(want, bytes) else want
                assert mine.attrs[a.name] == pytest.approx(want), (theirs.name, a.name)
    assert got.graph.inputs[0].shape == ("N", 3, 96, 96)


def test_verify_needs_neither_torch_nor_onnx() -> None:
    """`import onnx` takes seconds on a small device: the graph check never imports it."""
    code = ("import sys; sys.modules['torch'] = sys.modules['onnx'] = None\n"
            "from export.manifest import load_manifest\n"
            f"print(len(load_manifest({str(GOLDEN)!r}).subnet_ids))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1])
    assert p.returncode == 0 and p.stdout.strip() == "2", p.stderr


def test_truncated_or_foreign_bytes_are_not_a_model(tmp_path: Path) -> None:
    data = (Path(__file__).parent / "data" / "golden_manifest" / "subnets" / "w0.25-r12" /
            "model.onnx").read_bytes()
    for i, bad in enumerate([data[: len(data) // 2], b"\x0a\xff\xff\xff\xff\x0f", b"",
                             b"PK\x03\x04 a zip file"]):
        path = tmp_path / f"{i}.onnx"
        path.write_bytes(bad)
        with pytest.raises(ManifestError, match="not an ONNX model|holds no ONNX graph"):
            read_graph_identity(path)
