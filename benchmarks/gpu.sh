#!/usr/bin/env bash
# The GPU check and timings of benchmarks/gpu.py (CUDA float64 updates equal the CPU's; per-batch
# wake and sleep times; a full MNIST epoch). Run from the repository root on a CUDA machine:
#   bash benchmarks/gpu.sh [--repeats 5] [--output gpu_results.md]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" benchmarks/gpu.py "$@"
