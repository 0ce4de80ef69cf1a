#!/usr/bin/env bash
# GPU check (issue 9): a short ViT-S/16 @ 224 px compile with K = 4 on CUDA, then `edvit-tool check` on the build.
# Run where a CUDA GPU and torch + timm are installed, from the repository root:
#     bash scripts/gpu-check.sh [--steps 60] [--train-steps 300]
# Figures go to stdout and $OUT/gpu-check.json (or runs/gpu-check/). CI never runs this (no GPU there).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
exec "$PY" scripts/gpu_check.py "$@"
