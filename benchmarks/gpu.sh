#!/usr/bin/env bash
# The GPU check, one command: start-up decision on the real driver, SAM vit_b / vit_h encode,
# EfficientDet D0 / D4 / D7, peak memory; JSON and Markdown in benchmarks/results/, and the
# table between README.md's gpu-benchmark markers. About 7 minutes on one GPU
# (--budget-s 420 for the measurements; sections that would overrun are skipped and listed).
#
#   bash benchmarks/gpu.sh                 # on a machine with an NVIDIA GPU
#   bash benchmarks/gpu.sh --smoke         # every code path, CPU-sized (README left alone)
#   bash benchmarks/gpu.sh --help          # the options (benchmarks/gpu.py)
#
# Python: $PYTHON, else the checkout's .venv (make install), else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import torch, smvision.container.gpu, devtools" 2>/dev/null; then
    echo "benchmarks/gpu.sh: $PYTHON lacks torch, smvision or devtools: run make install (or set PYTHON)" >&2
    exit 2
fi
readme=(--readme README.md)
for arg in "$@"; do
    case "$arg" in
        --smoke|--readme|--readme=*|-h|--help) readme=() ;;
    esac
done
exec "$PYTHON" benchmarks/gpu.py "${readme[@]}" "$@"
