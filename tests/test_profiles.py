"""Deploy profiles: the shipped ones load; bad files fail naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from export.errors import ProfileError
from export.profiles import (
    DeployProfile,
    list_profiles,
    load_profile,
    profile_from_dict,
    profiles_dir,
)

REQUIRED = ("cpu", "jetson-orin-nano", "jetson-agx-orin", "jetson-agx-orin-gpu", "server-a100",
            "server-h100")


def test_shipped_profiles_load() -> None:
    names = list_profiles()
    for name in REQUIRED:
        assert name in names
    for name in names:
        p = load_profile(name)
        assert p.name == name
        assert p.min_batch <= p.opt_batch <= p.max_batch
        assert p.budgets_mflops and p.budgets_latency_ms


def test_profile_specifics() -> None:
    assert load_profile(None) == load_profile("cpu")
    cpu = load_profile("cpu")
    assert cpu.runtime == "onnxruntime" and cpu.ort_providers == ("CPUExecutionProvider",)
    agx = load_profile("jetson-agx-orin")
    assert agx.runtime == "tensorrt" and agx.tensorrt_major == 10 and agx.dla_core == 0
    assert agx.precision == "int8" and agx.batch_sizes == (1,)      # DLA: static batch
    agx_gpu = load_profile("jetson-agx-orin-gpu")
    assert agx_gpu.dla_core is None and agx_gpu.batch_sizes == (1, 8)
    for name in list_profiles():
        p = load_profile(name)
        assert p.precision in p.device_precisions
        assert (p.precision == "int8") == (name == "jetson-agx-orin")   # DLA: Q/DQ engines
        if p.dla_core is not None:
            assert p.min_batch == p.opt_batch == p.max_batch
    nano = load_profile("jetson-orin-nano")
    assert nano.dla_core is None and nano.tensorrt_major == 10
    assert load_profile("server-h100").tensorrt_major == 11
    assert load_profile("server-a100").tensorrt_major == 10


def test_to_dict_roundtrips() -> None:
    for name in list_profiles():
        p = load_profile(name)
        d = p.to_dict()
        assert isinstance(d["budgets_mflops"], list)
        assert profile_from_dict(d) == p


def test_profiles_are_package_data() -> None:
    import deploy_profiles

    tomllib = pytest.importorskip("tomllib")
    assert Path(deploy_profiles.__file__).parent == profiles_dir()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert any(p.startswith("deploy_profiles") for p in setuptools["packages"]["find"]["include"])
    assert "*.yml" in setuptools["package-data"]["deploy_profiles"]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "custom.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_from_path(tmp_path: Path) -> None:
    base = load_profile("jetson-orin-nano").to_dict()
    base.pop("name")
    base["max_batch"] = 2
    p = load_profile(str(_write(tmp_path, base)))
    assert p.name == "custom" and p.max_batch == 2


@pytest.mark.parametrize("key, value, match", [
    ("max_batchsize", 4, "unknown key"),
    ("runtime", "tflite", "must be one of"),
    ("precision", "fp8", "must be one of"),
    ("min_batch", 0, "must be in"),
    ("opt_batch", "two", "expected an integer"),
    ("max_batch", True, "expected an integer"),
    ("workspace_mb", -1, "must be in"),
    ("tensorrt_major", 9, "supported TensorRT majors"),
    ("dla_core", 3, "must be in"),
    ("budgets_mflops", [300, 100], "ascending"),
    ("budgets_latency_ms", [0, 1], "must be > 0"),
    ("min_top1_agreement", 1.5, "<= 1.0"),
    ("max_accuracy_drop_pt", -0.1, ">= 0.0"),
    ("fp32_max_abs_diff", 0, "must be > 0"),
    ("ort_providers", ["FastExecutionProvider"], "unknown ONNX Runtime provider"),
    ("ort_providers", [], "non-empty list"),
])
def test_invalid_values_name_file_and_key(tmp_path: Path, key: str, value: object,
                                          match: str) -> None:
    data = load_profile("jetson-agx-orin").to_dict()
    data[key] = value
    path = _write(tmp_path, data)
    with pytest.raises(ProfileError, match=match) as info:
        load_profile(str(path))
    msg = str(info.value)
    assert str(path) in msg
    assert f"'{key}" in msg


@pytest.mark.parametrize("changes, key, match", [
    ({"min_batch": 4, "opt_batch": 2}, "opt_batch", "min_batch <= opt_batch"),
    ({"opt_batch": 8, "max_batch": 4}, "max_batch", "min_batch <= opt_batch"),
    ({"runtime": "onnxruntime"}, "dla_core", "needs runtime 'tensorrt'"),
    ({"precision": "fp32"}, "dla_core", "fp16 or int8"),
    ({"tensorrt_major": 11}, "dla_core", "TensorRT 11 does not support Jetson"),
    ({"tensorrt_major": None}, "tensorrt_major", "needs the TensorRT major"),
    ({"max_batch": 8}, "max_batch", "DLA .* static shapes only.*1/1/8"),
    ({"opt_batch": 2, "max_batch": 2}, "opt_batch", "min_batch, opt_batch and max_batch must "
                                                    "be equal"),
    ({"precisions": ["fp32"]}, "precisions", "fp32 is not among device_precisions"),
    ({"device_precisions": ["fp32", "int8"]}, "device_precisions", "DLA runs fp16 or int8"),
    ({"precisions": ["int4"]}, "precisions", "must be one of fp32, fp16, int8"),
    ({"int8_min_top1_agreement": 1.5}, "int8_min_top1_agreement", "<= 1.0"),
])
def test_impossible_combinations(changes: dict, key: str, match: str) -> None:
    data = load_profile("jetson-agx-orin").to_dict()
    data.update(changes)
    with pytest.raises(ProfileError, match=match) as info:
        profile_from_dict(data, source="agx.yml")
    assert f"'{key}'" in str(info.value) and "agx.yml" in str(info.value)


def test_precision_off_the_device_and_not_a_mapping(tmp_path: Path) -> None:
    data = load_profile("cpu").to_dict()
    data.update(precision="int8", device_precisions=["fp32"], precisions=["fp32"])
    with pytest.raises(ProfileError, match="'precision'.*int8 is not among"):
        profile_from_dict(data, source="cpu.yml")
    path = tmp_path / "list.yml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ProfileError, match="mapping"):
        load_profile(str(path))
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(bad))


def test_dla_static_batch_from_a_file_names_file_and_key(tmp_path: Path) -> None:
    data = load_profile("jetson-agx-orin").to_dict()
    data["max_batch"] = 4
    path = _write(tmp_path, data)
    with pytest.raises(ProfileError, match="static shapes") as info:
        load_profile(str(path))
    assert str(path) in str(info.value) and "'max_batch'" in str(info.value)
    data["dla_core"] = None                   # the same batch range on the GPU is fine
    assert load_profile(str(_write(tmp_path, data))).max_batch == 4


def test_int8_profiles_and_precision_defaults() -> None:
    """int8 engines are allowed now (from the Q/DQ ONNX); precisions default per profile."""
    for base in ("server-a100", "cpu"):
        data = load_profile(base).to_dict()
        data["precision"] = "int8"
        assert profile_from_dict(data, source=f"{base}.yml").precision == "int8"
    assert load_profile("cpu").precisions == ("fp32",)
    assert load_profile("jetson-agx-orin").precisions == ("int8",)
    assert load_profile("jetson-agx-orin").device_precisions == ("fp16", "int8")
    data = load_profile("cpu").to_dict()
    data["device_precisions"] = ["fp32", "fp16"]
    data["precisions"] = ["int8"]
    with pytest.raises(ProfileError, match="'precisions'.*int8 is not among device_precisions"):
        profile_from_dict(data, source="nogpu.yml")


def test_binary_profile_file_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "blob.yml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ProfileError, match="not a text"):
        load_profile(str(path))


def test_unknown_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="unknown deploy profile 'jetson-xavier'.*cpu"):
        load_profile("jetson-xavier")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(str(tmp_path / "nope.yml"))


def test_dataclass_is_frozen() -> None:
    p = load_profile("cpu")
    with pytest.raises(AttributeError):
        p.max_batch = 3  # type: ignore[misc]
    assert isinstance(p, DeployProfile)
    assert p.batch_sizes == (1, 8)


def test_override_gates_replaces_one_gate_and_checks_it() -> None:
    from export.profiles import load_profile, override_gates

    base = load_profile("cpu")
    loose = override_gates(base, ["int8_min_top1_agreement=0.875"])
    assert loose.int8_min_top1_agreement == 0.875
    assert loose.fp16_min_top1_agreement == base.fp16_min_top1_agreement
    assert override_gates(base, []) is base
    for bad in ("int8_min_top1_agreement", "budgets_mflops=1", "int8_min_top1_agreement=x",
                "int8_min_top1_agreement=2"):
        with pytest.raises(ProfileError):
            override_gates(base, [bad])


def test_export_gate_option_bad_key_is_a_usage_error(tiny_checkpoint, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mutualnet.cli import cli

    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out",
                                      str(tmp_path / "e"), "--gate", "int8_min_agree=0.8"])
    assert result.exit_code == 2
    assert "int8_min_top1_agreement" in result.output
    assert not (tmp_path / "e" / "manifest.json").exists()
