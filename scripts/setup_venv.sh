#!/usr/bin/env bash
# Python environment at .venv: torch first (the CPU build where there is no NVIDIA GPU, so nothing
# pulls a multi-GB CUDA build), then every pinned dependency from requirements.lock, then groundloop
# itself in editable mode. Idempotent: a stamp named after the lock's hash makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
ONNXRUNTIME_VERSION=1.32.0
VENV=.venv
hash=$(cat requirements.lock pyproject.toml scripts/setup_venv.sh | sha1sum | cut -c1-16)
STAMP="$VENV/.groundloop-installed-$hash"
[ -f "$STAMP" ] && exit 0

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade "pip==25.1"

if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
  echo "setup: NVIDIA GPU found: CUDA torch and onnxruntime-gpu"
  "${PIP[@]}" "torch==$TORCH_VERSION"
  "${PIP[@]}" "onnxruntime-gpu==$ONNXRUNTIME_VERSION"
else
  echo "setup: no GPU: CPU torch and onnxruntime"
  "${PIP[@]}" "torch==$TORCH_VERSION"
  "${PIP[@]}" "onnxruntime==$ONNXRUNTIME_VERSION"
fi
"${PIP[@]}" -r requirements.lock
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" - <<'PY'
import torch, zmq, open3d, mani_skill, numpy  # fail here, not in the middle of a test run
assert numpy.__version__.startswith("1."), "numpy 2 breaks mplib (ManiSkill motion planning)"
PY
rm -f "$VENV"/.groundloop-installed-*
touch "$STAMP"
echo "setup: environment ready in $VENV"
