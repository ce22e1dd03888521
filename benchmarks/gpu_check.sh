#!/usr/bin/env bash
# The prepared GPU check (issue 15): see benchmarks/gpu_check.py. Usage, on the device:
#   bash benchmarks/gpu_check.sh --data gpu_data/cifar10_jpeg.npz --out "$OUT"
#   bash benchmarks/gpu_check.sh --dry-run --data mutualnet/data/bundled/cifar10_subset.npz --out /tmp/g
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import mutualnet" 2>/dev/null || pip install --no-deps -q -e .
exec python benchmarks/gpu_check.py "$@"
