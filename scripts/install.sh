#!/usr/bin/env bash
# Install the project into the current Python. Brings torch's CPU build 2.13.0
# only when no torch is importable: an unpinned torch would pull a multi-GB CUDA
# build, and a user who already has torch keeps their own.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="lab"
[ "${1:-}" = "--dev" ] && extras="dev"
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[$extras]"
