#!/usr/bin/env bash
# Set up (first time) and start the studio on its offline defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec .venv/bin/python app.py
