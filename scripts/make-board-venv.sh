#!/usr/bin/env bash
# Create the slim "board" venv the loopback test boards run (DESIGN §8): numpy + ai-edge-litert + onnxruntime +
# pillow (image decoding for runtime/preprocess.py),
# NO torch, so a stray torch import in edvit_tool/runtime fails the tests. Idempotent: a stamp file records the
# requirement set; rerunning with the same set is a no-op (~50 ms).
#
#   scripts/make-board-venv.sh [VENV_DIR]      (default: <repo>/.venv-board, or $EDVIT_BOARD_VENV)
#   scripts/make-board-venv.sh --tflite-runtime [VENV_DIR]
#                                              the fallback interpreter's board: numpy<2 + tflite-runtime only
#                                              (default: <repo>/.venv-board-tflite, or $EDVIT_BOARD_TFLITE_VENV)
#   BOARD_BASE_PYTHON=/path/to/python3.11 scripts/make-board-venv.sh
#
# The board users (pi, pi1, ...) are not root, so the venv and the base interpreter must be world-readable.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "--tflite-runtime" ]]; then
  shift
  venv="${1:-${EDVIT_BOARD_TFLITE_VENV:-$repo/.venv-board-tflite}}"
  # tflite-runtime's last release (2.14.0, cp311 manylinux wheel) is built against numpy 1.x
  reqs=("numpy==1.26.4" "tflite-runtime==2.14.0" "pillow==13.0.0")
  imports="import numpy, tflite_runtime.interpreter, PIL"
else
  venv="${1:-${EDVIT_BOARD_VENV:-$repo/.venv-board}}"
  # Same versions as the host venv, so board figures and host parity use the same interpreters.
  reqs=("numpy==2.4.6" "ai-edge-litert==2.3.0" "onnxruntime==1.32.0" "pillow==13.0.0")
  imports="import numpy, ai_edge_litert, onnxruntime, PIL"
fi
stamp="$venv/.edvit-board-venv"
want="${reqs[*]}"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && "$venv/bin/python" -c "$imports" 2>/dev/null; then
  echo "board venv ok: $venv"
  exit 0
fi

# Prefer the distro interpreter: it lives under /usr, readable by every user (pyenv's lives under /root).
base="${BOARD_BASE_PYTHON:-}"
if [[ -z "$base" ]]; then
  for cand in /usr/bin/python3.11 "$(command -v python3.11 || true)"; do
    if [[ -n "$cand" && -x "$cand" ]] && "$cand" -c "import ensurepip, venv" 2>/dev/null; then base="$cand"; break; fi
  done
fi
if [[ -z "$base" ]]; then
  echo "make-board-venv: no python3.11 with venv/ensurepip found; apt-get install -y python3.11-venv" >&2
  exit 2
fi

echo "creating board venv $venv from $base"
rm -rf "$venv"
"$base" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input "${reqs[@]}"
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "make-board-venv: torch got into $venv (a dependency pulled it in); the board venv must not have it" >&2
  exit 1
fi

# World-readable venv, and every directory above it (and above the base interpreter's prefix) traversable.
chmod -R o+rX "$venv"
open_path() {
  local d="$1"
  while [[ "$d" != "/" && -n "$d" ]]; do
    [[ -d "$d" ]] && chmod o+x "$d"
    d="$(dirname "$d")"
  done
}
open_path "$venv"
base_prefix="$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')"
open_path "$base_prefix"
chmod -R o+rX "$base_prefix/lib" 2>/dev/null || true

echo "$want" > "$stamp"
chmod o+r "$stamp"
"$venv/bin/python" -c "$imports"
echo "board venv ready: $venv ($want)"
