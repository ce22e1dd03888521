"""The fault suite's shared checks: bad input and faults end in a clean, one-line error.

Every fault test runs the real ``mutualnet`` command in a subprocess (so a traceback
would be seen as it is printed to a user) and checks four things: the exit code (2 for
bad input, 1 for a failure), one non-empty line on stderr, no traceback, and that no
file that existed before the command was changed or removed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(args: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None,
            timeout: float = 300, env: dict[str, str] | None = None) -> CliResult:
    """``python -m mutualnet ARGS`` in a subprocess with this checkout first on the path."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "mutualnet", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout, env=full_env,
                       stdin=subprocess.DEVNULL)
    return CliResult(p.returncode, p.stdout, p.stderr)


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a file root is taken as itself)."""
    out: dict[str, str] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_clean_failure(result: CliResult, code: int, *, contains: str | None = None,
                         before: dict[str, str] | None = None,
                         roots: Sequence[Path] = ()) -> None:
    """Exit ``code``, one line on stderr (that says ``contains``), no traceback, and every
    file in ``before`` (a :func:`snapshot` of ``roots``) still there, byte for byte."""
    assert result.code == code, (result.code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    lines = [line for line in result.error_lines
             if not line.startswith(("note:", "warning:"))]
    assert len(lines) == 1, result.stderr[-2000:]
    if contains is not None:
        assert contains.lower() in lines[0].lower(), lines[0]
    if before is not None:
        after = snapshot(*roots)
        changed = [p for p, h in before.items() if after.get(p) != h]
        assert changed == [], f"changed or removed: {changed}"
