#!/usr/bin/env bash
# Set-up for a fresh clone: .venv with torch, the project (editable) and detectron2. Idempotent and quick
# when nothing changed. Used by `make demo` and `make test`; safe to run by hand.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin/python
stamp=".venv/.setup-$(cat pyproject.toml install.sh transfer/tooling/d2compat.py | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
echo "[setup] installing into .venv (first run takes a few minutes)"
if ! "$V" -c "import torch, torchvision" 2>/dev/null; then
  # The pinned pair; on a cluster with its own CUDA wheels install torch first and this step is skipped.
  "$V" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
"$V" -m pip install -q -e '.[dev]'
# detectron2: an official build if one is importable, else the pure-Python package from PyPI (see transfer/tooling/d2compat.py)
"$V" -m transfer.tooling.d2compat install
"$V" -m transfer.tooling.d2compat check
rm -f .venv/.setup-*
touch "$stamp"
echo "[setup] done"
