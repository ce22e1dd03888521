"""pyproject's extras install every tool the generated scripts and optional imports use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Python module -> the distribution that installs it.
DISTRIBUTION = {"modelopt": "nvidia-modelopt", "tflite": "tflite", "tensorrt": "tensorrt",
                "onnxconverter_common": "onnxconverter-common"}


def _extra(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names an extra installs, following ``mutualnet[other]`` references."""
    out: set[str] = set()
    for req in PROJECT["optional-dependencies"][name]:
        dist = re.split(r"[\s\[<>=;!~]", req, maxsplit=1)[0].lower()
        if dist == "mutualnet":
            for inner in re.findall(r"\[([^\]]+)\]", req)[0].split(","):
                if inner.strip() not in seen:
                    out |= _extra(inner.strip(), seen | {name})
        else:
            out.add(dist)
    return out


def test_every_python_module_build_engines_sh_calls_has_an_extra() -> None:
    source = "".join((ROOT / "export" / name).read_text()
                     for name in ("tensorrt_build.py", "backends/tensorrt.py"))
    called = set(re.findall(r"python3? -m ([A-Za-z_][\w]*)", source))
    assert called, "the script generator no longer calls python -m: update this test"
    for module in called:
        dist = DISTRIBUTION[module]
        holders = [e for e in PROJECT["optional-dependencies"] if dist in _extra(e)]
        assert holders, f"build_engines.sh calls `python3 -m {module}`: add {dist} to an extra"
    assert "nvidia-modelopt" in _extra("tensorrt")  # the TensorRT extra brings it along


def test_the_tflite_extra_holds_the_parser_the_importer_needs() -> None:
    source = (ROOT / "mutualnet" / "weights" / "tflite.py").read_text()
    assert re.search(r"^\s+import tflite$", source, re.M)
    assert "tflite" in _extra("tflite")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Starting from pretrained weights", 1)[1].split("\n## ", 1)[0]
    assert "[tflite]" in section


def test_onnxruntime_gpu_on_linux_x86_64_cpu_build_elsewhere() -> None:
    deps = PROJECT["dependencies"]
    gpu = [d for d in deps if d.startswith("onnxruntime-gpu")]
    cpu = [d for d in deps if re.match(r"onnxruntime[>=\s]", d)]
    assert len(gpu) == 1 and "platform_machine == 'x86_64'" in gpu[0]
    assert "platform_system == 'Linux'" in gpu[0]
    assert len(cpu) == 1 and "platform_machine != 'x86_64'" in cpu[0]


def test_version_pins_stay_loose() -> None:
    """Lower bounds only for the core stack (a GPU machine may have torch 2.11, Python
    3.12, onnxruntime 1.30, CUDA 13 bindings)."""
    every = PROJECT["dependencies"] + [r for e in PROJECT["optional-dependencies"].values()
                                       for r in e]
    for req in every:
        spec = req.split(";")[0]
        assert "<" not in spec and "==" not in spec, req
