"""Shared by the benchmark scripts: machine/version header and BENCHMARKS.md sections.

Each script owns one section of BENCHMARKS.md between markers
``<!-- begin: KEY -->`` and ``<!-- end: KEY -->`` and rewrites only that section.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def machine_line() -> str:
    """One line: date, CPU/GPU, core count, Python/torch/onnxruntime versions."""
    parts = [_dt.date.today().isoformat(), platform.machine(), f"{os.cpu_count()} cores"]
    cpu = platform.processor() or _cpu_model()
    if cpu:
        parts.append(cpu)
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_section(key: str, title: str, body: str, command: str,
                  path: Path | None = None) -> None:
    """Replace (or append) the section ``key`` of BENCHMARKS.md (or ``path``) and print it."""
    section = (f"<!-- begin: {key} -->\n## {title}\n\n"
               f"Measured {machine_line()}.\nCommand: `{command}`\n\n{body.strip()}\n"
               f"<!-- end: {key} -->")
    print(section)
    put_section(path or BENCHMARKS_MD, key, section, default=(
        "# Benchmarks\n\nEach section is written by the script named in it; ratios are "
        "measured side by side in one run. GPU figures: not measured unless a section "
        "says otherwise.\n"))


def put_section(path: Path, key: str, section: str, *, default: str = "") -> None:
    """Replace the text between ``<!-- begin: KEY -->`` and ``<!-- end: KEY -->`` of
    ``path`` with ``section`` (which carries the markers), or append it; atomic."""
    text = path.read_text() if path.exists() else default
    begin, end = f"<!-- begin: {key} -->", f"<!-- end: {key} -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
