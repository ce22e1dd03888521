"""Kept for old commands: ``python benchmarks/reproduce_cifar.py ARGS`` is
``python -m benchmarks.reproduce ARGS`` (the study now lives in benchmarks/reproduce/)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.reproduce.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
