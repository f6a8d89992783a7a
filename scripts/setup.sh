#!/usr/bin/env bash
# Create .venv (if missing) and install pythia-suite with its pinned dependencies into it.
# PYTHON picks the interpreter (default python3, 3.11+). torch is pinned to 2.13.0: a looser
# spec would download a multi-GB CUDA build where the CPU wheel is not available locally.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.pythia-suite-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install --quiet --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
