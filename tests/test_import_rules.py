"""The import rules users depend on (ARCHITECTURE.md, "Never")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEVICE_SIDE = ("export/runtime.py", "export/manifest.py", "export/profiles.py",
               "export/errors.py", "export/latency.py", "export/budget.py",
               "export/preprocess.py", "export/quantize.py", "export/precisions.py",
               "export/controller.py", "export/parity.py", "export/parity_images.py",
               "export/val.py",
               "export/tensorrt_build.py", "export/backends/__init__.py",
               "export/backends/onnxruntime.py", "export/backends/tensorrt.py",
               "export/graph_identity.py", "export/jsonio.py", "export/onnxproto.py",
               "export/autoselect.py", "export/candidates.py")
DEVICE_MODULES = ", ".join(p[:-3].replace("/", ".").removesuffix(".__init__")
                           for p in DEVICE_SIDE)


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports, resolving relative imports."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT).parts[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else (node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("rel", DEVICE_SIDE)
def test_device_side_imports_neither_torch_nor_mutualnet(rel: str) -> None:
    assert not _imports(ROOT / rel) & {"torch", "torchvision", "mutualnet"}


def test_training_side_never_imports_export_except_cli() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "mutualnet").rglob("*.py")
                 if "cli" not in p.relative_to(ROOT).parts and "export" in _imports(p)]
    assert offenders == []


def test_models_and_slimmable_know_no_data_or_training() -> None:
    for path in [*(ROOT / "mutualnet" / "models").glob("*.py"), ROOT / "mutualnet/slimmable.py"]:
        text = path.read_text()
        for forbidden in ("from ..data", "from ..train", "mutualnet.data", "mutualnet.train",
                          "from ..calibrate", "from ..checkpoint"):
            assert forbidden not in text, (path.name, forbidden)
    assert "models" not in (ROOT / "mutualnet/slimmable.py").read_text().split('"""', 2)[2]


def test_device_side_modules_import_with_torch_blocked() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            f"import {DEVICE_MODULES}\n"
            "assert 'mutualnet' not in sys.modules, 'the device side imported mutualnet'\n"
            "print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
