#!/usr/bin/env bash
# Install histo into .venv (once) and run the main job end to end on the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/histo ]; then
    echo "== installing histo into .venv (first run only)"
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e .
fi
exec .venv/bin/histo demo "$@"
