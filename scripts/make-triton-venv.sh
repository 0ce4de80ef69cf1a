#!/usr/bin/env bash
# Create the venv that runs a real Triton server for the Triton tests/bench (README "Triton"): the nvidia-pytriton
# wheel (tritonserver 2.51 + its Python backend) with its own requirements, plus the interpreters our
# Python-backend models call (onnxruntime, ai-edge-litert). Separate from .venv because the wheel's Python backend
# was built against numpy 1.x (tensors cross it corrupted under numpy 2, measured) and pins numpy<2, while the host
# venv needs numpy 2 (jax). The Python backend's stub embeds the system libpython3.11, so the venv is made from
# /usr/bin/python3.11 and the server is pointed at its site-packages. Idempotent (stamp file, like the board venv).
#
#   scripts/make-triton-venv.sh [VENV_DIR]     (default: <repo>/.venv-triton, or $EDVIT_TRITON_VENV)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${EDVIT_TRITON_VENV:-$repo/.venv-triton}}"
reqs=("nvidia-pytriton==0.7.0" "numpy==1.26.4" "onnxruntime==1.32.0" "ai-edge-litert==2.3.0")
stamp="$venv/.edvit-triton-venv"
want="${reqs[*]}"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "triton venv ok: $venv"
  exit 0
fi
base="${TRITON_BASE_PYTHON:-/usr/bin/python3.11}"
if ! "$base" -c "import ensurepip, venv" 2>/dev/null; then
  echo "make-triton-venv: $base with venv/ensurepip is needed (the Python backend embeds the system" \
       "libpython3.11); apt-get install -y python3.11-venv libpython3.11" >&2
  exit 2
fi
if [[ ! -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 && ! -e /lib/x86_64-linux-gnu/libpython3.11.so.1.0 ]]; then
  echo "make-triton-venv: libpython3.11.so.1.0 is missing (Triton's Python backend stub links it);" \
       "apt-get install -y libpython3.11" >&2
  exit 2
fi
echo "creating triton venv $venv from $base"
rm -rf "$venv"
"$base" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input "${reqs[@]}"
"$venv/bin/python" -c "import numpy, onnxruntime, ai_edge_litert.interpreter, pytriton" >/dev/null
echo "$want" > "$stamp"
echo "triton venv ready: $venv"
