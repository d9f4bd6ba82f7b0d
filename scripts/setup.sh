#!/usr/bin/env bash
# Create .venv and install the studio's requirements (idempotent).
#   scripts/setup.sh          runtime packages
#   scripts/setup.sh --dev    plus what the tests need (pytest, playwright, Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# torch goes in first, pinned: a bare "torch" requirement would resolve to a
# multi-GB CUDA build. Override with TORCH_SPEC (e.g. a CUDA wheel) if you want.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install -q "$TORCH_SPEC"
fi
if [ "${1:-}" = "--dev" ]; then
  $PIP install -q -r requirements-dev.txt
  # Browser tests drive Debian's Chromium; never download a browser build.
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; browser tests will be skipped" >&2
    else
      echo "warning: chromium not found (install it: apt-get install chromium); browser tests will be skipped" >&2
    fi
  fi
else
  $PIP install -q -r requirements.txt
fi
